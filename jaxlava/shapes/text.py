"""Shapes world, part 2: the language side. Captions (facts), descriptions with controlled hallucinations, questions
with gold answers (yes/no, counting, attributes, multiple choice, MMHal-style probes) and the simulated annotator.
Pure functions of a `Scene`, a numpy Generator and the world's object statistics (`Counts`).
"""
from __future__ import annotations

import dataclasses
import re

import numpy as np

from jaxlava.shapes.scene import RADIUS, Obj, Scene, WorldSpec, binding_swaps

NUM = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
LETTERS = "ABCD"
SHORT_SUFFIX = "\nAnswer the question using a single word or phrase."
MC_SUFFIX = "\nAnswer with the option's letter from the given choices directly."
DESCRIBE_QUESTIONS = ("Describe the image.", "What do you see in this picture?", "Describe this image in detail.",
                      "What objects are in the image?", "Give a short description of the picture.",
                      "Tell me about the shapes in this image.")
NEGATIVE_KINDS = ("random", "popular", "adversarial")
# how SFT and PPO yes/no questions pick the absent object: a POPE kind at random (the question's category then
# hints at the answer: popular ones are mostly asked as negatives), or "matched": with the frequencies at which
# categories occur, so a category is as likely asked about absent as present and only the image answers
YESNO_NEGATIVES = ("kinds", "matched")
# an SFT description's hallucinated object: any absent one (the describer's plausible confusions first) anywhere in
# the list, or only the absent partner of a present object, named after every real one (a co-occurrence habit)
NOISE_KINDS = ("any", "partner")
TWIN_RENAMES = ("category", "shape", "colour")  # what a counterfactual twin changes (swap_object)


def an(phrase: str) -> str:
    return ("an " if phrase[:1] in "aeiou" else "a ") + phrase


def join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def num(n: int) -> str:
    return NUM[n] if n < len(NUM) else str(n)


def plural(word: str, n: int) -> str:
    return word if n == 1 else word + "s"


def be(n: int) -> str:
    return "is" if n == 1 else "are"


def where(region: str) -> str:
    if region == "centre":
        return "in the centre"
    return f"on the {region}" if region in ("left", "right") else f"at the {region}"


@dataclasses.dataclass(frozen=True)
class Counts:
    """Object statistics of the world (from the SFT training scenes), used like POPE uses COCO's annotations."""
    categories: tuple[str, ...]
    freq: np.ndarray  # [C] images containing each category
    cooc: np.ndarray  # [C, C] images containing both

    @classmethod
    def from_scenes(cls, categories: tuple[str, ...], scenes) -> "Counts":
        idx = {c: i for i, c in enumerate(categories)}
        m = np.zeros((len(scenes), len(categories)), np.int64)
        for r, s in enumerate(scenes):
            m[r, [idx[c] for c in s.categories]] = 1
        return cls(categories, m.sum(0), m.T @ m)

    def by_popularity(self) -> list[str]:
        return [self.categories[i] for i in np.argsort(-self.freq, kind="stable")]

    def by_cooccurrence(self, cat: str) -> list[str]:
        i = self.categories.index(cat)
        key = self.cooc[i].astype(np.float64) + self.freq / (self.freq.sum() + 1.0)  # ties -> more popular first
        key[i] = -1
        return [self.categories[j] for j in np.argsort(-key, kind="stable")]


# ----------------------------------------------------------------------------------------------- facts / captions
def captions(scene: Scene) -> list[str]:
    """Five phrasings of the complete ground truth (the "human captions" of this world)."""
    objs = scene.objects
    n = len(objs)
    sized = [an(o.name) for o in objs]
    return [
        f"There {be(n)} {n} {plural('object', n)}: {join(sized)}.",
        f"A picture with {join([an(o.category) for o in objs])}.",
        f"{num(n).capitalize()} {plural('shape', n)} on a {scene.background} background: "
        f"{join([an(o.shape) for o in objs])}.",
        join([f"the {o.category} is {o.size}" for o in objs]).capitalize() + ".",
        f"Only {'this object is' if n == 1 else 'these objects are'} visible: {', '.join(o.category for o in objs)}.",
    ]


_VISIBLE = ("Only this object is visible: ", "Only these objects are visible: ")


def caption_objects(facts: list[str]) -> list[str] | None:
    """The image's object categories, one per object, read back from its `captions` (the "Only ... visible:"
    one); None when no fact has that form (facts that are not this world's captions)."""
    for fact in facts or ():
        for head in _VISIBLE:
            if fact.startswith(head) and fact.endswith("."):
                return [c.strip() for c in fact[len(head):-1].split(",")]
    return None


# ----------------------------------------------------------------------------------------------- descriptions
@dataclasses.dataclass(frozen=True)
class Description:
    text: str
    hallucinated: tuple[str, ...]  # categories mentioned but absent from the image
    mentioned: tuple[str, ...]  # categories mentioned and present
    details: int  # correct location sentences about present objects

    @property
    def completeness(self) -> int:
        return len(self.mentioned) + self.details


def absent_partners(scene: Scene, spec: WorldSpec) -> list[str]:
    """The absent co-occurrence partners of the scene's objects (sorted by the present member; a category has at
    most one partner, so none repeats)."""
    present = scene.categories
    return [spec.partner[c] for c in sorted(present) if c in spec.partner and spec.partner[c] not in present]


def pick_absent(scene: Scene, spec: WorldSpec, rng: np.random.Generator, k: int,
                binding_prob: float = 0.0) -> list[str]:
    """k absent categories a describer would plausibly confuse: first the absent partners of present objects
    (the co-occurrence a model learns), then popularity-weighted absent ones.  `binding_prob`: each pick in turn
    is instead, with this probability, one of `binding_swaps` while any is left (0 draws nothing extra, so
    worlds without it are unchanged)."""
    present = scene.categories
    mates = absent_partners(scene, spec)
    out = [mates[i] for i in rng.permutation(len(mates))][:k]
    if len(out) < k:
        ok = np.array([c not in present and c not in out for c in spec.categories])
        p = spec.weights * ok
        picks = rng.choice(len(p), size=k - len(out), replace=False, p=p / p.sum())
        out += [spec.categories[i] for i in picks]
    if not binding_prob:
        return out
    swaps, mixed = binding_swaps(scene), []
    swaps = [swaps[i] for i in rng.permutation(len(swaps))]
    for use in rng.random(k) < binding_prob:
        first, second = (swaps, out) if use else (out, swaps)
        mixed.append(next(c for c in (*first, *second) if c not in mixed))
    return mixed


def fake_object(cat: str, scene: Scene, rng: np.random.Generator) -> Obj:
    colour, shape = cat.split(" ")
    size = scene.sizes[int(rng.integers(len(scene.sizes)))]
    x, y = rng.uniform(0, scene.image_size, size=2)
    return Obj(shape, colour, size, float(x), float(y), RADIUS[size] * scene.image_size)


def reading_order(items: list[Obj], scene: Scene) -> list[Obj]:
    """`items` in reading order: rows of a quarter of the image from the top, left to right within a row (on the
    grid layouts of 4 x 4 cells a row is a row of cells)."""
    return sorted(items, key=lambda o: (min(int(4 * o.y / scene.image_size), 3), o.x))


def describe(scene: Scene, rng: np.random.Generator, *, hallucinate: list[str] = (), omit: int = 0,
             detailed: bool = False, exhaustive: bool | None = None, fakes_last: bool = False,
             raster: bool = False, located: bool = False) -> Description:
    """A fluent description mentioning all present objects but `omit`, plus the absent categories `hallucinate`
    (given sizes and locations like real ones). Exhaustive phrasings ("There are three shapes: ...") count what
    they list, so a hallucinated description is self-consistent and only the image (or the facts) reveal it;
    they are allowed when `exhaustive` (default: nothing omitted).  The list is in random order, or with
    `fakes_last` the real objects in random order and the absent ones after them.  `raster`: in `reading_order`
    instead (the absent objects at their made-up places, or after the real ones with `fakes_last`); the random
    draws are the same either way, so both orders describe the same worlds.  `located`: each listed object
    carries its place ("a small red square at the top left"), again with the same draws."""
    keep = [scene.objects[i] for i in sorted(rng.permutation(len(scene.objects))[: len(scene.objects) - omit])]
    fakes = [fake_object(c, scene, rng) for c in hallucinate]
    if fakes_last:  # the permutation is drawn in either order, so that both orders make the same world
        shuffled = [keep[i] for i in rng.permutation(len(keep))]
        items = (reading_order(keep, scene) + reading_order(fakes, scene)) if raster else shuffled + fakes
    else:
        items = [(keep + fakes)[i] for i in rng.permutation(len(keep) + len(fakes))]
        items = reading_order(items, scene) if raster else items
    t = int(rng.integers(5 if ((omit == 0) if exhaustive is None else exhaustive) else 3))
    text = _phrase(items, scene, t, detailed, located)
    details = len(keep) if detailed else 0
    return Description(text, tuple(hallucinate), tuple(o.category for o in keep), details)


def _phrase(items: list[Obj], scene: Scene, template: int, detailed: bool, located: bool = False) -> str:
    """The description of `items` in phrasing `template` (0-2 plain lists, 3-4 exhaustive ones that count the
    list), with a location sentence per item when `detailed`, and each item's place in the list when `located`."""
    names = [an(o.name) + (" " + where(o.region(scene.image_size)) if located else "") for o in items]
    n, lst, bg = len(items), join(names), scene.background
    templates = [f"The image shows {lst} on a {bg} background.", f"In this picture I can see {lst}.",
                 f"This is a simple picture with {lst}. The background is {bg}.",
                 f"The image shows {num(n)} {plural('object', n)} on a {bg} background: {lst}.",
                 f"There {be(n)} {num(n)} {plural('shape', n)} in this picture: {lst}."]
    text = templates[template]
    if detailed:
        text += "".join(f" The {o.name} is {where(o.region(scene.image_size))}." for o in items)
    return text


def _shuffled_list(scene: Scene, rng: np.random.Generator, hallucinate,
                   raster: bool = False) -> tuple[list[Obj], list[Obj]]:
    """The scene's objects in random order, and a random-order list of them with the absent `hallucinate`
    (`raster`: the list in `reading_order`)."""
    real = [scene.objects[i] for i in rng.permutation(len(scene.objects))]
    items = real + [fake_object(c, scene, rng) for c in hallucinate]
    items = [items[i] for i in rng.permutation(len(items))]
    return real, reading_order(items, scene) if raster else items


def omission_twin(scene: Scene, rng: np.random.Generator, *, hallucinate: list[str] = (), detailed: bool = False,
                  counted: bool = False, raster: bool = False,
                  located: bool = False) -> tuple[Description, Description] | None:
    """A description naming every object of the scene (and the absent `hallucinate`), and its twin with one
    present object left out, every other word kept; the twin is the less complete one, so the simulated
    annotator prefers the first.  Only the plain phrasings are used, so that neither claims a count, unless
    `counted` (then also the phrasings that count the list: the twin's count is one less, and wrong).  None when
    the scene has a single object.  `raster` and `located` as in `describe`."""
    if len(scene.objects) < 2:
        return None
    real, items = _shuffled_list(scene, rng, hallucinate, raster)
    t, gone = int(rng.integers(5 if counted else 3)), real[int(rng.integers(len(real)))]
    rest = [o for o in items if o is not gone]
    kept = [o for o in real if o is not gone]
    full = Description(_phrase(items, scene, t, detailed, located), tuple(hallucinate),
                       tuple(o.category for o in real), len(real) if detailed else 0)
    twin = Description(_phrase(rest, scene, t, detailed, located), tuple(hallucinate), tuple(o.category for o in kept),
                       len(kept) if detailed else 0)
    return full, twin


def addition_twin(scene: Scene, rng: np.random.Generator, extra: str, *, hallucinate: list[str] = (),
                  detailed: bool = False, counted: bool = False,
                  raster: bool = False, located: bool = False) -> tuple[Description, Description]:
    """The mirror of `omission_twin`: a description naming every object of the scene (and the absent
    `hallucinate`), and its twin with the absent category `extra` added at a random place in the list, every
    other word kept.  The twin names one object more and is the one the annotator rejects (one hallucination
    more), so that across both kinds of twin the longer list wins half the time and only the image (or the
    facts) tell which half.  `counted` as in `omission_twin`; with `raster` the extra object takes its made-up
    place's position in the reading order."""
    real, items = _shuffled_list(scene, rng, hallucinate, raster)
    t, at = int(rng.integers(5 if counted else 3)), int(rng.integers(len(items) + 1))
    more = items[:at] + [fake_object(extra, scene, rng)] + items[at:]
    if raster:
        more = reading_order(more, scene)
    mentioned, details = tuple(o.category for o in real), len(real) if detailed else 0
    return (Description(_phrase(items, scene, t, detailed, located), tuple(hallucinate), mentioned, details),
            Description(_phrase(more, scene, t, detailed, located), (*hallucinate, extra), mentioned, details))


def swap_object(d: Description, scene: Scene, spec: WorldSpec, rng: np.random.Generator,
                rename: str = "category", binding_prob: float = 0.0) -> Description | None:
    """A counterfactual twin of `d`: one mentioned present object renamed to an absent category (same size,
    same place in every sentence), all other words unchanged; None when `d` mentions no present object or no
    absent category fits.  `rename`: "category" (any absent category, the describer's plausible confusions
    first), "shape" (same colour, a shape no object of the image has) or "colour" (same shape, a colour no
    object of the image has); `binding_prob` as in `pick_absent`, for "category"."""
    if not d.mentioned:
        return None
    old = d.mentioned[int(rng.integers(len(d.mentioned)))]
    taken = set(scene.categories) | set(d.hallucinated)
    if rename == "category":
        pool = pick_absent(scene, spec, rng, len(spec.categories) - len(scene.categories), binding_prob)
    elif rename in ("shape", "colour"):
        colour, shape = old.split(" ")
        if rename == "shape":
            used = {o.shape for o in scene.objects}
            pool = [f"{colour} {s}" for s in spec.shapes if s not in used]
        else:
            used = {o.colour for o in scene.objects}
            pool = [f"{c} {shape}" for c in spec.colours if c not in used]
        pool = [pool[i] for i in rng.permutation(len(pool))]
    else:
        raise ValueError(f"shapes world: unknown twin rename {rename!r}; expected one of {TWIN_RENAMES}")
    new = next((c for c in pool if c not in taken), None)
    if new is None:
        return None
    text = re.sub(rf"\b{old}\b", new, d.text)
    return Description(text, d.hallucinated + (new,), tuple(m for m in d.mentioned if m != old),
                       d.details - (1 if d.details else 0))


def annotator_prefers(d1: Description, d2: Description) -> int | None:
    """The simulated annotator: the less hallucinated response wins; only on a tie the more complete one; None if
    tied on both (the caller re-samples)."""
    if len(d1.hallucinated) != len(d2.hallucinated):
        return 1 if len(d1.hallucinated) < len(d2.hallucinated) else 2
    if d1.completeness != d2.completeness:
        return 1 if d1.completeness > d2.completeness else 2
    return None


def mentioned_categories(text: str, categories) -> set[str]:
    """Categories named in a text ("... large red circle ..."), for checking descriptions against the truth."""
    return {c for c in categories if re.search(rf"\b{c}\b", text)}


# ----------------------------------------------------------------------------------------------- questions
def negatives(scene: Scene, counts: Counts, rng: np.random.Generator, kind: str, positives: list[str],
              k: int) -> list[str]:
    """k absent categories, POPE-style: uniformly random, the most popular, or those co-occurring most with the
    positives (one per positive, round robin)."""
    present = scene.categories
    if kind == "random":
        pool = [c for c in counts.categories if c not in present]
        return [pool[i] for i in rng.choice(len(pool), size=k, replace=False)]
    if kind == "popular":
        return [c for c in counts.by_popularity() if c not in present][:k]
    if kind == "adversarial":
        out: list[str] = []
        ranked = [[c for c in counts.by_cooccurrence(p) if c not in present] for p in positives]
        while len(out) < k:
            for r in ranked:
                nxt = next(c for c in r if c not in out)
                if len(out) < k:
                    out.append(nxt)
        return out
    raise ValueError(f"shapes world: unknown negative kind {kind!r}; expected one of {NEGATIVE_KINDS}")


def existence_question(cat: str) -> str:
    return f"Is there {an(cat)} in the image?"


def matched_negative(scene: Scene, counts: Counts, rng: np.random.Generator) -> str:
    """An absent category drawn with the frequency at which categories are present (the positives' marginal)."""
    absent = np.array([c not in scene.categories for c in counts.categories], np.float64)
    w = counts.freq * absent
    if w.sum() == 0:  # no absent category ever occurred: any absent one
        w = absent
    return counts.categories[int(rng.choice(len(w), p=w / w.sum()))]


def existence_qa(scene: Scene, counts: Counts, rng: np.random.Generator, *, answer_yes: bool, short: bool,
                 negatives_from: str = "kinds", restate: bool = False) -> tuple[str, str, dict]:
    """`restate`: the object before its verdict ("red circle no.", then the long answer), as in a checklist."""
    if answer_yes:
        o = scene.objects[int(rng.integers(len(scene.objects)))]
        cat, kind, ans = o.category, None, "Yes" if short else f"Yes, there is {an(o.name)} in the image."
    else:
        if negatives_from == "matched":
            cat, kind = matched_negative(scene, counts, rng), "matched"
        else:
            kind, pos = NEGATIVE_KINDS[int(rng.integers(len(NEGATIVE_KINDS)))], [o.category for o in scene.objects]
            cands = negatives(scene, counts, rng, kind, pos, min(3, len(counts.categories) - len(pos)))
            cat = cands[int(rng.integers(len(cands)))]
        ans = "No" if short else f"No, there is no {cat} in the image."
    if restate:  # POPE's parser reads it as it reads the plain answer
        ans = f"{cat} {'yes' if answer_yes else 'no'}." + ("" if short else " " + ans)
    return existence_question(cat) + (SHORT_SUFFIX if short else ""), ans, {"object": cat, "negative_kind": kind}


def checklist_qa(scene: Scene, counts: Counts, rng: np.random.Generator, k: int) -> tuple[str, str]:
    """Which of k objects are in the image?  Each item is a present category with probability 1/2, else an absent
    one drawn like the matched yes/no negatives (no repeats).  The answer repeats each name and gives its verdict
    right after it ("red circle yes; blue square no."), so every decision sits next to the object it is about:
    the grounding exercise of docs/decisions.md 24."""
    present = [o.category for o in scene.objects]
    items: list[str] = []
    while len(items) < k:
        c = present[int(rng.integers(len(present)))] if rng.random() < 0.5 else matched_negative(scene, counts, rng)
        if c not in items:
            items.append(c)
    q = "Which of these objects are in the image? " + ", ".join(items) + "."
    return q, "; ".join(f"{c} {'yes' if c in present else 'no'}" for c in items) + "."


def counting_qa(scene: Scene, spec: WorldSpec, rng: np.random.Generator) -> tuple[str, str, str]:
    """(question, answer, kind) for counting all objects, objects of a shape (maybe absent) or of a colour."""
    kind = ("all", "shape", "colour")[int(rng.integers(3))]
    if kind == "all":
        n = len(scene.objects)
        return ("How many objects are there in the image?",
                f"There {be(n)} {num(n)} {plural('object', n)} in the image.", kind)
    attr = "shape" if kind == "shape" else "colour"
    values = sorted({getattr(o, attr) for o in scene.objects})
    if rng.random() < 0.25:  # ask about a value that is absent
        pool = [v for v in (spec.shapes if attr == "shape" else spec.colours) if v not in values]
        values = pool or values
    v = values[int(rng.integers(len(values)))]
    n = sum(getattr(o, attr) == v for o in scene.objects)
    noun = plural(v, n) if attr == "shape" else f"{v} {plural('object', n)}"
    q = f"How many {plural(v, 2)} are there?" if attr == "shape" else f"How many {v} objects are there?"
    return q, f"There {be(n)} {num(n)} {noun}." if n else f"There are no {noun}.", kind


def attribute_qa(scene: Scene, rng: np.random.Generator) -> tuple[str, str]:
    """A question about the colour or shape of an object identified by the other, or about an object's size."""
    objs = scene.objects
    shapes = [o for o in objs if sum(p.shape == o.shape for p in objs) == 1]
    colours = [o for o in objs if sum(p.colour == o.colour for p in objs) == 1]
    options = [("colour", o) for o in shapes] + [("shape", o) for o in colours] + [("size", o) for o in objs]
    what, o = options[int(rng.integers(len(options)))]
    if what == "colour":
        return f"What colour is the {o.shape}?", f"The {o.shape} is {o.colour}."
    if what == "shape":
        return f"What shape is the {o.colour} object?", f"The {o.colour} object is {an(o.shape)}."
    return f"Is the {o.category} large or small?", f"The {o.category} is {o.size}."


def multiple_choice(scene: Scene, spec: WorldSpec, counts: Counts,
                    rng: np.random.Generator) -> tuple[str, str, int, list[str]]:
    """(question with A-D options, answer "X. choice", gold index 0..3, facts: correct option + rationale)."""
    uniq = [o for o in scene.objects if sum(p.shape == o.shape for p in scene.objects) == 1]
    if uniq and rng.random() < 0.4:
        o = uniq[int(rng.integers(len(uniq)))]
        wrong = [c for c in spec.colours if c != o.colour]
        options = [o.colour] + [wrong[i] for i in rng.choice(len(wrong), size=3, replace=False)]
        stem, why = f"What colour is the {o.shape}?", f"The {o.shape} in the image is {o.colour}."
    else:
        o = scene.objects[int(rng.integers(len(scene.objects)))]
        positives = [p.category for p in scene.objects]
        pool = []
        for kind in ("adversarial", "popular", "random"):
            pool += [c for c in negatives(scene, counts, rng, kind, positives, 3) if c not in pool]
        distract = [pool[i] for i in sorted(rng.choice(len(pool), size=3, replace=False))]
        options = [an(o.category)] + [an(c) for c in distract]
        stem = "Which of these objects is in the image?"
        why = f"The image contains {an(o.name)}, and there is no {join(distract).replace(' and ', ' or ')}."
    order = rng.permutation(4)
    options = [options[i] for i in order]
    gold = int(np.where(order == 0)[0][0])
    q = stem + "".join(f"\n{LETTERS[i]}. {opt}" for i, opt in enumerate(options)) + MC_SUFFIX
    ans = f"{LETTERS[gold]}. {options[gold]}"
    return q, ans, gold, [f"The correct option is {ans}.", why]


# ----------------------------------------------------------------------------------------------- MMHal-style probes
MMHAL_TYPES = ("attribute", "adversarial", "comparison", "counting", "relation", "environment", "holistic", "other")


def mmhal_qa(scene: Scene, spec: WorldSpec, rng: np.random.Generator, qtype: str) -> tuple[str, str, dict]:
    """(question, gold answer, extra) for one MMHal-like question type; extra names the asked-about objects."""
    objs = scene.objects
    if qtype == "attribute":
        q, a = attribute_qa(scene, rng)
        return q, a, {}
    if qtype == "adversarial":
        cat = pick_absent(scene, spec, rng, 1)[0]
        return (f"Is the {cat} in the image large or small?", f"There is no {cat} in the image.",
                {"absent_object": cat})
    if qtype == "comparison" and len(objs) >= 2:
        a, b = (objs[i] for i in rng.choice(len(objs), size=2, replace=False))
        q = f"Which is bigger, the {a.category} or the {b.category}?"
        if a.size == b.size:
            return q, f"They are the same size: both are {a.size}.", {}
        big = a if a.size == "large" else b
        return q, f"The {big.category} is bigger.", {}
    if qtype == "relation" and len(objs) >= 2:
        a, b = (objs[i] for i in rng.choice(len(objs), size=2, replace=False))
        side = "left" if a.x < b.x else "right"
        return (f"Is the {a.category} to the left or to the right of the {b.category}?",
                f"The {a.category} is to the {side} of the {b.category}.", {})
    if qtype == "environment":
        return "What colour is the background of the image?", f"The background is {scene.background}.", {}
    if qtype == "holistic":
        d = describe(scene, rng, detailed=True)
        return "Describe this image in detail.", d.text, {}
    if qtype == "other":
        cols = sorted({o.colour for o in objs})
        return ("How many different colours do the objects have?",
                f"The objects have {num(len(cols))} different {plural('colour', len(cols))}: {join(cols)}.", {})
    q, a, _ = counting_qa(scene, spec, rng)  # "counting", and comparison/relation on one-object scenes
    return q, a, {}


# ----------------------------------------------------------------------------------------------- reading
COMPARE_QUESTION = ("Which objects in the description do the captions not support, and which objects of the "
                    "captions does it leave out?")


def compare_qa(scene: Scene, spec: WorldSpec, rng: np.random.Generator, hallucination_probs=(0.5, 0.3, 0.2),
               omit_prob: float = 0.3, n_captions: int = 2, raster: bool = False,
               located: bool = False, binding_prob: float = 0.0) -> tuple[str, str]:
    """A text-only reading exercise: a description (which may name absent objects or leave present ones out),
    then some of the scene's captions, then a question asking for the difference.  It plays the part of the
    text-only instructions in LLaVA-1.5's SFT mix: a language model trained from scratch has no reading skills,
    and the reward model needs exactly this one (compare a response with the facts that follow it)."""
    n = len(scene.objects)
    h = int(rng.choice(3, p=np.asarray(hallucination_probs)))
    omit = int(rng.integers(1, n)) if n >= 2 and rng.random() < omit_prob else 0
    fakes = pick_absent(scene, spec, rng, h, binding_prob) if h else []
    d = describe(scene, rng, hallucinate=fakes, omit=omit, exhaustive=omit == 0 and not fakes, raster=raster,
                 located=located)
    caps = [c for i, c in enumerate(captions(scene)) if i != 2]  # the shape-only caption names no categories
    caps = [caps[i] for i in rng.permutation(len(caps))[:n_captions]]
    q = f"Description: {d.text}\nCaptions:\n" + "".join(f"  - {c}\n" for c in caps) + COMPARE_QUESTION
    left_out = sorted({o.category for o in scene.objects} - set(d.mentioned))
    a = (f"The captions do not mention {join([an(c) for c in fakes])}." if fakes
         else "The captions support every object in the description.")
    a += f" It leaves out {join([an(c) for c in left_out])}." if left_out else " It leaves nothing out."
    return q, a
