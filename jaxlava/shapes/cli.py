"""The command line of the shapes world (`data/shapes.py`): its flags (`WorldArgs`), the `ShapesConfig` they make
(`world_config`) and `main`.  `jaxlava.reproduce` takes the same flags for the world it builds."""
from __future__ import annotations

import dataclasses
import json
import time
from typing import Literal

import tyro

from jaxlava.shapes.world import ShapesConfig, preset, write_world


@dataclasses.dataclass
class WorldArgs:
    out: str  # output directory
    seed: int = 0
    size: Literal["small", "default", "large"] = "default"
    image_size: int | None = None  # image side in pixels (default 64)
    max_objects: int | None = None  # objects per image: 1..max_objects (default 5)
    # 0: objects placed freely, vision patch 8; N > 0: one object per N-pixel cell of a grid, and the shapes
    # model's vision patch is N, so each object is exactly one image token (docs/decisions.md 16)
    cell: int | None = None
    # radius of small objects as a fraction of the cell (grid) or image side (free); default 0.3 resp. 0.085.
    # Smaller objects are harder for the vision tower to tell apart by shape: a blind spot of the encoder
    small_radius: float | None = None
    sizes: tuple[Literal["small", "large"], ...] | None = None  # object sizes drawn (default both)
    cell_jitter: bool | None = None  # grid layout: objects move at random within their cells (default: centred)
    colours: tuple[str, ...] | None = None  # colour names (default all 9); co-occurrence pairs outside are dropped
    shapes: tuple[str, ...] | None = None  # shape names (default all 6); likewise
    cooccur_prob: float | None = None  # P(both members of a designed pair | either) (default 0.8)
    # the designed co-occurrence pairs, as colour-shape:colour-shape items (default: red-circle:blue-square
    # yellow-star:green-triangle purple-hexagon:orange-diamond pink-square:cyan-circle)
    cooccur_pairs: tuple[str, ...] | None = None
    noise_rate: float | None = None  # share of SFT descriptions with a hallucinated object (default 0.2)
    # which object that is: any absent one, anywhere in the list (default); or only the absent co-occurrence
    # partner of a present object, named last: a habit ("... a red circle and a blue square") that greedy
    # decoding keeps once the rate passes 0.5, in the images that have such a partner
    noise_kind: Literal["any", "partner"] | None = None
    # every description (SFT, preference pairs, PPO references, the reading exercise) lists its objects in reading
    # order, top row first and left to right, instead of a random order; the same random draws, so the same world
    # otherwise (default off; docs/decisions.md 33)
    raster_order: bool | None = None
    # each listed object carries its place: "a small red square at the top left, a small blue star at the bottom"
    # (default off; docs/decisions.md 34)
    located_lists: bool | None = None
    # how SFT and PPO yes/no questions pick absent objects: POPE's kinds (default; the category then hints at the
    # answer), or with the categories' frequencies, so that only the image answers
    yesno_negatives: Literal["kinds", "matched"] | None = None
    # yes/no answers (SFT, grounding, PPO references) name the object before the verdict, "red circle no." (alone
    # with the short-answer suffix, else before the usual sentence), so that the verdict sits next to the object as
    # in a checklist; POPE's parser reads them alike (default off: "No" / "No, there is no ..."; decisions 74)
    yesno_restate: bool | None = None
    vocab_size: int | None = None  # tokenizer size (default 1500, at most)
    # the tokenizer isolates punctuation, as LLaMA's does: "triangle," is two pieces, "triangle" and ","
    # (default off: BPE may learn "triangle," as one piece of its own; docs/decisions.md 51)
    tokenizer_split_punctuation: bool | None = None
    # every colour-shape category ("red circle") is one id of the tokenizer wherever it stands, so that a model
    # compares a response's objects with the facts id by id (default off: "red" and "circle"; decisions 53)
    tokenizer_object_tokens: bool | None = None
    # probe images of the judges (eval/shapes.py): POPE images per split (default 32; 6 questions each) and
    # MMHal-style questions (default 96); the judges describe every distinct probe image
    pope_images: int | None = None
    n_mmhal: int | None = None
    n_sft: int | None = None  # SFT conversations (default 4000; the size preset sets it otherwise)
    n_pref: int | None = None  # preference pairs (default 2000; 10% held out)
    # share of preference pairs that are counterfactual twins: the loser is the winner with one object renamed
    # to an absent one, every other word kept (default 0; docs/decisions.md 10)
    pref_minimal_prob: float | None = None
    # SFT question kinds and their shares, e.g. `--sft-mix describe 0.25 yesno 0.15 count 0.1 attribute 0.05 mc 0.1
    # compare 0.35` (compare: the text-only reading exercise, off by default; docs/decisions.md 10; checklist: a
    # yes/no verdict after each of several names, docs/decisions.md 24)
    sft_mix: dict[str, float] | None = None
    checklist_items: int | None = None  # objects per `checklist` question (default 6; docs/decisions.md 24)
    # grounding conversations (checklist questions on scenes of their own) in the conversation splits "ground" and
    # "ground_test", for the stage before SFT (`train/sft.py --split ground`; default 0: none)
    n_ground: int | None = None
    # share of the grounding conversations that ask about one object a turn ("Is there a red circle in the
    # image?", half of them with the short-answer suffix) instead of checklists, so that the stage also ties POPE's
    # single question to the image; negatives as --yesno-negatives (default 0: checklists only; decisions 74)
    ground_yesno_prob: float | None = None
    # fact-check conversations (the facts of one scene, descriptions of it that may name absent objects, a yes/no
    # verdict after each object named; the picture is of another scene) in the conversation splits "factcheck" and
    # "factcheck_test", for the reward models' reading stage (`train/reproduce.py --rm-read-steps`; default 0)
    n_factcheck: int | None = None
    # fact-check answers go on to list the facts' objects the description leaves out ("left out: blue star."), so
    # that the reading stage also teaches completeness (default off; docs/decisions.md 60)
    factcheck_omissions: bool | None = None
    # what a twin renames: any absent category, or only the shape (resp. colour) to one the image lacks
    pref_twin_rename: Literal["category", "shape", "colour"] | None = None
    # share of twins that leave one present object out instead of renaming one (the loser is the less complete
    # description, every other word kept), so that the reward model also sees completeness (default 0)
    pref_twin_omit_prob: float | None = None
    # share of the absent objects in preference responses and twins that pair a present colour with another
    # present object's shape ("a blue square" beside a red square and a blue circle), the kind of hallucination
    # the shapes SFT models make most (default 0; only the preference records change; docs/decisions.md 52)
    pref_binding_prob: float | None = None
    # share of twins that add one absent object instead (the loser names one object more, a hallucinated one), so
    # that a longer list is not better by itself: only the image or the facts decide (default 0; decisions 26)
    pref_twin_add_prob: float | None = None
    # omission and addition twins may also use the phrasings that count the list ("three shapes: ..."), the
    # twin's count then wrong by one (default off: plain lists only)
    pref_twin_counted: bool | None = None


def world_config(args: WorldArgs) -> ShapesConfig:
    """The generator config the flags ask for: the size preset with every flag given."""
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(WorldArgs)
                 if f.name not in ("out", "size") and getattr(args, f.name) is not None}
    if "sft_mix" in overrides:
        overrides["sft_mix"] = tuple(overrides["sft_mix"].items())
    if "cooccur_pairs" in overrides:
        overrides["cooccur_pairs"] = tuple(_pair(item) for item in overrides["cooccur_pairs"])
    return preset(args.size, **overrides)


def _pair(item: str) -> tuple[str, str]:
    """`red-circle:blue-square` -> ("red circle", "blue square")."""
    parts = item.split(":")
    if len(parts) != 2 or any(len(p.split("-")) != 2 for p in parts):
        raise SystemExit(f"--cooccur-pairs: expected colour-shape:colour-shape items such as red-circle:blue-square, "
                         f"got {item!r}")
    return tuple(p.replace("-", " ") for p in parts)


def parse_args(argv: list[str], description: str | None = None) -> WorldArgs:
    return tyro.cli(WorldArgs, args=argv, description=description)


def main(argv: list[str] | None = None, description: str | None = None) -> dict:
    """Generate the world the flags describe; print its statistics; return its world.json."""
    import sys
    args = parse_args(sys.argv[1:] if argv is None else argv, description)
    t0 = time.perf_counter()
    info = write_world(args.out, world_config(args))
    s = info["stats"]
    print(f"shapes world written to {args.out} in {time.perf_counter() - t0:.1f} s {info['seconds']}")
    for kind, splits in s["counts"].items():
        print(f"  {kind:12s} " + ", ".join(f"{split}: {n}" for split, n in splits.items()))
    print(f"  objects/image (conversation): {s['object_count_histogram']['conversation']}")
    print(f"  co-occurrence {s['cooccurrence']['empirical']} (configured {s['cooccurrence']['configured']}), "
          f"SFT description noise {s['noise']['empirical']} (configured {s['noise']['configured']})")
    print(f"  tokenizer: {json.dumps(info['tokenizer'])}")
    return info
