"""The shapes world's tokenizer: LLaMA's layout of ids, whole words, exact round trips, AutoTokenizer's reading of
the saved files, the opt-in split of punctuation (as LLaMA's) and the opt-in object pieces."""
import itertools

import pytest

from jaxlava.data import templates
from jaxlava.shapes.tokenizer import (IMAGE_TOKEN, image_token_id, load_tokenizer, save_tokenizer, template_texts,
                                     train_tokenizer, world_texts)
from jaxlava.shapes.world import build_world, preset


@pytest.fixture(scope="module")
def world():
    return build_world(preset("small", seed=3, n_sft=600, noise_rate=0.3))


TEXT = "USER: <image>\nDescribe the image in detail. ASSISTANT: A small green triangle left of a blue star.</s>"


@pytest.mark.parametrize("split", [False, True])
def test_tokenizer(world, tmp_path, split):
    tok = train_tokenizer(itertools.chain(template_texts(world.records), world_texts(world.records)), vocab_size=900,
                          split_punctuation=split)
    save_tokenizer(tok, str(tmp_path / "tok"))
    tok = load_tokenizer(str(tmp_path / "tok"))
    assert 500 < len(tok) <= 900
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    img_id = image_token_id(tok)
    assert tok.convert_ids_to_tokens([tok.pad_token_id, img_id]) == ["<pad>", IMAGE_TOKEN]
    ids = tok("USER: <image>\nIs there a red circle? ASSISTANT: No.</s>").input_ids
    assert ids[0] == 1 and ids[-1] == 2 and ids.count(img_id) == 1 and ids.count(2) == 1
    assert tok.convert_ids_to_tokens(ids).count("<0x0A>") == 1  # newline is LLaMA's byte piece
    # load_tokenizer (PreTrainedTokenizerFast for this plain tokenizer.json) encodes and decodes as AutoTokenizer
    from transformers import AutoTokenizer, PreTrainedTokenizerFast
    auto = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    assert type(tok) is PreTrainedTokenizerFast and auto(TEXT).input_ids == tok(TEXT).input_ids
    assert auto.decode(ids) == tok.decode(ids) and auto.special_tokens_map == tok.special_tokens_map

    for text in list(world_texts(world.records))[:300] + ["héllo wörld 漢字 ✓"]:
        enc = tok(text, add_special_tokens=False).input_ids
        assert tok.unk_token_id not in enc
        assert tok.decode(enc) == text
    assert len(tok("There are three objects: a large red circle.", add_special_tokens=False).input_ids) <= 12
    system = templates.TEMPLATES["v1"].system  # the chat template's words are whole pieces
    assert len(tok(system, add_special_tokens=False).input_ids) <= len(system.split()) + 2 + 4 * split
    pieces = tok.convert_ids_to_tokens(tok("a red triangle, a blue star.", add_special_tokens=False).input_ids)
    if split:  # as LLaMA's: a word and its punctuation are never one piece
        assert pieces == ["▁a", "▁red", "▁triangle", ",", "▁a", "▁blue", "▁star", "."]
        mixed = [p for p in tok.get_vocab() if any(c.isalpha() for c in p) and any(c in ",.:;?!" for c in p)]
        assert mixed == []
    else:  # BPE merges them: "triangle," is a piece of its own
        assert pieces == ["▁a", "▁red", "▁triangle,", "▁a", "▁blue", "▁star."]


def test_object_tokens(world, tmp_path):
    """`objects`: each category one id wherever it stands as whole words, ids before <image> and <pad>, exact
    round trips, and the world flag that turns it on."""
    cats = world.spec.categories
    tok = train_tokenizer(itertools.chain(template_texts(world.records), world_texts(world.records)), vocab_size=900,
                          split_punctuation=True, objects=cats)
    save_tokenizer(tok, str(tmp_path / "tok"))
    tok = load_tokenizer(str(tmp_path / "tok"))
    assert len(tok) <= 900
    last = tok.convert_ids_to_tokens(list(range(len(tok) - len(cats) - 2, len(tok))))
    assert last == list(cats) + [IMAGE_TOKEN, "<pad>"]
    for c in cats:
        pieces = tok.convert_ids_to_tokens(tok(f"Only these: {c}, a {c}.", add_special_tokens=False).input_ids)
        assert pieces == ["▁Only", "▁these", ":", "▁", c, ",", "▁a", "▁", c, "."]
    shape = cats[0].split()[1]
    plural = tok.convert_ids_to_tokens(tok(f"two {cats[0]}s", add_special_tokens=False).input_ids)
    assert cats[0] not in plural and f"▁{shape}s" in plural  # only whole words: a plural stays two words
    from transformers import AutoTokenizer
    auto = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    n_obj = 0
    for text in list(world_texts(world.records))[:300]:
        enc = tok(text, add_special_tokens=False).input_ids
        assert tok.unk_token_id not in enc and tok.decode(enc) == text and auto(text).input_ids == tok(text).input_ids
        n_obj += sum(t in cats for t in tok.convert_ids_to_tokens(enc))
    assert n_obj > 100

    from jaxlava.shapes.cli import parse_args, world_config
    from jaxlava.shapes.world import write_world
    cfg = world_config(parse_args(["--out", "x", "--size", "small", "--n-sft", "40", "--n-pref", "20",
                                   "--tokenizer-object-tokens", "True"]))
    assert cfg.tokenizer_object_tokens and not preset("small").tokenizer_object_tokens
    write_world(str(tmp_path / "w"), cfg, progress=False)
    tok = load_tokenizer(str(tmp_path / "w" / "tokenizer"))
    assert all(len(tok(c, add_special_tokens=False).input_ids) == 1 for c in cats)
