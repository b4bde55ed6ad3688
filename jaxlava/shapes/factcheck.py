"""The fact-check exercise: the reading stage of the reward models' base (docs/decisions.md 54).

A facts reward model has to notice that a response names an object its facts do not back.  The 4 x 128 shapes
decoder does not bring that skill from pretraining, and preference pairs teach it slowly or not at all for
binding confusions (a "red square" beside a red circle and a blue square; decisions 52-53).  This exercise asks
for the check itself, densely: the image's facts in the reward model's own block, a description that may name
absent objects, then a verdict after each object it names ("red diamond yes; green diamond no.").

With `omissions` (world flag `factcheck-omissions`, opt-in; decisions 60) the answer goes on to list the objects
of the facts that the description leaves out ("left out: blue star." or "left out: no object."), so that the base
also learns to compare the facts' list with the description's: the reward model's price of completeness.

The picture shown with it is of another scene, so the answer comes from the facts and not from the image.  Absent
objects are drawn like the preference pairs' (partners first, then popular ones), each a binding confusion with
probability `BINDING_PROB` where the scene has one.
"""
from __future__ import annotations

import re

import numpy as np

from jaxlava.data.templates import factual_block
from jaxlava.shapes import text as T
from jaxlava.shapes.scene import Scene, WorldSpec

QUESTION = "Which objects of this description do the descriptions above back?"
OMISSIONS_QUESTION = ("Which objects of this description do the descriptions above back, and which objects of "
                      "theirs does it leave out?")
LEFT_OUT, NO_OBJECT = "left out: ", "no object"
BINDING_PROB = 0.6  # share of absent objects that are binding confusions, where the scene has one
HALLUCINATED = (0.2, 0.3, 0.3, 0.2)  # P(0, 1, 2, 3 absent objects in a description)
OMIT_PROB = 0.3  # P(a description leaves some present objects out)


def mention_order(text: str, categories) -> list[str]:
    """The `categories` that `text` names, in the order it first names them."""
    hits = ((m.start(), c) for c in categories for m in [re.search(r"\b%s\b" % re.escape(c), text)] if m)
    return [c for _, c in sorted(hits)]


def facts_block(scene: Scene, rng: np.random.Generator) -> str:
    """The scene's captions in random order, laid out as the reward model's facts block."""
    caps = T.captions(scene)
    return factual_block([caps[i] for i in rng.permutation(len(caps))], None)


def factcheck_qa(scene: Scene, spec: WorldSpec, rng: np.random.Generator, *, raster: bool = False,
                 located: bool = False, binding_prob: float = BINDING_PROB,
                 omissions: bool = False) -> tuple[str, str, list[str]]:
    """(question, answer, the categories the description names in order) for one description of `scene`; the
    question is the description and `QUESTION` (`OMISSIONS_QUESTION` with `omissions`, whose answer then also
    lists the scene's objects the description does not name, in the facts' order), to follow a `facts_block` of
    the scene.  `omissions` draws nothing more: both forms describe the same worlds."""
    n = len(scene.objects)
    h = int(rng.choice(len(HALLUCINATED), p=np.asarray(HALLUCINATED)))
    omit = int(rng.integers(1, n)) if n >= 2 and rng.random() < OMIT_PROB else 0
    fakes = T.pick_absent(scene, spec, rng, h, binding_prob) if h else []
    d = T.describe(scene, rng, hallucinate=fakes, omit=omit, exhaustive=omit == 0 and not fakes, raster=raster,
                   located=located)
    named = mention_order(d.text, spec.categories)
    answer = "; ".join(f"{c} {'yes' if c in scene.categories else 'no'}" for c in named) + "."
    if not omissions:
        return f"Description: {d.text}\n{QUESTION}", answer, named
    missing = [c for c in left_out_order(scene) if c not in named]
    answer += f" {LEFT_OUT}{', '.join(missing) or NO_OBJECT}."
    return f"Description: {d.text}\n{OMISSIONS_QUESTION}", answer, named


def left_out_order(scene: Scene) -> list[str]:
    """The scene's categories in the order its facts list them (`text.captions` keeps the objects' order), once
    each."""
    return list(dict.fromkeys(o.category for o in scene.objects))


def parse_omissions(text: str) -> set[str] | None:
    """The items an answer says the description left out (its "left out:" list up to the full stop; empty for
    "no object"); None when the answer has no "left out:" part."""
    at = text.find(LEFT_OUT)
    if at < 0:
        return None
    items = {x.strip() for x in text[at + len(LEFT_OUT):].split(".")[0].split(",")}
    return items - {"", NO_OBJECT}


def parse_verdicts(text: str) -> dict[str, str]:
    """{category: "yes" | "no"} from an answer of the exercise's form (the first verdict of each category)."""
    out: dict[str, str] = {}
    for cat, verdict in re.findall(r"(\w+ \w+) (yes|no)\b", text):
        out.setdefault(cat, verdict)
    return out
