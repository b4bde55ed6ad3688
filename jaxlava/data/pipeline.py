"""Grain pipelines: seeded per-epoch shuffle, per-process sharding, image preparation, tokenising and
masking, padding to a small set of length buckets, batching.  Iterator state saves and restores exactly.

Batches follow docs/design.md ("Data contract").  Every random choice (caption order in the reward
prompt) comes from grain's per-record RNG, so a restored iterator repeats the same batches.
"""
from __future__ import annotations

import dataclasses
import random
from typing import Sequence

import grain
import numpy as np

from jaxlava.data.buckets import DEFAULT_BUCKETS, bucket_length
from jaxlava.data.templates import IGNORE_INDEX, encode_conversation, encode_prompt, encode_reward_input



def _pixels(processor, image: bytes) -> np.ndarray:
    if image:
        return processor.image_prep(image)
    c = processor.image_prep.crop
    return np.zeros((3, c, c), np.float32)


@dataclasses.dataclass(frozen=True)
class Padding:
    """How one kind of batch pads its token entries along their last axis: the side and each entry's fill value.
    `widen` pads a collated batch further, as collating it at that width would have; the processes of a
    multi-process job widen their rows to the width they agree on (`jaxlava.distributed.global_batch`)."""
    side: str  # "right" or "left"
    fill: tuple[tuple[str, int], ...]  # (entry, pad value)

    def width(self, batch: dict) -> int:
        return max(batch[k].shape[-1] for k, _ in self.fill if k in batch)

    def widen(self, batch: dict, width: int) -> dict:
        out = dict(batch)
        for key, value in self.fill:
            x = batch.get(key)
            if x is None or x.shape[-1] == width:
                continue
            extra = width - x.shape[-1]
            if extra < 0:
                raise ValueError(f"batch entry {key!r} is {x.shape[-1]} wide, more than the width {width} asked for")
            edge = (0, extra) if self.side == "right" else (extra, 0)
            out[key] = np.pad(x, [(0, 0)] * (x.ndim - 1) + [edge], constant_values=value)
        return out


def _pad(seqs: list[np.ndarray], T: int, pad_id: int, side: str) -> tuple[np.ndarray, np.ndarray]:
    ids = np.full((len(seqs), T), pad_id, np.int32)
    mask = np.zeros((len(seqs), T), np.int32)
    for i, s in enumerate(seqs):
        s = s[:T] if side == "right" else s[-T:]
        sl = slice(0, len(s)) if side == "right" else slice(T - len(s), T)
        ids[i, sl], mask[i, sl] = s, 1
    return ids, mask


class EncodeSFT:
    def __init__(self, processor, template: str):
        self.processor, self.template = processor, template

    def __call__(self, rec: dict) -> dict:
        p = self.processor
        enc = encode_conversation(p.tokenizer, rec["conversations"], template=self.template,
                                  image_token_id=p.image_token_id, num_image_tokens=p.num_image_tokens)
        return {"input_ids": enc["input_ids"], "labels": enc["labels"], "pixel_values": _pixels(p, rec["image"])}


class CollateSFT:
    def __init__(self, pad_id: int, buckets: Sequence[int]):
        self.pad_id, self.buckets = pad_id, tuple(buckets)

    def __call__(self, items: Sequence[dict]) -> dict:
        T = bucket_length(max(len(x["input_ids"]) for x in items), self.buckets)
        ids, mask = _pad([x["input_ids"] for x in items], T, self.pad_id, "right")
        labels, _ = _pad([x["labels"] for x in items], T, IGNORE_INDEX, "right")
        return {"input_ids": ids, "attention_mask": mask, "labels": labels,
                "pixel_values": np.stack([x["pixel_values"] for x in items])}


class EncodePreference:
    """Both candidates with the reward prompt; the facts are shuffled by the record's own RNG at each use."""

    def __init__(self, processor, with_facts: bool = True, facts_first: bool = False):
        self.processor, self.with_facts, self.facts_first = processor, with_facts, facts_first

    def __call__(self, rec: dict, rng: np.random.Generator) -> dict:
        p = self.processor
        r = random.Random(int(rng.integers(2 ** 31)))
        ids = [encode_reward_input(p.tokenizer, rec["conversations"], rec[k], rec["facts"], rng=r,
                                   image_token_id=p.image_token_id, num_image_tokens=p.num_image_tokens,
                                   with_facts=self.with_facts, facts_first=self.facts_first)
               for k in ("output_1", "output_2")]
        return {"candidates": ids, "pixel_values": _pixels(p, rec["image"]),
                "choice": np.int32(0 if rec["preference"] == 1 else 1)}


class OtherFacts:
    """A view of a preference source in which record i carries the facts of record (i + shift) mod n and keeps
    everything else.  A reward model that reads the facts loses accuracy on it; one that ignores them (it
    judges from the image or the wording) does not (`eval_accuracy_other_facts` in train/rm.py)."""

    def __init__(self, source, shift: int = 1):
        if len(source) < 2:
            raise ValueError(f"OtherFacts: {source!r} has {len(source)} record(s); swapping facts needs 2 or more")
        self.source, self.shift = source, shift

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> dict:
        n = len(self.source)
        return {**self.source[i], "facts": self.source[(i + self.shift) % n]["facts"]}

    def __repr__(self) -> str:
        return f"OtherFacts({self.source!r}, shift={self.shift})"


class CollatePreference:
    def __init__(self, pad_id: int, buckets: Sequence[int]):
        self.pad_id, self.buckets = pad_id, tuple(buckets)

    def __call__(self, items):
        T = bucket_length(max(len(c) for x in items for c in x["candidates"]), self.buckets)
        ids, mask = _pad([c for x in items for c in x["candidates"]], T, self.pad_id, "left")
        B = len(items)
        return {"input_ids": ids.reshape(B, 2, T), "attention_mask": mask.reshape(B, 2, T),
                "pixel_values": np.stack([x["pixel_values"] for x in items]),
                "choice": np.asarray([x["choice"] for x in items], np.int32)}


class EncodePrompt:
    """A prompt record -> query ids and metadata; with `reward_processor` (a reward model of another image size)
    also `reward_pixel_values`, the image as the reward and value models see it."""

    def __init__(self, processor, template: str, reward_processor=None):
        self.processor, self.template, self.reward_processor = processor, template, reward_processor

    def __call__(self, rec: dict) -> dict:
        p = self.processor
        turns = [t for t in rec["conversations"] if t["from"] == "human"][:1]
        ids = encode_prompt(p.tokenizer, turns, template=self.template, image_token_id=p.image_token_id,
                            num_image_tokens=p.num_image_tokens)
        out = {"input_ids": ids, "pixel_values": _pixels(p, rec["image"]),
               "caption_type": np.int32(rec.get("caption_type", 1)),
               "length_bonus": np.float32(rec.get("length_bonus", 1.0)), "facts": list(rec.get("facts", [])),
               "id": rec["id"], "conversations": rec["conversations"]}
        if self.reward_processor is not None:
            out["reward_pixel_values"] = _pixels(self.reward_processor, rec["image"])
        return out


class CollatePrompt:
    def __init__(self, pad_id: int, buckets: Sequence[int]):
        self.pad_id, self.buckets = pad_id, tuple(buckets)

    def __call__(self, items):
        T = bucket_length(max(len(x["input_ids"]) for x in items), self.buckets)
        ids, mask = _pad([x["input_ids"] for x in items], T, self.pad_id, "left")
        return {"input_ids": ids, "attention_mask": mask,
                "pixel_values": np.stack([x["pixel_values"] for x in items]),
                "caption_type": np.asarray([x["caption_type"] for x in items], np.int32),
                "length_bonus": np.asarray([x["length_bonus"] for x in items], np.float32),
                "facts": [x["facts"] for x in items], "id": [x["id"] for x in items],
                "conversations": [x["conversations"] for x in items]} | (
                    {"reward_pixel_values": np.stack([x["reward_pixel_values"] for x in items])}
                    if "reward_pixel_values" in items[0] else {})


def _shard(shard_index, shard_count):
    if shard_index is None or shard_count is None:
        import jax
        return jax.process_index(), jax.process_count()
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index {shard_index} is not in 0..{shard_count - 1}")
    return shard_index, shard_count


class FitsLength:
    """Drops examples whose sequences exceed `max_len` (left-padded prompts cannot be cut without losing the
    image placeholders or the end of the text the score is read at)."""

    def __init__(self, max_len: int):
        self.max_len = max_len

    def __call__(self, x: dict) -> bool:
        seqs = x["candidates"] if "candidates" in x else [x["input_ids"]]
        return all(len(s) <= self.max_len for s in seqs)


def mark_flags_parsed() -> None:
    """grain workers read absl flags: mark them parsed when the program did not parse them itself."""
    from absl import flags
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _pipeline(source, encode, collate, *, batch_size, seed, shuffle, num_epochs, shard_index, shard_count,
              num_workers, random_encode=False, max_len=None) -> grain.DatasetIterator:
    """source -> shard -> (shuffle) -> repeat -> encode -> (length filter) -> batch -> (workers) -> iterator.
    Each epoch is reshuffled with its own permutation; `num_epochs=None` repeats forever."""
    idx, count = _shard(shard_index, shard_count)
    ds = grain.MapDataset.source(source)
    if count > 1:
        ds = ds[idx::count]
    if len(ds) == 0:
        raise ValueError(f"shard {idx}/{count} of {source!r} holds no records")
    if shuffle:
        ds = ds.shuffle(seed=seed)
    ds = ds.repeat(num_epochs)
    ds = ds.random_map(encode, seed=seed) if random_encode else ds.map(encode)
    if max_len is not None:
        ds = ds.filter(FitsLength(max_len))
    it = ds.to_iter_dataset().batch(batch_size, drop_remainder=True, batch_fn=collate)
    if num_workers > 0:
        mark_flags_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return iter(it)


def _pad_id(processor) -> int:
    t = processor.tokenizer
    return int(t.pad_token_id if t.pad_token_id is not None else 0)


def sft_padding(processor) -> Padding:
    """How `sft_batches` pads (right: pad id, mask 0, labels ignored)."""
    return Padding("right", (("input_ids", _pad_id(processor)), ("attention_mask", 0), ("labels", IGNORE_INDEX)))


def preference_padding(processor) -> Padding:
    """How `preference_batches` pads (left: pad id, mask 0)."""
    return Padding("left", (("input_ids", _pad_id(processor)), ("attention_mask", 0)))


def ppo_prompt_padding(processor) -> Padding:
    """How `ppo_prompt_batches` pads (left: pad id, mask 0)."""
    return Padding("left", (("input_ids", _pad_id(processor)), ("attention_mask", 0)))


def sft_batches(source, processor, *, batch_size: int, template: str = "v1", buckets=DEFAULT_BUCKETS,
                seed: int = 0, shuffle: bool = True, num_epochs: int | None = None, shard_index=None,
                shard_count=None, num_workers: int = 0):
    """SFT batches (right padded; rows longer than the largest bucket are cut at its end, like LLaVA's limit)."""
    return _pipeline(source, EncodeSFT(processor, template), CollateSFT(_pad_id(processor), buckets),
                     batch_size=batch_size, seed=seed, shuffle=shuffle, num_epochs=num_epochs,
                     shard_index=shard_index, shard_count=shard_count, num_workers=num_workers)


def preference_batches(source, processor, *, batch_size: int, with_facts: bool = True, facts_first: bool = False,
                       buckets=DEFAULT_BUCKETS, seed: int = 0, shuffle: bool = True, num_epochs: int | None = None,
                       shard_index=None, shard_count=None, num_workers: int = 0):
    """Reward-model pairs (left padded to a bucket).  Convert with `--max-tokens` so that every pair fits the
    largest bucket (a filter here could spin forever on a dataset where nothing fits)."""
    return _pipeline(source, EncodePreference(processor, with_facts, facts_first),
                     CollatePreference(_pad_id(processor), buckets),
                     batch_size=batch_size, seed=seed, shuffle=shuffle, num_epochs=num_epochs,
                     shard_index=shard_index, shard_count=shard_count, num_workers=num_workers, random_encode=True)


def ppo_prompt_batches(source, processor, *, batch_size: int, template: str = "v1", buckets=DEFAULT_BUCKETS,
                       seed: int = 0, shuffle: bool = True, num_epochs: int | None = None, shard_index=None,
                       shard_count=None, num_workers: int = 0, max_prompt_len: int | None = None,
                       reward_processor=None):
    """PPO queries (left padded, ending at the assistant tag); queries longer than `max_prompt_len` (default: the
    largest bucket) are dropped together with their metadata (spec §4.2 keeps queries of <= 128 tokens).
    `buckets=(max_prompt_len,)` pads every query to that one width (the paper's fixed 128)."""
    return _pipeline(source, EncodePrompt(processor, template, reward_processor),
                     CollatePrompt(_pad_id(processor), buckets),
                     batch_size=batch_size, seed=seed, shuffle=shuffle, num_epochs=num_epochs,
                     shard_index=shard_index, shard_count=shard_count, num_workers=num_workers,
                     max_len=max_prompt_len or max(buckets))


def probe_batches(source, processor, *, batch_size: int, template: str = "llava_v1", buckets=DEFAULT_BUCKETS):
    """Evaluation probes in file order (no shuffle, one pass, last partial batch kept)."""
    enc = EncodePrompt(processor, template)
    collate = CollatePrompt(_pad_id(processor), buckets)
    recs = []
    for i in range(len(source)):
        r = source[i]
        turns = [{"from": "human", "value": "<image>\n" + r["question"] if r["image"] else r["question"]}]
        item = enc({"id": r["id"], "image": r["image"], "conversations": turns, "facts": r["facts"]})
        item["record"] = r
        recs.append(item)
        if len(recs) == batch_size:
            yield collate(recs) | {"records": [x["record"] for x in recs]}
            recs = []
    if recs:
        yield collate(recs) | {"records": [x["record"] for x in recs]}
