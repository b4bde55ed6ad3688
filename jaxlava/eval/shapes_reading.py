"""Does a shapes-world model read? The world's text-only reading exercise (`shapes.text.compare_qa`: a description
that may name absent objects or leave present ones out, two of the image's captions, then "which objects do the
captions not support, and which does the description leave out?"), asked on fresh scenes the world never showed,
and scored exactly.

The reward model of Fact-RLHF has to do this comparison to use the facts; a model that cannot do it in SFT
has to learn it from preference pairs alone.  Each unsupported object in a description is sorted by what a
reader needs to notice it (the captions list every object of the scene):

- `new colour`: its colour is not in the scene (one word of the captions settles it);
- `new shape`: its shape is not in the scene;
- `both new`: neither is;
- `binding`: its colour and its shape are both in the scene, on other objects; only pairing them tells.

Scores: the share of unsupported objects of each kind that the answer names as unsupported, the share of the
description's present objects it names wrongly (false alarms), the share of left-out objects it names, and the
share of whole answers equal to the world's own.

`--exercise factcheck` asks the fact-check exercise instead (`shapes.factcheck`, the reward models' reading stage:
the facts block, a description, a verdict after each object it names; the picture is of another scene), scored by
the share of right verdicts on each kind of named object: present ones ("yes") and each kind above ("no").
`--exercise checklist` asks the grounding stage's exercise (`shapes.text.checklist_qa`: "which of these objects are
in the image?", a verdict after each name, about the picture shown), scored the same way: it tells what a grounding
stage stuck on a plateau has not learnt (docs/decisions.md 24, 72).
"""
from __future__ import annotations

import dataclasses
import os
import re
import time
from typing import Literal

import numpy as np

from jaxlava.eval.runner import Defaults, EvalConfig, EvalError
from jaxlava.eval.shapes import CONFUSIONS, confusion_kind, default_out
from jaxlava.shapes import factcheck as F
from jaxlava.shapes import text as T
from jaxlava.shapes.scene import Scene
from jaxlava.shapes.world import ShapesConfig, _Builder, load_world_info

KINDS = CONFUSIONS
DEFAULTS = Defaults(temperature=0.0, max_new_tokens=64)
STREAM = 9001  # the scenes' random stream: none of the world's own (shapes.world._STREAMS)
_UNSUPPORTED = "The captions do not mention"
_LEFT_OUT = "It leaves out"


@dataclasses.dataclass(frozen=True)
class Exercise:
    id: str
    question: str  # the user text (no <image> line)
    image: bytes  # the scene's PNG (the SFT records of this exercise carry it too)
    answer: str  # the world's own answer
    scene: Scene
    unsupported: tuple[str, ...]  # categories the description names that the scene lacks
    left_out: tuple[str, ...]  # categories of the scene the description does not name


def fake_kind(category: str, scene: Scene) -> str:
    """Which of `KINDS` an absent `category` ("red square") is in `scene`."""
    return confusion_kind(category, scene.categories)


def world_config(data: str) -> ShapesConfig:
    if not os.path.isfile(os.path.join(data, "world.json")):
        raise EvalError(f"{data} is not a shapes world: no {os.path.join(data, 'world.json')}")
    return ShapesConfig.from_dict(load_world_info(data)["config"])


def exercises(cfg: ShapesConfig, n: int, seed: int = 0, binding_prob: float = 0.5) -> list[Exercise]:
    """`n` reading exercises on fresh scenes of the world `cfg` describes, made as its SFT records make them
    (hallucination and omission rates, reading order, located lists) from a stream of their own, except that
    each absent object is a binding confusion with probability `binding_prob` where the scene has one (so that
    every kind is measured, whatever the world's own share)."""
    builder = _Builder(cfg, None)
    rng = np.random.default_rng([cfg.seed, STREAM, seed])
    out = []
    for i in range(n):
        scene, png = builder.scene(rng)
        q, a = T.compare_qa(scene, builder.spec, rng, cfg.pref_hallucination_probs, cfg.pref_omit_prob,
                            raster=cfg.raster_order, located=cfg.located_lists, binding_prob=binding_prob)
        named = parse_answer(a, cfg)
        out.append(Exercise(f"reading/{i:05d}", q, png, a, scene, named[0], named[1]))
    return out


@dataclasses.dataclass(frozen=True)
class FactCheck:
    id: str
    question: str  # the facts block, the description and the question (no <image> line)
    image: bytes  # another scene's PNG
    answer: str
    scene: Scene  # the scene the facts describe
    named: tuple[str, ...]  # categories the description names, in order


def factchecks(cfg: ShapesConfig, n: int, seed: int = 0) -> list[FactCheck]:
    """`n` fact-check exercises on fresh scenes of the world `cfg` describes, made as its `n-factcheck` records
    make them (one turn each), from a stream of their own."""
    builder = _Builder(cfg, None)
    rng = np.random.default_rng([cfg.seed, STREAM, seed, 1])
    out = []
    for i in range(n):
        (scene, _), (_, png) = builder.scene(rng), builder.scene(rng)
        q, a, named = F.factcheck_qa(scene, builder.spec, rng, raster=cfg.raster_order, located=cfg.located_lists,
                                     omissions=cfg.factcheck_omissions)
        out.append(FactCheck(f"factcheck/{i:05d}", F.facts_block(scene, rng) + q, png, a, scene, tuple(named)))
    return out


def checklists(cfg: ShapesConfig, n: int, seed: int = 0) -> list[FactCheck]:
    """`n` checklist questions (the world's grounding exercise, `cfg.checklist_items` objects each) on fresh scenes,
    each shown with its own picture, from a stream of their own; absent objects are drawn at the rate at which
    those scenes hold each object, as the world draws them at its SFT scenes' rates."""
    builder = _Builder(cfg, None)
    rng = np.random.default_rng([cfg.seed, STREAM, seed, 2])
    scenes = [builder.scene(rng) for _ in range(n)]
    counts = T.Counts.from_scenes(builder.spec.categories, [s for s, _ in scenes])
    out = []
    for i, (scene, png) in enumerate(scenes):
        q, a = T.checklist_qa(scene, counts, rng, cfg.checklist_items)
        out.append(FactCheck(f"checklist/{i:05d}", q, png, a, scene, tuple(F.parse_verdicts(a))))
    return out


def score_factchecks(items: list[FactCheck], answers: dict[str, str]) -> dict:
    """The share of right verdicts on each kind of named object ("present", or the kind of an absent one; a
    verdict the answer does not give is wrong), over all, and of whole answers equal to the world's own; where
    the exercise lists omissions (world flag `factcheck-omissions`), also the share of answers whose left-out
    objects are exactly the scene's unnamed ones (`omissions_right`)."""
    tally = {k: [0, 0] for k in ("present", *KINDS)}
    omitted = [0, 0]
    for ex in items:
        got = F.parse_verdicts(answers[ex.id])
        truth = F.parse_omissions(ex.answer)
        if truth is not None:
            omitted[0] += F.parse_omissions(answers[ex.id]) == truth
            omitted[1] += 1
        for cat in ex.named:
            present = cat in ex.scene.categories
            t = tally["present" if present else fake_kind(cat, ex.scene)]
            t[0] += got.get(cat) == ("yes" if present else "no")
            t[1] += 1
    right, total = (sum(v[i] for v in tally.values()) for i in (0, 1))
    return {"n": len(items), "exact": sum(answers[ex.id].strip() == ex.answer for ex in items) / max(len(items), 1),
            "verdicts_right": {k: {"n": v[1], "right": _rate(*v)} for k, v in tally.items()},
            "verdicts_right_all": _rate(right, total), **({"omissions_right": _rate(*omitted)} if omitted[1] else {})}


def factcheck_table(res: dict, title: str = "fact-check exercise") -> str:
    from jaxlava.eval.runner import markdown_table, pct
    rows = [[f"{'present' if k == 'present' else 'absent: ' + k}", v["n"], pct(v["right"])]
            for k, v in res["verdicts_right"].items()]
    rows += [["all verdicts", sum(v["n"] for v in res["verdicts_right"].values()), pct(res["verdicts_right_all"])],
             *([["left-out objects exactly right", res["n"], pct(res["omissions_right"])]]
               if "omissions_right" in res else []),
             ["whole answer exact", res["n"], pct(res["exact"])]]
    return markdown_table([f"{title} (fresh scenes): objects named", "n", "% right"], rows)


def _categories(text: str, cfg: ShapesConfig) -> tuple[str, ...]:
    pattern = r"\b(%s) (%s)\b" % ("|".join(cfg.colours), "|".join(cfg.shapes))
    return tuple(f"{c} {s}" for c, s in re.findall(pattern, text))


def parse_answer(text: str, cfg: ShapesConfig) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(objects named as unsupported, objects named as left out) in an answer of the exercise's form; an answer
    of another form names none."""
    unsupported, left_out = (), ()
    for sentence in re.split(r"(?<=\.)\s+", text.strip()):
        if sentence.startswith(_UNSUPPORTED):
            unsupported += _categories(sentence, cfg)
        elif sentence.startswith(_LEFT_OUT):
            left_out += _categories(sentence, cfg)
    return unsupported, left_out


def _rate(k: int, n: int) -> float | None:
    return k / n if n else None


def score(items: list[Exercise], answers: dict[str, str], cfg: ShapesConfig) -> dict:
    """The reading scores (module docstring) of `answers` (id -> text) on `items`."""
    found = {k: [0, 0] for k in KINDS}
    alarms = present = caught = missed = exact = clean = clean_ok = 0
    for ex in items:
        text = answers[ex.id]
        exact += text.strip() == ex.answer
        unsupported, left_out = (set(x) for x in parse_answer(text, cfg))
        for cat in ex.unsupported:
            tally = found[fake_kind(cat, ex.scene)]
            tally[0] += cat in unsupported
            tally[1] += 1
        described = ex.scene.categories - set(ex.left_out)
        alarms, present = alarms + len(unsupported & described), present + len(described)
        caught, missed = caught + len(left_out & set(ex.left_out)), missed + len(ex.left_out)
        if not ex.unsupported:
            clean, clean_ok = clean + 1, clean_ok + (not unsupported)
    named = sum(v[0] for v in found.values())
    total = sum(v[1] for v in found.values())
    return {"n": len(items), "exact": exact / max(len(items), 1),
            "unsupported_found": {k: {"n": v[1], "found": _rate(*v)} for k, v in found.items()},
            "unsupported_found_all": _rate(named, total),
            "false_alarms": _rate(alarms, present), "left_out_found": _rate(caught, missed),
            "clean_judged_clean": _rate(clean_ok, clean)}


def table(res: dict) -> str:
    from jaxlava.eval.runner import markdown_table, pct
    rows = [[f"unsupported: {k}", v["n"], pct(v["found"])] for k, v in res["unsupported_found"].items()]
    rows += [["unsupported: all", sum(v["n"] for v in res["unsupported_found"].values()),
              pct(res["unsupported_found_all"])],
             ["present objects named unsupported (false alarms)", "", pct(res["false_alarms"])],
             ["left-out objects named", "", pct(res["left_out_found"])],
             ["clean descriptions judged clean", "", pct(res["clean_judged_clean"])],
             ["whole answer exact", res["n"], pct(res["exact"])]]
    return markdown_table(["reading exercise (fresh scenes)", "n", "%"], rows)


@dataclasses.dataclass(kw_only=True)
class ReadingConfig(EvalConfig):
    """The shapes world's reading exercise on fresh scenes, answered greedily and scored exactly: does the model
    notice a description's objects that the captions do not support, by kind (a new colour, a new shape, both,
    or only the binding of a colour to a shape), and the objects it leaves out? Answers go to OUT/answers.jsonl
    (a cut run resumes), the scores to OUT/results.json and OUT/table.md."""
    data: str = "runs/shapes_world"
    """the shapes world folder whose configuration makes the exercises"""
    out: str = ""
    """output folder (default: evals/NAME/reading, or evals/NAME/<exercise> for the others; NAME = the model
    folder's name, or its parent's for .../hf)"""
    n: int = 320
    """exercises (fresh scenes)"""
    exercise: Literal["compare", "factcheck", "checklist"] = "compare"
    """compare: the SFT mix's reading exercise; factcheck: the reward models' reading stage's (a verdict per
    object named; docs/decisions.md 54); checklist: the grounding stage's (a verdict per object asked about, on
    the picture shown; decisions 24)"""
    exercise_seed: int = 0
    """which fresh scenes (another seed, another sample)"""
    binding_prob: float = 0.5
    """share of the descriptions' absent objects that are binding confusions, where a scene has one"""
    batch_size: int = 16


_VERDICT_EXERCISES = {"factcheck": (factchecks, "fact-check exercise"),
                      "checklist": (checklists, "checklist (grounding) exercise")}


def run(cfg: ReadingConfig) -> dict | None:
    from jaxlava.eval.runner import Item, finish, generate_answers, resolve_model, stopped_early
    t0 = time.perf_counter()
    resolve_model(cfg.model, cfg.adapter)
    if cfg.n < 1 or not 0 <= cfg.binding_prob <= 1:
        raise EvalError(f"--n must be at least 1 and --binding-prob in [0, 1], got {cfg.n}, {cfg.binding_prob}")
    name = "reading" if cfg.exercise == "compare" else cfg.exercise
    cfg = dataclasses.replace(cfg, out=cfg.out or os.path.join(os.path.dirname(default_out(cfg.model)), name))
    world = world_config(cfg.data)
    verdicts = _VERDICT_EXERCISES.get(cfg.exercise)  # (maker, table title) of the exercises scored per verdict
    items = (verdicts[0](world, cfg.n, cfg.exercise_seed) if verdicts
             else exercises(world, cfg.n, cfg.exercise_seed, cfg.binding_prob))
    answers = generate_answers(cfg, [Item(ex.id, ex.question, ex.image) for ex in items], DEFAULTS)
    if stopped_early(cfg, answers, len(items)):
        return None
    scores = score_factchecks(items, answers.texts) if verdicts else score(items, answers.texts, world)
    results = dict(scores, benchmark="shapes_" + name, data=os.path.abspath(cfg.data),
                   generation=answers.stats(), seconds=round(time.perf_counter() - t0, 1))
    return finish(cfg.out, results, factcheck_table(results, verdicts[1]) if verdicts else table(results),
                  extra=lambda: print(f"\n{len(items)} exercises in {results['seconds']} s; results in {cfg.out}"))


def main(argv: list[str] | None = None, description: str | None = None) -> int:
    """The command line of eval/reading.py."""
    from jaxlava.eval.runner import cli_main
    return cli_main(ReadingConfig, run, argv, description=description)
