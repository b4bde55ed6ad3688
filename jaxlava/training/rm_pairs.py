"""On-policy preference pairs for the reward models: the starting policy's own descriptions, judged exactly.

LLaVA-RLHF's preference data compares two responses that the SFT model itself sampled for one image and prompt;
annotators chose the less hallucinated one, and the more helpful one only when both were equally truthful. A shapes
world's own preference split is written instead: pairs of edited reference descriptions, which are not the
mistakes the policy makes, and a reward model trained on them alone can rank the policy's samples poorly
(eval/rm_audit.py; docs/decisions.md 30).

This module makes the paper's kind of pairs in a shapes world. It samples `samples` descriptions of each describe
prompt of a ppo_prompt split from the policy PPO will start from (`rm_audit.sample_describe`), judges each exactly
against the image's objects, and within a prompt makes a pair of every two different responses the judges tell
apart, as the annotators' rule does:

- fewer absent objects wins;
- with as many absent objects, more present objects wins;
- `tradeoff="skip"` leaves out the pairs where the response with fewer absent objects also names fewer present
  ones (the annotators' rule makes it win);
- `repeats=True` (ours, off by default) also pairs responses that tie on both counts: the one that introduces
  fewer categories twice wins (kind "repeat"), the helpfulness the annotators judged after truthfulness. PPO on
  reward models that never saw such a pair bought descriptions that name an object twice (docs/decisions.md 45).
- `length_balance=True` (ours, off by default) drops pairs, chosen at random, until the longer response (in words)
  wins as many pairs as the shorter one. The rule's pairs favour the shorter response (an absent object or a
  repeat adds words; only recall pairs let the longer win), and reward models trained on them learned to charge
  for absence but not to pay for presence (docs/decisions.md 49).
- `recall_extra=K` (ours, 0 by default) writes each recall pair K more times, each copy with its own coin flip
  for which side the winner is on: reward models trained on the rule's pairs charged far more for an absent object
  than they paid for a present one, and PPO on them dropped the objects it was least sure of (decisions 65, 66).
- `edits=True` (ours, off by default) also writes edit twins of the samples, and with `edits_only=True` only them:
  each sample beside itself with one object taken out or put in, four kinds in equal numbers, so that only the
  image or its facts tell the winner (jaxlava/training/rm_edits.py).

The pairs are written as a preference/train split of `out` (the world's record schema; the image and facts are the
prompt's), which `train/rm.py --extra-data` reads after the world's own pairs.
"""
from __future__ import annotations

import dataclasses
import itertools
import os
import random

from jaxlava import sharding
from jaxlava.data.storage import open_source, write_records
from jaxlava.fileio import write_json
from jaxlava.training.rm_audit import SampleConfig, Sampler, pair_verdict, sample_describe, sample_record
from jaxlava.training.rm_edits import EDIT_KINDS, edit_pairs, world_vocab

TRADEOFFS = ("fewer_absent", "skip")


@dataclasses.dataclass
class PairsConfig(SampleConfig):
    """Preference pairs from the starting policy's own sampled descriptions, judged exactly."""
    split: str = "train"  # ppo_prompt split whose describe prompts are sampled
    prompts: int = 256
    tradeoff: str = "fewer_absent"
    """a pair where the response with fewer absent objects names fewer present ones: 'fewer_absent' (it wins, as
    the paper's annotators chose) or 'skip' (no pair)"""
    repeats: bool = False
    """also pair responses that tie on absent and present objects: fewer categories named twice wins (off: no
    pair, the annotators' rule)"""
    length_balance: bool = False
    """drop pairs at random until the longer response (in words) wins as many as the shorter one (off: every
    pair the rule decides)"""
    recall_extra: int = 0
    """write each recall pair (as many absent objects, more present ones wins) this many more times, each copy
    with its own order of the two responses (0: once, the rule's weight)"""
    edits: bool = False
    """also write edit twins of the samples: each beside itself with one object taken out or put in, four kinds
    in equal numbers (rm_edits.py; off: the rule's pairs only)"""
    edits_only: bool = False  # write the edit twins and none of the rule's pairs (needs --edits)
    out: str = "runs/onpolicy_pairs"  # writes OUT/preference/train and OUT/pairs.json (counts and every sample)


def judged_pairs(counts: list[tuple[int, int]], texts: list[str], tradeoff: str = "fewer_absent",
                 repeats: list[int] | None = None) -> list[tuple[int, int, str]]:
    """`counts`: per sample of one prompt, (absent objects named, present objects named) -> (winner, loser, kind)
    for each pair the rule decides; kind is "hallucination" or "recall", or "repeat" where `repeats` (per sample,
    the categories it names twice) decides a tie. Samples with the same text make no pair."""
    if tradeoff not in TRADEOFFS:
        raise ValueError(f"tradeoff must be one of {TRADEOFFS}; got {tradeoff!r}")
    out = []
    for a, b in itertools.combinations(range(len(counts)), 2):
        if texts[a] == texts[b]:
            continue
        verdict = pair_verdict(counts[a], counts[b])
        if verdict is None and repeats is not None and repeats[a] != repeats[b]:
            verdict = (repeats[a] < repeats[b], ("repeat",))
        if verdict is None or (tradeoff == "skip" and verdict[1] == ("hallucination",)):  # not dominant: skipped
            continue
        better_a, kinds = verdict
        out.append((a, b, kinds[0]) if better_a else (b, a, kinds[0]))
    return out


def pair_records(rows: list[dict], prompts: dict, seed: int, tradeoff: str = "fewer_absent",
                 repeats: bool = False) -> list[dict]:
    """Preference records of `rows` (as `sample_describe` returns them); `prompts`: id -> its ppo_prompt record.
    Which response is output_1 is a coin flip (seeded), so the position tells nothing."""
    return [rec for rec, _ in _kinded_records(rows, prompts, seed, tradeoff, repeats)]


def _kinded_records(rows, prompts, seed, tradeoff, repeats) -> list[tuple[dict, str]]:
    """`pair_records`' records, each with the kind of pair it is ("hallucination", "recall" or "repeat")."""
    rng, out = random.Random(seed), []
    for r in rows:
        p = prompts[r["id"]]
        counts = [(len(j.hallucinated), len(j.recalled)) for j in r["judged"]]
        reps = [len(j.repeated) for j in r["judged"]] if repeats else None
        human = [t for t in p["conversations"] if t["from"] == "human"][:1]
        for win, lose, kind in judged_pairs(counts, r["texts"], tradeoff, reps):
            first = rng.random() < 0.5
            o1, o2 = (r["texts"][win], r["texts"][lose]) if first else (r["texts"][lose], r["texts"][win])
            out.append(({"id": f"{r['id']}-s{win}-s{lose}", "image": p["image"], "source": "on-policy",
                         "conversations": human + [{"from": "gpt", "value": r["texts"][win]}],
                         "output_1": o1, "output_2": o2, "preference": 1 if first else 2,
                         "hallucination": kind == "hallucination", "facts": p["facts"]}, kind))
    return out


def _winner_loser(rec: dict) -> tuple[str, str]:
    """A preference record's (chosen, rejected) responses."""
    return (rec["output_1"], rec["output_2"]) if rec["preference"] == 1 else (rec["output_2"], rec["output_1"])


def _longer_wins(rec: dict) -> int:
    """+1 where a preference record's winner has more words than its loser, -1 where fewer, 0 where as many."""
    w, l = (len(t.split()) for t in _winner_loser(rec))
    return (w > l) - (w < l)


def length_balanced(kinded: list[tuple[dict, str]], seed: int) -> list[tuple[dict, str]]:
    """`kinded` less a random (seeded) subset of the pairs that the longer or the shorter response wins, whichever
    are more, so that both are as many; pairs of equal length all stay, and the order is kept."""
    sign = [_longer_wins(rec) for rec, _ in kinded]
    longer, shorter = ([i for i, v in enumerate(sign) if v == want] for want in (1, -1))
    more, fewer = (longer, shorter) if len(longer) > len(shorter) else (shorter, longer)
    drop = set(random.Random(seed).sample(more, len(more) - len(fewer)))
    return [x for i, x in enumerate(kinded) if i not in drop]


def recall_copied(kinded: list[tuple[dict, str]], extra: int, seed: int) -> list[tuple[dict, str]]:
    """`kinded` with each recall pair followed by `extra` copies of it (ids suffixed -c1, -c2 ...), each copy's
    side of the winner a fresh (seeded) coin flip; other pairs once, the order kept."""
    if extra < 0:
        raise ValueError(f"recall_extra must be at least 0; got {extra}")
    rng, out = random.Random(seed), []
    for rec, kind in kinded:
        out.append((rec, kind))
        if kind != "recall":
            continue
        win, lose = _winner_loser(rec)
        for c in range(1, extra + 1):
            first = rng.random() < 0.5
            out.append((dict(rec, id=f"{rec['id']}-c{c}", output_1=win if first else lose,
                             output_2=lose if first else win, preference=1 if first else 2), kind))
    return out


def make_pairs(cfg: PairsConfig) -> dict:
    """Sample, judge, pair and write; returns the counts (also in OUT/pairs.json)."""
    if cfg.tradeoff not in TRADEOFFS:
        raise ValueError(f"--tradeoff must be one of {TRADEOFFS}; got {cfg.tradeoff!r}")
    if cfg.recall_extra < 0:
        raise ValueError(f"--recall-extra must be at least 0; got {cfg.recall_extra}")
    if cfg.edits_only and not cfg.edits:
        raise ValueError("--edits-only writes the edit twins alone: it needs --edits")
    mesh = sharding.make_mesh(None)
    with sharding.use_mesh(mesh):
        rows = sample_describe(cfg, Sampler.load(cfg, mesh), mesh)
    source = open_source(cfg.data, "ppo_prompt", cfg.split)
    wanted = {r["id"] for r in rows}
    prompts = {rec["id"]: rec for rec in (source[i] for i in range(len(source))) if rec["id"] in wanted}
    kinded = _kinded_records(rows, prompts, cfg.seed, cfg.tradeoff, cfg.repeats) if not cfg.edits_only else []
    judged = len(kinded)
    if cfg.length_balance:
        kinded = length_balanced(kinded, cfg.seed + 1)
    edits, edit_counts = edit_pairs(rows, prompts, world_vocab(cfg.data), cfg.seed + 3) if cfg.edits \
        else ([], None)
    kinded += edits
    if not kinded:
        raise ValueError(f"{cfg.prompts} prompts x {cfg.samples} samples of {cfg.data} made no pair: every response "
                         "to a prompt was judged alike (more --samples or --prompts, or a higher --temperature)")
    kinds = {k: sum(kind == k for _, kind in kinded) for k in ("hallucination", "recall", "repeat", *EDIT_KINDS)}
    balanced = len(kinded)
    records = [rec for rec, _ in recall_copied(kinded, cfg.recall_extra, cfg.seed + 2)]
    write_records("preference", records, cfg.out, "train")
    summary = {"prompts": len(rows), "samples": cfg.samples, "pairs": balanced, **kinds,
               "dropped_to_balance_length": judged + len(edits) - balanced, "edits_made": edit_counts,
               "recall_copies_written": len(records) - balanced,
               "config": dataclasses.asdict(cfg),
               "responses": [sample_record(r) for r in rows]}
    write_json(os.path.join(cfg.out, "pairs.json"), summary, indent=1)
    return summary


def main(argv: list[str], description: str | None = None) -> dict:
    from jaxlava.training.cli import parse
    cfg = parse(PairsConfig, argv, description)
    s = make_pairs(cfg)
    print(f"{s['pairs']} pairs ({s['hallucination']} decided by absent objects, {s['recall']} by present ones, "
          f"{s['repeat']} by repeats; {len(EDIT_KINDS) * (s['edits_made'] or {}).get('kept', 0)} edit twins; "
          f"{s['dropped_to_balance_length']} dropped to balance length; "
          f"{s['recall_copies_written']} more copies of recall pairs) from "
          f"{s['prompts']} describe prompts x {s['samples']} samples: {cfg.out}/preference/train")
    return s
