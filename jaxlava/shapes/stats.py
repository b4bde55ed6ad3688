"""Statistics of a generated shapes world, written to world.json (and checked by the tests against the config)."""
from __future__ import annotations

import numpy as np

from jaxlava.shapes import text as T
from jaxlava.shapes.scene import Scene


def _rate(k: int, n: int) -> float | None:
    return round(k / n, 4) if n else None


def world_stats(cfg, counts: T.Counts, records, scenes: dict[str, Scene], meta: dict[str, dict],
                sft_scenes: list[Scene]) -> dict:
    """Statistics written to world.json (and checked by the tests against the configuration, `cfg`: a
    shapes.world.ShapesConfig)."""
    hist: dict[str, dict[int, int]] = {}
    for kind, splits in records.items():
        seen = {id(scenes[r["id"]]): len(scenes[r["id"]].objects) for recs in splits.values() for r in recs}
        hist[kind] = {int(k): int(v) for k, v in zip(*np.unique(list(seen.values()), return_counts=True))}
    both = either = 0
    for s in sft_scenes:
        cats = s.categories
        for a, b in cfg.cooccur_pairs:
            either += a in cats or b in cats
            both += a in cats and b in cats
    noisy = [(r["id"], flag) for recs in records["conversation"].values() for r in recs
             for flag in meta[r["id"]]["noisy_descriptions"]]
    pref = {}
    for split, recs in records["preference"].items():
        decided = [meta[r["id"]]["decided_by"] for r in recs]
        pref[split] = {"n": len(recs), "hallucination_rate": _rate(sum(r["hallucination"] for r in recs), len(recs)),
                       "preference_1_rate": _rate(sum(r["preference"] == 1 for r in recs), len(recs)),
                       "decided_by_hallucination": _rate(decided.count("hallucination"), len(recs))}
    ppo = [r["caption_type"] for recs in records["ppo_prompt"].values() for r in recs]
    probes: dict[str, dict] = {}
    for r in (r for recs in records["probe"].values() for r in recs):
        key = f"{r['benchmark']}/{r['split'] if r['benchmark'] == 'pope' else r['extra']['question_type']}"
        p = probes.setdefault(key, {"n": 0, "yes": 0})
        p["n"] += 1
        p["yes"] += r["answer"] == "yes"
    return {
        "counts": {kind: {split: len(recs) for split, recs in splits.items()} for kind, splits in records.items()},
        "object_count_histogram": hist,
        "cooccurrence": {"configured": cfg.cooccur_prob, "empirical": _rate(both, either), "scene_pairs": either},
        "noise": {"configured": cfg.noise_rate, "empirical": _rate(sum(f for _, f in noisy), len(noisy)),
                  "descriptions": len(noisy), "noisy_ids": sorted({i for i, f in noisy if f})},
        "preference": pref,
        "ppo_caption_types": {int(k): int(v) for k, v in zip(*np.unique(ppo, return_counts=True))},
        "probes": probes,
        "popular_categories": [[c, int(counts.freq[counts.categories.index(c)])] for c in counts.by_popularity()[:10]],
    }
