r"""Generate the shapes world (jaxlava's embedded dataset): conversation / preference / ppo_prompt / probe datasets,
the world's tokenizer (DIR/tokenizer/) and DIR/world.json.

    python data/shapes.py --out DIR [--seed S] [--size small|default|large] [--image-size 64] [--noise-rate 0.2] ...
    python data/shapes.py --out runs/shapes_world_20k --n-pref 20000   # more preference pairs for long RM runs
    python data/shapes.py --out runs/twins --colours red blue green yellow --shapes circle square triangle \
        --max-objects 3 --pref-minimal-prob 1 --n-pref 6000           # a twin-pair world of docs/decisions.md 10
    python data/shapes.py --out runs/twins_shape --colours red blue green yellow --max-objects 3 \
        --pref-minimal-prob 1 --pref-twin-rename shape --n-pref 6000 \
        --sft-mix describe 0.25 yesno 0.15 count 0.1 attribute 0.05 mc 0.1 compare 0.35
        # the world on which the fact-augmented RM passes 0.9 (SFT 1500 steps first; tests/test_rm_quality.py)
"""
from __future__ import annotations

import dataclasses
import json
import time
from typing import Literal

import tyro

from jaxlava.shapes.world import preset, write_world


@dataclasses.dataclass
class Args:
    out: str  # output directory
    seed: int = 0
    size: Literal["small", "default", "large"] = "default"
    image_size: int | None = None  # image side in pixels (default 64)
    max_objects: int | None = None  # objects per image: 1..max_objects (default 5)
    colours: tuple[str, ...] | None = None  # colour names (default all 9); co-occurrence pairs outside are dropped
    shapes: tuple[str, ...] | None = None  # shape names (default all 6); likewise
    cooccur_prob: float | None = None  # P(both members of a designed pair | either) (default 0.8)
    noise_rate: float | None = None  # share of SFT descriptions with a hallucinated object (default 0.2)
    vocab_size: int | None = None  # tokenizer size (default 1500, at most)
    n_sft: int | None = None  # SFT conversations (default 4000; the size preset sets it otherwise)
    n_pref: int | None = None  # preference pairs (default 2000; 10% held out)
    # share of preference pairs that are counterfactual twins: the loser is the winner with one object renamed
    # to an absent one, every other word kept (default 0; docs/decisions.md 10)
    pref_minimal_prob: float | None = None
    # SFT question kinds and their shares, e.g. `--sft-mix describe 0.25 yesno 0.15 count 0.1 attribute 0.05 mc 0.1
    # compare 0.35` (compare: the text-only reading exercise, off by default; docs/decisions.md 10)
    sft_mix: dict[str, float] | None = None
    # what a twin renames: any absent category, or only the shape (resp. colour) to one the image lacks
    pref_twin_rename: Literal["category", "shape", "colour"] | None = None


def main(args: Args) -> dict:
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(Args)
                 if f.name not in ("out", "size") and getattr(args, f.name) is not None}
    if "sft_mix" in overrides:
        overrides["sft_mix"] = tuple(overrides["sft_mix"].items())
    t0 = time.perf_counter()
    info = write_world(args.out, preset(args.size, **overrides))
    s = info["stats"]
    print(f"shapes world written to {args.out} in {time.perf_counter() - t0:.1f} s {info['seconds']}")
    for kind, splits in s["counts"].items():
        print(f"  {kind:12s} " + ", ".join(f"{split}: {n}" for split, n in splits.items()))
    print(f"  objects/image (conversation): {s['object_count_histogram']['conversation']}")
    print(f"  co-occurrence {s['cooccurrence']['empirical']} (configured {s['cooccurrence']['configured']}), "
          f"SFT description noise {s['noise']['empirical']} (configured {s['noise']['configured']})")
    print(f"  tokenizer: {json.dumps(info['tokenizer'])}")
    return info


if __name__ == "__main__":
    main(tyro.cli(Args, description=__doc__))
