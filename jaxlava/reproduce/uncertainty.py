"""How much of a seed's acceptance numbers is the judge set's sampling noise: a paired bootstrap over images.

The three systems of a seed describe the same held-out images, so a difference between them is estimated on
paired data. Resampling the images with replacement (the same draw for every system) and recomputing each check's
number gives its sampling spread: a check whose interval straddles its threshold is not decided by this many
images, whatever its point value says. The checks themselves (`report.acceptance`) are unchanged; this only adds
an interval beside each per-seed number.
"""
from __future__ import annotations

import json
import os

import numpy as np

from jaxlava.eval.shapes import JUDGEMENTS

RESAMPLES = 2000
LEVEL = 0.95
COUNTS = ("mentioned", "hallucinated", "present", "recalled")  # the per-image counts CHAIR-i and recall are made of


def image_counts(path: str) -> dict[str, np.ndarray]:
    """A judge's judgements.jsonl -> {"ids": ids, count: per-image counts} in the file's order."""
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    if not rows:
        raise ValueError(f"{path}: no judged descriptions")
    out = {"ids": np.array([r["id"] for r in rows])}
    for k in COUNTS:
        out[k] = np.array([len(r[k]) for r in rows], dtype=np.float64)
    return out


def _runs(x) -> list[dict]:
    """A system's per-image counts: one dict, or a list of them (its repeated runs, whose rates are averaged)."""
    return [x] if isinstance(x, dict) else list(x)


def _align(systems: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """Put every run's rows in the first run's image order; the image sets must be the same."""
    first = next(iter(systems.values()))[0]["ids"]
    order = {i: n for n, i in enumerate(first)}
    out = {}
    for name, runs in systems.items():
        out[name] = []
        for c in runs:
            if set(c["ids"]) != set(first) or len(c["ids"]) != len(first):
                raise ValueError(f"the judges of {name} described other images than the others: no paired "
                                 "comparison")
            idx = np.argsort([order[i] for i in c["ids"]])
            out[name].append({k: v[idx] for k, v in c.items()})
    return out


def check_values(sft, nofacts, fact, weights: np.ndarray, checks) -> np.ndarray:
    """`checks` (`report.acceptance`: three systems' {"chair_i", "recall"} -> the checks) on the rates of each row
    of `weights` (resample x image: how often each image is drawn) -> (resamples, number of checks).  A system is
    a list of runs' counts (its rates: their mean, the same draw for every run)."""
    def rate(c, num, den):
        d = weights @ c[den]
        return np.divide(weights @ c[num], d, out=np.zeros_like(d), where=d > 0)

    def rates(runs):
        return (np.mean([rate(c, "hallucinated", "mentioned") for c in runs], axis=0),
                np.mean([rate(c, "recalled", "present") for c in runs], axis=0))
    systems = [rates(_runs(c)) for c in (sft, nofacts, fact)]
    return np.array([[c["value"] for c in checks(*({"chair_i": float(ci[i]), "recall": float(rc[i])}
                                                   for ci, rc in systems))]
                     for i in range(len(weights))])


def bootstrap_checks(sft, nofacts, fact, checks, resamples: int = RESAMPLES, level: float = LEVEL,
                     seed: int = 0) -> list[dict]:
    """Per check of `checks` (`report.acceptance`): {"value" (on every image once), "se", "low", "high"}
    (percentile interval at `level`).  Each system: its per-image counts, or a list of them (repeated runs)."""
    sys = _align({"SFT": _runs(sft), "RLHF (no facts)": _runs(nofacts), "Fact-RLHF": _runs(fact)})
    sft, nofacts, fact = sys["SFT"], sys["RLHF (no facts)"], sys["Fact-RLHF"]
    n = len(sft[0]["ids"])
    rng = np.random.default_rng(seed)
    weights = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(resamples)]).astype(float)
    point = check_values(sft, nofacts, fact, np.ones((1, n)), checks)[0]
    draws = check_values(sft, nofacts, fact, weights, checks)
    tail = (1 - level) / 2
    low, high = np.quantile(draws, [tail, 1 - tail], axis=0)
    return [{"value": float(v), "se": float(s), "low": float(lo), "high": float(hi)}
            for v, s, lo, hi in zip(point, draws.std(axis=0, ddof=1), low, high)]


def seed_intervals(judge_dirs: dict, checks) -> list[dict] | None:
    """`{"sft"|"rlhf_nofacts"|"fact_rlhf": judge folder, or a list of them (repeated runs)}` -> `bootstrap_checks`
    of `checks`, or None where a judge wrote no judgements (a run made before they were written)."""
    paths = {k: [os.path.join(d, JUDGEMENTS) for d in ([v] if isinstance(v, str) else v)]
             for k, v in judge_dirs.items()}
    if not all(os.path.exists(p) for ps in paths.values() for p in ps):
        return None
    c = {k: [image_counts(p) for p in ps] for k, ps in paths.items()}
    return bootstrap_checks(c["sft"], c["rlhf_nofacts"], c["fact_rlhf"], checks)
