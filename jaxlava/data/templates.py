"""Conversation templates (LLaVA `v1`, `llava_v1`, `v0_plain`), label masks and the reward-model prompt.

Rendering follows the LLaVA-RLHF code exactly (spec §2.1).  Masks are computed from character
spans with the tokenizer's offset mapping, so they are right for SentencePiece-style and
byte-level BPE tokenizers alike (no "-2 tokens" arithmetic).
"""
from __future__ import annotations

import dataclasses
import random
from typing import Sequence

import numpy as np

IMAGE = "<image>"
IGNORE_INDEX = -100
SHORT_ANSWER = "\nAnswer the question using a single word or phrase."  # VQA-style suffix (LLaVA eval / SFT+)


@dataclasses.dataclass(frozen=True)
class Template:
    name: str
    system: str
    roles: tuple[str, str]
    sep: str
    sep2: str
    plain: bool = False


TEMPLATES = {
    "v1": Template("v1", "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
                   "helpful, detailed, and polite answers to the user's questions.", ("USER", "ASSISTANT"), " ", "</s>"),
    "llava_v1": Template("llava_v1", "A chat between a curious human and an artificial intelligence assistant. The "
                         "assistant gives helpful, detailed, and polite answers to the human's questions.",
                         ("USER", "ASSISTANT"), " ", "</s>"),
    "v0_plain": Template("v0_plain", "", ("", ""), "\n", "\n", plain=True),
}


class TemplateError(ValueError):
    pass


def get_template(name: str) -> Template:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise TemplateError(f"unknown template {name!r}; known: {sorted(TEMPLATES)}") from None


def normalize_turns(turns: Sequence[dict]) -> list[dict]:
    """Validate human/gpt alternation (a leading gpt turn is dropped, as LLaVA does) and move `<image>` to the
    start of the first user turn."""
    turns = [dict(t) for t in turns]
    if turns and turns[0].get("from") == "gpt":
        turns = turns[1:]
    if not turns:
        raise TemplateError("empty conversation")
    for i, t in enumerate(turns):
        want = "human" if i % 2 == 0 else "gpt"
        if t.get("from") != want:
            raise TemplateError(f"turn {i} is from {t.get('from')!r}, expected {want!r} (turns must alternate "
                                "human, gpt, ... starting with human)")
        if not isinstance(t.get("value"), str):
            raise TemplateError(f"turn {i} has no text 'value'")
    if any(IMAGE in t["value"] for t in turns):
        for t in turns:
            t["value"] = t["value"].replace(IMAGE, "").strip() if IMAGE in t["value"] else t["value"]
        turns[0]["value"] = IMAGE + "\n" + turns[0]["value"]
    return turns


def render_segments(turns: Sequence[dict], template: str = "v1", add_generation_prompt: bool = False
                    ) -> list[tuple[str, bool]]:
    """Rendered text as (piece, is_target) segments; targets are assistant replies plus their closing sep2."""
    tpl = get_template(template)
    turns = normalize_turns(turns)
    if tpl.plain:
        if len(turns) != 2:
            raise TemplateError(f"v0_plain takes exactly one human and one gpt turn, got {len(turns)} turns")
        return [(turns[0]["value"], False), (turns[1]["value"] + tpl.sep, True)]
    segs: list[tuple[str, bool]] = [(tpl.system + tpl.sep, False)]
    for i, t in enumerate(turns):
        role = tpl.roles[i % 2]
        if i % 2 == 0:
            segs.append((f"{role}: {t['value']}{tpl.sep}", False))
        elif t["value"] == "":
            segs.append((f"{role}:", False))
        else:
            # the space after "ASSISTANT:" belongs to the reply's first token (SentencePiece "▁The", BPE "ĠThe")
            segs.append((f"{role}:", False))
            segs.append((" " + t["value"] + tpl.sep2, True))
    if add_generation_prompt and len(turns) % 2 == 1:
        segs.append((f"{tpl.roles[1]}:", False))
    return segs


def render(turns: Sequence[dict], template: str = "v1", add_generation_prompt: bool = False) -> str:
    return "".join(s for s, _ in render_segments(turns, template, add_generation_prompt))


def render_prompt(template: str, question: str, *, has_image: bool = False) -> str:
    """A one-question generation prompt (`<image>` first when there is an image), ending at the assistant tag."""
    value = f"{IMAGE}\n{question}" if has_image and IMAGE not in question else question
    return render([{"from": "human", "value": value}], template, add_generation_prompt=True)


def _target_spans(segs) -> list[tuple[int, int]]:
    spans, pos = [], 0
    for text, target in segs:
        if target:
            spans.append((pos, pos + len(text)))
        pos += len(text)
    return spans


def has_image_token(tokenizer) -> bool:
    tid = tokenizer.convert_tokens_to_ids(IMAGE)
    return tid is not None and tid != tokenizer.unk_token_id


def tokenize_with_spans(tokenizer, text: str, spans: list[tuple[int, int]], *, image_token_id: int,
                        num_image_tokens: int) -> tuple[list[int], list[bool]]:
    """Tokenize `text` with `<image>` expanded into `num_image_tokens` placeholder ids; a token is a target iff
    its character span overlaps one of `spans` (given in `text` coordinates).

    When the tokenizer knows `<image>` (llava-hf, the shapes world) the expanded string is tokenized in one
    call, exactly as transformers' LlavaProcessor does.  Otherwise (original LLaVA vocabularies) the text is
    split at `<image>` and the chunks are tokenized separately, as LLaVA's `tokenizer_image_token` does.
    """
    if has_image_token(tokenizer):
        grow = len(IMAGE) * (num_image_tokens - 1)
        marks = [i for i in range(len(text)) if text.startswith(IMAGE, i)]

        def shift(p):
            return p + grow * sum(1 for m in marks if m < p)

        spans = [(shift(a), shift(b)) for a, b in spans]
        enc = tokenizer(text.replace(IMAGE, IMAGE * num_image_tokens), return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        tgt = [_overlaps(a, b, spans) for a, b in enc["offset_mapping"]]
        return ids, tgt
    ids: list[int] = []
    tgt: list[bool] = []
    if tokenizer.bos_token_id is not None:
        ids.append(tokenizer.bos_token_id)
        tgt.append(False)
    offset = 0
    for k, chunk in enumerate(text.split(IMAGE)):
        if k > 0:
            ids += [image_token_id] * num_image_tokens
            tgt += [False] * num_image_tokens
            offset += len(IMAGE)
        if chunk:
            enc = tokenizer(chunk, add_special_tokens=False, return_offsets_mapping=True)
            ids += list(enc["input_ids"])
            tgt += [_overlaps(a + offset, b + offset, spans) for a, b in enc["offset_mapping"]]
        offset += len(chunk)
    return ids, tgt


def _overlaps(a: int, b: int, spans) -> bool:
    if b <= a:  # zero-width (BOS and other added specials at position 0)
        return False
    return any(a < e and s < b for s, e in spans)


def encode_conversation(tokenizer, turns, *, template="v1", image_token_id: int, num_image_tokens: int,
                        max_length: int | None = None) -> dict[str, np.ndarray]:
    """-> {"input_ids", "labels"} (labels = id on assistant tokens and their `</s>`, else -100)."""
    segs = render_segments(turns, template)
    text = "".join(s for s, _ in segs)
    ids, tgt = tokenize_with_spans(tokenizer, text, _target_spans(segs), image_token_id=image_token_id,
                                   num_image_tokens=num_image_tokens)
    if max_length is not None and len(ids) > max_length:
        raise TemplateError(f"conversation is {len(ids)} tokens long, over the limit of {max_length}")
    ids_a = np.asarray(ids, np.int32)
    labels = np.where(np.asarray(tgt), ids_a, IGNORE_INDEX).astype(np.int32)
    return {"input_ids": ids_a, "labels": labels}


def encode_prompt(tokenizer, turns, *, template="v1", image_token_id: int, num_image_tokens: int) -> np.ndarray:
    """Prompt ids for generation: the conversation so far plus the assistant role tag."""
    text = render(turns, template, add_generation_prompt=True)
    ids, _ = tokenize_with_spans(tokenizer, text, [], image_token_id=image_token_id, num_image_tokens=num_image_tokens)
    return np.asarray(ids, np.int32)


# ------------------------------------------------------------------------------------------------
# Reward-model prompt (LLaVA-RLHF §3.2 structure; the wording is jaxlava's own).
# ------------------------------------------------------------------------------------------------
REWARD_PROMPT = (
    "USER: Please rate how good your last response was. Weigh it on these aspects:\n\n"
    "1. Accurate: the response states only what the image really shows, with nothing that the image does not "
    "support or that goes against it. {factual_prompt}\n"
    "2. Helpful: the response meets what the user asked for while staying grounded in the image.\n"
    "3. Language Natural: the response reads fluently, with no repetition or clumsy wording.\n"
    "4. Concise: the response is short and clear, without needless detail.\n\n"
    "An ideal response is accurate, helpful, natural in its language, and concise. "
    "ASSISTANT: Judging by these aspects, the quality score of my last response is"
)
FACTS_HEADER = "In particular, every claim of the response must be backed by these descriptions of the image:\n"


def factual_block(facts: Sequence[str], rng: random.Random | None) -> str:
    facts = list(facts)
    if rng is not None:
        rng.shuffle(facts)
    return FACTS_HEADER + "".join(f"  - {f}\n" for f in facts)


def reward_text(turns: Sequence[dict], response: str, facts: Sequence[str] | None, *,
                rng: random.Random | None = None, with_facts: bool = True, facts_first: bool = False) -> str:
    """The reward model's input: the conversation with its last gpt turn replaced by `response` (v1 template),
    then the reward prompt with the image's facts (shuffled by `rng` at each use).  The score is read at the
    final token of the returned text.

    `facts_first` (not the paper's layout) moves the facts block to the start of the first user turn, before the
    response: causal attention then lets each object the response names be checked against the facts where it is
    named, as it is checked against the image, instead of in one step at the score token (docs/decisions.md 25)."""
    turns = [dict(t) for t in turns]
    if not turns or turns[-1].get("from") != "gpt":
        turns.append({"from": "gpt", "value": response})
    else:
        turns[-1]["value"] = response
    block = factual_block(facts or [], rng) if with_facts else ""
    if with_facts and facts_first:
        first = next((t for t in turns if t.get("from") == "human"), None)
        if first is None:
            raise TemplateError("reward_text: facts_first needs a user turn to carry the facts")
        first["value"] = block + first["value"]
    inline = with_facts and not facts_first
    prompt = REWARD_PROMPT.format(factual_prompt=block) if inline else REWARD_PROMPT.replace(" {factual_prompt}", "")
    return render(turns, "v1") + " " + prompt.strip()


def encode_reward_input(tokenizer, turns, response, facts, *, image_token_id: int, num_image_tokens: int,
                        rng=None, with_facts=True, facts_first=False) -> np.ndarray:
    text = reward_text(turns, response, facts, rng=rng, with_facts=with_facts, facts_first=facts_first)
    ids, _ = tokenize_with_spans(tokenizer, text, [], image_token_id=image_token_id, num_image_tokens=num_image_tokens)
    return np.asarray(ids, np.int32)
