"""Readers of the LLaVA-format releases (spec llava_rlhf.md §5) and the converter registry.

- `llava`: LLaVA-Instruct JSON list -> `conversation` records.
- `preference`: LLaVA-Human-Preference-10K + image_to_caption.json -> `preference` records.
- `ppo-prompts`: the LLaVA-RLHF PPO prompt file + image_to_caption.json -> `ppo_prompt` records.
The SFT+ readers (VQA-v2, A-OKVQA, Flickr30k Entities) are in `convert_sources_qa.py`.

A reader is `reader(inputs, opts, report) -> (kind, items)`: it loads (and checks) the input files eagerly,
so a malformed file fails before anything is converted, and yields `Item`s that build records lazily.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable

from jaxlava.data import convert_sources_qa
from jaxlava.data.convert_common import (Options, ConversionError, ImageStore, Item, LengthCheck, RecordError, Report,
                                         check_turns, load_json, record_id, require, run_conversion,
                                         with_image_token)

AOK_TYPES = (2, 3, 4, 5)  # caption_type A..D_IN_ABCD (spec §4.5): their facts are under "aok_<file name>"


# ------------------------------------------------------------------------------------------------ helpers
def load_facts(path: str | None) -> dict[str, list[str]] | None:
    """image_to_caption.json: {file name: [caption, ...]} (checked as a whole file)."""
    if path is None:
        return None
    caps = load_json(path, dict, what="image_to_caption file")
    for k, v in caps.items():
        if not isinstance(v, list) or not all(isinstance(c, str) for c in v):
            raise ConversionError(f"{path}: image_to_caption entry {k!r} should be a list of strings")
    return caps


def lookup_facts(facts: dict | None, key: str, report: Report, fallback=None) -> list[str]:
    """Captions of `key`; an empty list (and a warning count) when the image has none."""
    if facts is not None and key in facts:
        return list(facts[key])
    if isinstance(fallback, list) and fallback and all(isinstance(c, str) for c in fallback):
        return list(fallback)
    report.warn("records without facts (image not in the image_to_caption file)")
    return []


def caption_key(image: str, caption_type: int) -> str:
    """image_to_caption key of a PPO prompt (spec §4.4): "aok_" + file name for the A-OKVQA caption types."""
    base = os.path.basename(image)
    return "aok_" + base if caption_type in AOK_TYPES else base


def _image_field(raw: dict, images: ImageStore, required: bool) -> tuple[str, bytes]:
    if not required and raw.get("image") in (None, ""):
        return "", b""
    name = require(raw, "image", str)
    if not name.strip():
        raise RecordError("malformed record: field 'image' is an empty string")
    return name, images.read(name)


def _list_items(inputs: list[str], build: Callable[[dict, int], dict]) -> list[Item]:
    datas = [(path, load_json(path, list)) for path in inputs]  # every file is checked before any record
    return [Item(path, i, lambda raw=raw, i=i: build(raw, i)) for path, data in datas for i, raw in enumerate(data)]


# ------------------------------------------------------------------------------------------------ llava
def llava_record(raw, index: int, images: ImageStore, source: str = "llava") -> dict:
    """One LLaVA-Instruct item -> a `conversation` record (no "image" -> text-only, image b"")."""
    turns = check_turns(require(raw, "conversations", list))
    _, image = _image_field(raw, images, required=False)
    turns = with_image_token(turns, bool(image))
    return {"id": record_id(raw, index), "image": image, "conversations": turns, "source": source}


def read_llava(inputs, opts: Options, report: Report):
    images = ImageStore(opts.image_dir)
    return "conversation", _list_items(inputs, lambda raw, i: llava_record(raw, i, images, opts.source or "llava"))


# ------------------------------------------------------------------------------------------------ preference
def _output(raw: dict, key: str) -> str:
    v = require(raw, key, (dict, str))
    if isinstance(v, dict):
        v = v.get("value")
    if not isinstance(v, str) or not v.strip():
        raise RecordError(f"malformed record: {key!r} should be {{'value': non-empty string}}")
    return v


def preference_record(raw, index: int, images: ImageStore, facts, report: Report, source="preference") -> dict:
    """One LLaVA-Human-Preference-10K item -> a `preference` record (facts = the image's captions)."""
    turns = check_turns(require(raw, "conversations", list))  # the last (gpt) turn is the one the outputs replace
    pref = require(raw, "preference", int)
    if pref not in (1, 2):
        raise RecordError(f"malformed record: 'preference' should be 1 or 2, found {pref}")
    hall = raw.get("hallucination", False)
    if not isinstance(hall, bool):
        raise RecordError(f"malformed record: 'hallucination' should be true/false, found {hall!r}")
    out1, out2 = _output(raw, "output_1"), _output(raw, "output_2")
    name, image = _image_field(raw, images, required=True)
    turns = with_image_token(turns, True)
    return {"id": record_id(raw, index), "image": image, "conversations": turns, "source": source,
            "output_1": out1, "output_2": out2, "preference": pref, "hallucination": hall,
            "facts": lookup_facts(facts, os.path.basename(name), report)}


def read_preference(inputs, opts: Options, report: Report):
    images, facts = ImageStore(opts.image_dir), load_facts(opts.facts)
    src = opts.source or "preference"
    return "preference", _list_items(inputs, lambda raw, i: preference_record(raw, i, images, facts, report, src))


# ------------------------------------------------------------------------------------------------ PPO prompts
def ppo_prompt_record(raw, index: int, images: ImageStore, facts, report: Report, source="ppo") -> dict:
    """One PPO prompt item -> a `ppo_prompt` record (the human turn plus the optional gpt reference)."""
    turns = check_turns(require(raw, "conversations", list), end_with_gpt=False)[:2]
    ctype = raw.get("caption_type", 1)
    if isinstance(ctype, bool) or not isinstance(ctype, int) or not 1 <= ctype <= 7:
        raise RecordError(f"malformed record: 'caption_type' should be an integer 1..7, found {ctype!r}")
    bonus = raw.get("length_bonus", 1.0)
    if isinstance(bonus, bool) or not isinstance(bonus, (int, float)):
        raise RecordError(f"malformed record: 'length_bonus' should be a number, found {bonus!r}")
    name, image = _image_field(raw, images, required=True)
    turns = with_image_token(turns, True)
    return {"id": record_id(raw, index), "image": image, "conversations": turns, "source": source,
            "caption_type": ctype, "length_bonus": float(bonus),
            "facts": lookup_facts(facts, caption_key(name, ctype), report, fallback=raw.get("captions"))}


def read_ppo_prompts(inputs, opts: Options, report: Report):
    images, facts = ImageStore(opts.image_dir), load_facts(opts.facts)
    src = opts.source or "ppo"
    return "ppo_prompt", _list_items(inputs, lambda raw, i: ppo_prompt_record(raw, i, images, facts, report, src))


# ------------------------------------------------------------------------------------------------ registry
def _qa(name):
    def reader(inputs, opts, report):
        return getattr(convert_sources_qa, name)(inputs, opts, report)
    return reader


def _aokvqa_ppo(inputs, opts, report):
    return _qa("read_aokvqa")(inputs, dataclasses.replace(opts, variant="ppo"), report)


READERS: dict[str, Callable] = {
    "llava": read_llava,
    "vqav2": _qa("read_vqav2"),
    "aokvqa": _qa("read_aokvqa"),
    "aokvqa-ppo": _aokvqa_ppo,
    "flickr30k": _qa("read_flickr30k"),
    "preference": read_preference,
    "ppo-prompts": read_ppo_prompts,
}


def convert(fmt: str, inputs: list[str], out_dir: str, *, opts: Options | None = None, split: str = "train",
            strict: bool = False, length_check: LengthCheck | None = None, quiet: bool = False) -> dict:
    """Convert `inputs` of format `fmt` into OUT_DIR/<kind>/<split> plus OUT_DIR/report.json; returns the report."""
    if fmt not in READERS:
        raise ConversionError(f"unknown format {fmt!r}; formats: {sorted(READERS)}")
    if not inputs:
        raise ConversionError(f"{fmt}: no input files given")
    report = Report(strict)
    kind, items = READERS[fmt](list(inputs), opts or Options(), report)
    return run_conversion(kind, items, out_dir, split=split, strict=strict, length_check=length_check,
                          report=report, quiet=quiet)
