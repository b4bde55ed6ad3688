"""Shapes world, part 3: a small LLaMA-like tokenizer trained on the world's own text.

Layout (as LLaMA + llava-hf): 0 `<unk>`, 1 `<s>`, 2 `</s>`, 3..258 the byte-fallback pieces `<0x00>`..`<0xFF>`
(ordinary vocabulary entries, as in LLaMA, so `decode(skip_special_tokens=True)` keeps them), then the learned
BPE pieces, then `<image>` and `<pad>` as the last two ids. Metaspace pre-tokenizer ("▁", prepend first), BPE with
byte_fallback, a BOS-adding post-processor, and LLaMA's decoder. Special tokens typed in text (e.g. `</s>` after
an assistant turn) are matched as the special ids.

`split_punctuation=True` also isolates punctuation, as LLaMA's SentencePiece model does (it never merges letters
with punctuation): "triangle," is then "▁triangle" and ",", not one piece of its own. Off (the default), BPE learns
"▁triangle," and "▁triangle." as pieces unrelated to "▁triangle", so a model has to learn that they name one shape
(docs/decisions.md 51).

`objects` (e.g. "red circle", opt-in) are pieces of their own: wherever one stands as whole words it is one id, so
that a model compares an object of a response with the facts by one id, as it compares colours (decisions 53).
They take ids after the learned pieces and before `<image>` and `<pad>`; "red circles" is not one of them.
"""
from __future__ import annotations

import json
import os
from typing import Iterable

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

UNK, BOS, EOS, PAD, IMAGE_TOKEN = "<unk>", "<s>", "</s>", "<pad>", "<image>"
BYTE_TOKENS = [f"<0x{i:02X}>" for i in range(256)]

def train_tokenizer(texts: Iterable[str], vocab_size: int = 1500, split_punctuation: bool = False,
                    objects: Iterable[str] = ()):
    """Train on `texts` (include the chat templates' text: see `template_texts` below) and return a
    transformers `PreTrainedTokenizerFast` of at most `vocab_size` ids (fewer if the corpus has fewer pieces);
    `split_punctuation`: punctuation is always a piece of its own; `objects`: phrases that are one id each (see
    the module's docstring)."""
    from transformers import PreTrainedTokenizerFast

    objects = list(dict.fromkeys(objects))
    n_fixed = 3 + len(BYTE_TOKENS) + 2 + len(objects)
    if vocab_size < n_fixed + 64:
        raise ValueError(f"shapes tokenizer: vocab_size {vocab_size} is too small (needs > {n_fixed + 64})")
    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token=UNK))
    # "\n" is its own pre-token and is left out of the vocabulary, so it is always the byte piece <0x0A> (as LLaMA)
    steps = [pre_tokenizers.Split("\n", behavior="isolated"), pre_tokenizers.Metaspace("▁", prepend_scheme="first")]
    if split_punctuation:  # after Metaspace, so that "▁" stays on the word and the mark carries none
        steps.append(pre_tokenizers.Punctuation(behavior="isolated"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(steps)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 2 - len(objects),
                                  special_tokens=[UNK, BOS, EOS] + BYTE_TOKENS, show_progress=False)

    def corpus():
        for t in texts:
            # the special markers are not words: train on the text around them
            yield t.replace(IMAGE_TOKEN, " ").replace(EOS, " ")

    tok.train_from_iterator(corpus(), trainer)
    # byte tokens were passed to the trainer as specials only to pin their ids; make them ordinary vocabulary
    spec = json.loads(tok.to_str())
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["content"] in (UNK, BOS, EOS)]
    vocab = spec["model"]["vocab"]
    if "\n" in vocab:
        del vocab["\n"]
        spec["model"]["vocab"] = {t: i for i, t in enumerate(sorted(vocab, key=vocab.get))}
    tok = Tokenizer.from_str(json.dumps(spec))
    # whole words only: "red circles" stays "▁red" "▁circles"; the space before an object stays a "▁" piece of its
    # own, so that the object decodes as written
    tok.add_tokens([AddedToken(o, single_word=True, normalized=False) for o in objects])
    tok.add_special_tokens([AddedToken(IMAGE_TOKEN, special=True, normalized=False),
                            AddedToken(PAD, special=True, normalized=False)])
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS}:0 $A:0", pair=f"{BOS}:0 $A:0 {BOS}:1 $B:1",
                                                       special_tokens=[(BOS, 1)])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    for name, want in ((UNK, 0), (BOS, 1), (EOS, 2), (BYTE_TOKENS[0], 3), (BYTE_TOKENS[-1], 258)):
        if tok.token_to_id(name) != want:
            raise RuntimeError(f"shapes tokenizer: {name} got id {tok.token_to_id(name)}, expected {want}")
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, unk_token=UNK,
                                   pad_token=PAD, model_max_length=2048, padding_side="right",
                                   clean_up_tokenization_spaces=False)


def save_tokenizer(tokenizer, out_dir: str) -> str:
    os.makedirs(out_dir, exist_ok=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def load_tokenizer(path: str):
    from jaxlava.data.processor import load_tokenizer as load
    return load(path)


def image_token_id(tokenizer) -> int:
    i = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if i is None or i == tokenizer.unk_token_id:
        raise ValueError(f"shapes tokenizer: {IMAGE_TOKEN} is not in the tokenizer's vocabulary")
    return int(i)


def tokenizer_info(tokenizer) -> dict:
    return {"vocab_size": len(tokenizer), "image_token_index": image_token_id(tokenizer),
            "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
            "unk_token_id": tokenizer.unk_token_id, "pad_token_id": tokenizer.pad_token_id}


def world_texts(records: dict[str, dict[str, list[dict]]]):
    """Every string of the world (turns, responses, facts, questions, answers): the tokenizer's corpus."""
    for splits in records.values():
        for recs in splits.values():
            for r in recs:
                for t in r.get("conversations", ()):
                    yield t["value"]
                for key in ("output_1", "output_2", "question", "answer"):
                    if key in r:
                        yield r[key]
                yield from r.get("facts", ())


def template_texts(records: dict[str, dict[str, list[dict]]], copies: int = 200) -> list[str]:
    """The chat templates and the reward-model prompt (jaxlava.data.templates) rendered around one of the world's
    preference pairs, repeated so that the tokenizer learns their words as whole pieces: they are in every
    training sequence."""
    from jaxlava.data import templates

    r = records["preference"]["train"][0]
    texts = [templates.render(r["conversations"], name) for name in templates.TEMPLATES]
    texts += [templates.reward_text(r["conversations"], r["output_1"], r["facts"], with_facts=w) for w in (True, False)]
    return texts * copies
