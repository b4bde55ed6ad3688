"""Templates: golden renderings (spec llava_rlhf.md §2.1), label masks checked against segment-by-segment
tokenization for SentencePiece and byte-level BPE (hypothesis), and the reward-model prompt (golden copy)."""
import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxlava.data import templates as T
from tok_fixtures import load

V1_SYS = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
          "detailed, and polite answers to the user's questions.")
LLAVA_V1_SYS = ("A chat between a curious human and an artificial intelligence assistant. The assistant gives "
                "helpful, detailed, and polite answers to the human's questions.")
CONV = [{"from": "human", "value": "What is the dog doing?\n<image>"}, {"from": "gpt", "value": "The dog is running."},
        {"from": "human", "value": "What colour is it?"}, {"from": "gpt", "value": "It is brown."}]

GOLDEN_REWARD_PROMPT = (
    "USER: Please rate how good your last response was. Weigh it on these aspects:\n\n"
    "1. Accurate: the response states only what the image really shows, with nothing that the image does not "
    "support or that goes against it. {factual_prompt}\n"
    "2. Helpful: the response meets what the user asked for while staying grounded in the image.\n"
    "3. Language Natural: the response reads fluently, with no repetition or clumsy wording.\n"
    "4. Concise: the response is short and clear, without needless detail.\n\n"
    "An ideal response is accurate, helpful, natural in its language, and concise. "
    "ASSISTANT: Judging by these aspects, the quality score of my last response is")


def test_golden_renderings():
    assert T.render(CONV, "v1") == (
        V1_SYS + " USER: <image>\nWhat is the dog doing? ASSISTANT: The dog is running.</s>"
        "USER: What colour is it? ASSISTANT: It is brown.</s>")
    assert T.render(CONV, "llava_v1").startswith(LLAVA_V1_SYS + " USER: <image>\nWhat is the dog doing? ASSISTANT:")
    assert T.render(CONV[:1], "llava_v1", add_generation_prompt=True) == (
        LLAVA_V1_SYS + " USER: <image>\nWhat is the dog doing? ASSISTANT:")
    assert T.render_prompt("llava_v1", "Is there a cat?", has_image=True) == (
        LLAVA_V1_SYS + " USER: <image>\nIs there a cat? ASSISTANT:")
    assert T.render(CONV[:2], "v0_plain") == "<image>\nWhat is the dog doing?The dog is running.\n"
    # a leading gpt turn is dropped, as LLaVA does
    assert T.render([{"from": "gpt", "value": "hi"}] + CONV[:2], "v1") == T.render(CONV[:2], "v1")


@pytest.mark.parametrize("turns,match", [
    ([], "empty conversation"),
    ([{"from": "human", "value": "a"}, {"from": "human", "value": "b"}], "turn 1 is from 'human'"),
    ([{"from": "human", "value": "a"}, {"from": "gpt"}], "no text"),
])
def test_bad_turns(turns, match):
    with pytest.raises(T.TemplateError, match=match):
        T.render(turns, "v1")
    with pytest.raises(T.TemplateError, match="unknown template"):
        T.render(CONV, "v2")


def _runs(mask):
    runs, cur = [], []
    for i, m in enumerate(mask):
        if m:
            cur.append(i)
        elif cur:
            runs.append(cur)
            cur = []
    return runs + ([cur] if cur else [])


def _check_masks(tok, kind, turns, template="v1"):
    """Independent check: every assistant reply (+ its `</s>`) is exactly the target tokens, found by tokenizing
    the reply on its own; no other token is a target; `<image>` became N placeholders."""
    image_id = len(tok) if kind == "sp_noimage" else tok.convert_tokens_to_ids("<image>")
    enc = T.encode_conversation(tok, turns, template=template, image_token_id=image_id, num_image_tokens=5)
    ids, labels = enc["input_ids"].tolist(), enc["labels"].tolist()
    assert len(ids) == len(labels)
    mask = [lab != T.IGNORE_INDEX for lab in labels]
    assert all(lab == i for lab, i, m in zip(labels, ids, mask) if m)
    replies = [t["value"] for t in T.normalize_turns(turns) if t["from"] == "gpt"]
    runs = _runs(mask)
    assert len(runs) == len(replies)
    prefix = "" if kind.startswith("sp") else " "  # SentencePiece adds the "▁" itself; byte-level BPE needs the space
    end = [tok.eos_token_id] if template != "v0_plain" else tok("\n", add_special_tokens=False)["input_ids"]
    for run, reply in zip(runs, replies):
        if template == "v0_plain":
            continue
        got = [ids[i] for i in run]
        if reply[0].isspace():  # a reply's own leading blanks may merge with the "▁" before it: compare text
            assert "".join(tok.decode(got).split()) == "".join((reply + tok.eos_token).split())
            continue
        want = tok(prefix + reply, add_special_tokens=False)["input_ids"] + end
        assert [ids[i] for i in run] == want, (reply, tok.convert_ids_to_tokens([ids[i] for i in run]))
    assert ids.count(image_id) == (5 if any("<image>" in t["value"] for t in turns) else 0)
    assert not any(mask[i] for i, x in enumerate(ids) if x == image_id)
    if tok.bos_token_id is not None:
        assert ids[0] == tok.bos_token_id and not mask[0]
    return ids, mask


@pytest.mark.parametrize("kind", ["sp", "bpe", "sp_noimage"])
def test_masks_golden_example(kind):
    tok = load(kind)
    ids, mask = _check_masks(tok, kind, CONV)
    targets = tok.decode([i for i, m in zip(ids, mask) if m])
    assert targets.replace(" ", "") == "Thedogisrunning.</s>Itisbrown.</s>"
    ids, mask = _check_masks(tok, kind, CONV, "llava_v1")
    # v0_plain: target = the reply + "\n"; the instruction (with the image) is masked
    ids, mask = _check_masks(tok, kind, CONV[:2], "v0_plain")
    assert tok.decode([i for i, m in zip(ids, mask) if m]).strip() == "The dog is running."


ALPHABET = st.sampled_from(list("abcdefghijklmnopqrstuvwxyzABCXYZ0123456789 .,?!:;'-()\n\téü中"))
TEXT = st.text(ALPHABET, min_size=1, max_size=24).filter(lambda s: s.strip())


@st.composite
def conversations(draw):
    rounds = draw(st.integers(1, 3))
    turns = []
    for k in range(rounds):
        q = draw(TEXT)
        if k == 0 and draw(st.booleans()):
            q = draw(st.sampled_from(["<image>\n", "<image>", ""])) + q
        turns += [{"from": "human", "value": q}, {"from": "gpt", "value": draw(TEXT)}]
    return turns


@pytest.mark.parametrize("kind", ["sp", "bpe", "sp_noimage"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(turns=conversations(), template=st.sampled_from(["v1", "llava_v1"]))
def test_masks_property(kind, turns, template):
    """No system/user/image token is ever a target; every assistant token (and its `</s>`) is."""
    _check_masks(load(kind), kind, turns, template)


def test_max_length():
    tok = load("bpe")
    with pytest.raises(T.TemplateError, match="over the limit of 10"):
        T.encode_conversation(tok, CONV, image_token_id=3, num_image_tokens=4, max_length=10)


def test_reward_prompt_golden_and_facts():
    assert T.REWARD_PROMPT == GOLDEN_REWARD_PROMPT
    facts = ["A dog runs.", "The grass is green.", "A ball is in the air."]
    text = T.reward_text(CONV, "A brown dog.", facts, rng=None)
    assert text == (T.render(CONV[:3] + [{"from": "gpt", "value": "A brown dog."}], "v1") + " " +
                    GOLDEN_REWARD_PROMPT.format(factual_prompt=T.FACTS_HEADER + "  - A dog runs.\n"
                                                "  - The grass is green.\n  - A ball is in the air.\n"))
    assert "concise.\n" not in text and "in the air.\n\n2. Helpful" in text  # blank line before "2."
    assert text.endswith("the quality score of my last response is")
    nofacts = T.reward_text(CONV, "A brown dog.", facts, with_facts=False)
    assert "{factual_prompt}" not in nofacts and T.FACTS_HEADER not in nofacts
    assert "goes against it.\n2. Helpful" in nofacts
    # captions are shuffled by the given RNG at each use (and only the order changes)
    rng = random.Random(0)
    orders = {T.reward_text(CONV, "x", facts, rng=rng) for _ in range(20)}
    assert len(orders) > 1
    assert all(sorted(o.split("\n")) == sorted(text.replace("A brown dog.", "x").split("\n")) for o in orders)
    assert facts == ["A dog runs.", "The grass is green.", "A ball is in the air."]  # caller's list untouched


def test_reward_prompt_facts_first():
    facts = ["A dog runs.", "The grass is green."]
    paper = T.reward_text(CONV, "A brown dog.", facts, rng=None)
    first = T.reward_text(CONV, "A brown dog.", facts, rng=None, facts_first=True)
    block = T.FACTS_HEADER + "  - A dog runs.\n  - The grass is green.\n"
    # the block opens the first user turn (after the image, which the template moves to the front), ahead of
    # the question; the reward prompt has none
    assert "USER: <image>\n" + block + "What is the dog doing?" in first
    assert first.index(block) < first.index("A brown dog.")
    assert first.count(T.FACTS_HEADER) == 1
    assert first.endswith(T.reward_text(CONV, "A brown dog.", facts, with_facts=False).split("</s>")[-1])
    # the same words as the paper's layout, moved
    assert sorted(first.split()) == sorted(paper.split())
    # without facts the flag changes nothing
    assert T.reward_text(CONV, "x", facts, with_facts=False, facts_first=True) == \
        T.reward_text(CONV, "x", facts, with_facts=False)
    with pytest.raises(T.TemplateError, match="needs a user turn"):
        T.reward_text([], "x", facts, facts_first=True)


@pytest.mark.parametrize("kind", ["sp", "bpe"])
def test_reward_input_ids(kind):
    tok = load(kind)
    iid = tok.convert_tokens_to_ids("<image>")
    ids = T.encode_reward_input(tok, CONV, "A brown dog.", ["A dog runs."], image_token_id=iid, num_image_tokens=3)
    assert ids.dtype == np.int32 and (ids == iid).sum() == 3
    assert tok.decode(ids[-1:]).strip() == "is" or tok.decode(ids[-3:]).endswith("is")
    full = tok(T.reward_text(CONV, "A brown dog.", ["A dog runs."]).replace("<image>", "<image>" * 3))["input_ids"]
    assert ids.tolist() == full


def test_prompt_ids_end_at_assistant_tag():
    tok = load("sp")
    ids = T.encode_prompt(tok, CONV[:1], image_token_id=tok.convert_tokens_to_ids("<image>"), num_image_tokens=2)
    assert tok.decode(ids, skip_special_tokens=True).replace(" ", "").endswith("ASSISTANT:")
