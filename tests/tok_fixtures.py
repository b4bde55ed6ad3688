"""Tiny tokenizers trained offline for the data tests (no hub access).

- `llama_sp_dir()`: a LLaMA-style SentencePiece `tokenizer.model` (BPE, byte fallback, unk=0 bos=1 eos=2), loaded
  with `AutoTokenizer.from_pretrained(dir)` like LLaVA's Vicuna tokenizer; `<image>` added as a special token and
  pad = unk, as LLaVA does.
- `bpe_dir()`: a byte-level BPE `tokenizer.json` (GPT-2/LLaMA-3 style) with `<s>`, `</s>`, `<pad>`, `<image>`.
- `llama_sp_dir(image_token=False)`: the same SentencePiece vocabulary without `<image>` (original LLaVA layout).

Each folder is built once per process in a temporary directory and reused.
"""
from __future__ import annotations

import functools
import glob
import os
import tempfile

IMAGE = "<image>"
_ROOT = tempfile.mkdtemp(prefix="jaxlava_tok_")


def corpus_lines(max_chars: int = 400_000) -> list[str]:
    """Training text: the chat templates' words plus English prose from transformers' own source docstrings."""
    import transformers
    from jaxlava.data import templates
    lines = [t.system for t in templates.TEMPLATES.values() if t.system] * 20
    lines += [templates.REWARD_PROMPT, templates.FACTS_HEADER, templates.SHORT_ANSWER] * 20
    lines += ["USER: ASSISTANT: What is in the image? The image shows a dog on a red couch."] * 20
    base = os.path.dirname(transformers.__file__)
    total = sum(map(len, lines))
    for path in sorted(glob.glob(os.path.join(base, "models", "llava*", "*.py")) +
                       sorted(glob.glob(os.path.join(base, "models", "clip", "*.py")))):
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                line = line.strip()
                if line:
                    lines.append(line)
                    total += len(line)
        if total > max_chars:
            break
    return lines


@functools.lru_cache(maxsize=None)
def _sp_model_dir() -> str:
    import sentencepiece as spm
    out = os.path.join(_ROOT, "sp_model")
    os.makedirs(out, exist_ok=True)
    text = os.path.join(out, "corpus.txt")
    with open(text, "w", encoding="utf-8") as fh:
        fh.write("\n".join(corpus_lines()))
    spm.SentencePieceTrainer.train(
        input=text, model_prefix=os.path.join(out, "tokenizer"), vocab_size=1000, model_type="bpe",
        byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, character_coverage=1.0,
        split_digits=True, allow_whitespace_only_pieces=True, remove_extra_whitespaces=False,
        normalization_rule_name="identity", minloglevel=2, num_threads=1)
    os.remove(text)
    return out


@functools.lru_cache(maxsize=None)
def llama_sp_dir(image_token: bool = True) -> str:
    """Folder with a LLaMA-style SentencePiece tokenizer (tokenizer.model + the HF files)."""
    from transformers import AutoTokenizer
    out = os.path.join(_ROOT, f"llama_sp_{int(image_token)}")
    os.makedirs(out, exist_ok=True)
    src = _sp_model_dir()
    with open(os.path.join(src, "tokenizer.model"), "rb") as fh:
        data = fh.read()
    with open(os.path.join(out, "tokenizer.model"), "wb") as fh:
        fh.write(data)
    import json
    with open(os.path.join(out, "tokenizer_config.json"), "w") as fh:
        json.dump({"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
                   "unk_token": "<unk>", "add_bos_token": True, "add_eos_token": False, "legacy": False}, fh)
    tok = AutoTokenizer.from_pretrained(out)
    tok.pad_token = tok.unk_token
    if image_token:
        tok.add_special_tokens({"additional_special_tokens": [IMAGE]})
    tok.save_pretrained(out)
    return out


@functools.lru_cache(maxsize=None)
def bpe_dir() -> str:
    """Folder with a byte-level BPE tokenizer.json (bos `<s>`, eos `</s>`, pad `<pad>`, `<image>`)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast
    out = os.path.join(_ROOT, "bpe")
    specials = ["<pad>", "<s>", "</s>", IMAGE]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=800, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(corpus_lines(), trainer)
    bos = tk.token_to_id("<s>")
    tk.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                  additional_special_tokens=[IMAGE])
    tok.save_pretrained(out)
    return out


def load(kind: str):
    """`kind`: "sp" (LLaMA SentencePiece), "bpe" (byte-level BPE) or "sp_noimage" (no `<image>` in the vocab)."""
    from transformers import AutoTokenizer
    path = {"sp": lambda: llama_sp_dir(True), "bpe": bpe_dir, "sp_noimage": lambda: llama_sp_dir(False)}[kind]()
    return AutoTokenizer.from_pretrained(path)
