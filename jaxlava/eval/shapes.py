"""Exact hallucination judges on the shapes world: the ground truth of every held-out image is known, so POPE,
object hallucination in descriptions (CHAIR-style) and an MMHal-style 0-6 rating need no API and no judge model.

Three measures, from one generation pass (greedy; OUT/answers.jsonl, resumable):

1. POPE on the world's probes (benchmark "pope"; splits random, popular, adversarial): the question plus the
   single-word suffix, parsed with `pope.parse_answer`, scored with `pope.metrics` per split and `pope.overall`.
2. Descriptions of the held-out probe images (each distinct image of the probe set, POPE's first, then MMHal's),
   asked with the world's describe questions in turn. Mentioned objects are parsed from the text
   (`parse_mentions`) and judged against the image's objects (`judge`): CHAIR-i = hallucinated mentions /
   mentions, CHAIR-s = share of descriptions with a hallucinated mention, recall = present objects mentioned /
   present objects; also the share of descriptions that name one category twice (repeats), recall by the
   number of objects in the image and, on a world with co-occurrence pairs, the designed habit: how often a
   description names the absent partner of a present pair member, and that habit's share of the hallucinations.
3. An MMHal-style rating 0-6 of each description (`rating`), summarised by `mmhal.summarize` with the describe
   question as the question type (rating < 3 = hallucination, as in MMHal-Bench).

Mention rule (exact for every text the world generates, see tests/test_eval_shapes.py):
- the text is lowercased and split into words; "n't" reads as "not"; ". ! ? ;" and line breaks end sentences;
- a shape word (circle, square, ...; a plural "circles" counts as its singular) directly after a colour word
  (red, green, ...) is a mention of that category ("a large red circle" -> red circle); a shape word without a
  colour right before it is a bare-shape mention ("a circle"), dropped when the text also names a category of
  that shape (so "the red circle ... the circle" is one object); a colour alone mentions nothing; each category
  or bare shape counts once per text, however often it is repeated (a category introduced twice with "a" or "an",
  as in "a red square, a red square", is recorded as a repeat: the world's descriptions introduce each object
  once and refer back with "the", so a repeat is the describer's lapse, not a second object);
- negation: after "no", "not", "without", "nor", "never", "none" or "neither", mentions are negated (not counted)
  until the sentence ends or one of "but however although though whereas while instead except yet there"
  starts a new clause ("there is no red circle or blue square" negates both; "no, there is a red circle" does not).

Judging: a category mention is hallucinated when no object of the image has that category, a bare shape when no
object has that shape. A present object is recalled when its category, or its shape as a bare mention, is named.

Rating (MMHal's scale: informativeness x hallucination), with H hallucinated and C correct mentions and
r = recall of the image's objects:
  no hallucination: 6 complete (r = 1); 5 at least half (r >= 1/2); 4 some (r > 0); 3 names no object at all;
  hallucination:    0 mostly hallucinated (H > C); otherwise 2 when r >= 1/2, 1 when less.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import time

from jaxlava.eval import mmhal, pope
from jaxlava.eval.runner import Defaults, EvalConfig, EvalError
from jaxlava.shapes.scene import COLOURS, SHAPES
from jaxlava.shapes.text import DESCRIBE_QUESTIONS, caption_objects
from jaxlava.shapes.world import load_world_info

DEFAULTS = Defaults(temperature=0.0, max_new_tokens=96, pad_to_square=True)  # greedy; 96 > the longest description
JUDGEMENTS = "judgements.jsonl"
# the describe questions of the world (jaxlava.shapes.text), each with a short name: the question type of the rating
DESCRIBE_KINDS = dict(zip(DESCRIBE_QUESTIONS, ("describe", "see", "detail", "objects", "short", "shapes")))
NEGATION_CUES = frozenset({"no", "not", "without", "nor", "never", "none", "neither"})
SCOPE_BREAKS = frozenset({"but", "however", "although", "though", "whereas", "while", "instead", "except", "yet",
                          "there"})
_WORDS = re.compile(r"[a-z]+|[.!?;\n]")


# ----------------------------------------------------------------------------------------------- mentions
@dataclasses.dataclass(frozen=True)
class Mentions:
    categories: frozenset[str]  # "colour shape", named and not negated
    shapes: frozenset[str]  # bare shapes not covered by a named category of the same shape
    negated: frozenset[str]  # categories or bare shapes named only under a negation (for inspection)
    repeated: frozenset[str] = frozenset()  # categories introduced ("a ...", not negated) more than once

    @property
    def items(self) -> list[str]:
        return sorted(self.categories) + sorted(self.shapes)


def _shape_of(word: str, shapes) -> str | None:
    if word in shapes:
        return word
    return word[:-1] if word.endswith("s") and word[:-1] in shapes else None


def parse_mentions(text: str, colours=tuple(COLOURS), shapes=SHAPES) -> Mentions:
    """The objects a text names (see the module docstring for the rule)."""
    cats, bare, negated, introduced, repeated = set(), set(), set(), set(), set()
    negative, indefinite, prev = False, False, None
    for w in _WORDS.findall((text or "").lower().replace("n't", " not")):
        if w in ".!?;\n" or w in SCOPE_BREAKS:
            negative, indefinite, prev = False, False, None
            continue
        if w in NEGATION_CUES:
            negative = True
        if w in ("a", "an", "the"):
            indefinite = w != "the"
        shape = _shape_of(w, shapes)
        if shape is not None:
            name = f"{prev} {shape}" if prev in colours else shape
            if indefinite and not negative and " " in name:
                (repeated if name in introduced else introduced).add(name)
            (negated if negative else cats if " " in name else bare).add(name)
            indefinite = False
        prev = w
    bare -= {c.split(" ")[1] for c in cats}
    return Mentions(frozenset(cats), frozenset(bare), frozenset(negated - cats - bare), frozenset(repeated))


@dataclasses.dataclass(frozen=True)
class Judgement:
    present: tuple[str, ...]  # the image's object categories
    mentioned: tuple[str, ...]  # mention items (categories, then bare shapes)
    hallucinated: tuple[str, ...]  # mention items absent from the image
    recalled: tuple[str, ...]  # present categories that are mentioned (by category or bare shape)
    repeated: tuple[str, ...] = ()  # categories the text introduces ("a ...") more than once

    @property
    def correct(self) -> int:
        return len(self.mentioned) - len(self.hallucinated)


def judge(mentions: Mentions, present) -> Judgement:
    """Mentions against the image's object categories ("colour shape")."""
    present = tuple(present)
    shapes_here = {c.split(" ")[1] for c in present}
    hallucinated = [c for c in sorted(mentions.categories) if c not in present]
    hallucinated += [s for s in sorted(mentions.shapes) if s not in shapes_here]
    recalled = [c for c in present if c in mentions.categories or c.split(" ")[1] in mentions.shapes]
    return Judgement(present, tuple(mentions.items), tuple(hallucinated), tuple(recalled),
                     tuple(sorted(mentions.repeated)))


def rating(j: Judgement) -> int:
    """The MMHal-style 0-6 rating of one description (module docstring); < 3 means hallucination."""
    half = 2 * len(j.recalled) >= len(j.present)
    if not j.hallucinated:
        if not j.mentioned:
            return 3
        return 6 if len(j.recalled) == len(j.present) else 5 if half else 4
    if len(j.hallucinated) > j.correct:
        return 0
    return 2 if half else 1


CONFUSIONS = ("new colour", "new shape", "both new", "binding")


def confusion_kind(category: str, present) -> str:
    """What an absent `category` ("red square") shares with the `present` categories: a shape they have in a
    colour none has (`new colour`), the reverse (`new shape`), neither (`both new`), or a colour and a shape
    both present on other objects (`binding`: only pairing them tells)."""
    colour, shape = category.split(" ")
    has_colour = any(c.split(" ")[0] == colour for c in present)
    has_shape = any(c.split(" ")[1] == shape for c in present)
    return {(False, True): "new colour", (True, False): "new shape", (False, False): "both new"}.get(
        (has_colour, has_shape), "binding")


def _ratio(a: float, b: float) -> float:
    return a / b if b else 0.0


def habit_scores(judgements: list[Judgement], partners: dict[str, str]) -> dict:
    """The world's designed co-occurrence habit (partner noise: SFT descriptions name the absent partner of a
    present pair member): `images` with such an absent partner, how many of their descriptions name one (`named`,
    `rate`) and the hallucinated mentions that are absent partners (`mentions`)."""
    images = named = mentions = 0
    for j in judgements:
        absent = {partners[c] for c in j.present if c in partners and partners[c] not in j.present}
        hits = absent.intersection(j.hallucinated)
        images, named, mentions = images + bool(absent), named + bool(hits), mentions + len(hits)
    return {"images": images, "named": named, "rate": _ratio(named, images), "mentions": mentions}


def description_scores(judgements: list[Judgement], partners: dict[str, str] | None = None) -> dict:
    """CHAIR-i (object hallucination rate), CHAIR-s (descriptions with a hallucination), object recall, the share
    of descriptions that name a category twice (repeats) and of those that name no object at all (empty: "There
    are two shapes.", which CHAIR-i cannot see and recall alone charges), recall on the images with k objects
    (by_objects), the hallucinated categories by `confusion_kind` (a bare shape counts as a new shape) and, given
    the world's co-occurrence partners (category -> partner), the partner habit (`habit_scores`)."""
    n_mentioned = sum(len(j.mentioned) for j in judgements)
    n_halluc = sum(len(j.hallucinated) for j in judgements)
    n_present = sum(len(j.present) for j in judgements)
    n_recalled = sum(len(j.recalled) for j in judgements)
    by_objects = {}
    for k in sorted({len(j.present) for j in judgements}):
        group = [j for j in judgements if len(j.present) == k]
        by_objects[str(k)] = {"images": len(group), "recall": _ratio(sum(len(j.recalled) for j in group),
                                                                      k * len(group))}
    return {"count": len(judgements), "mentioned": n_mentioned, "hallucinated": n_halluc, "present": n_present,
            "recalled": n_recalled, "chair_i": _ratio(n_halluc, n_mentioned),
            "chair_s": _ratio(sum(bool(j.hallucinated) for j in judgements), len(judgements)),
            "recall": _ratio(n_recalled, n_present),
            "repeats": _ratio(sum(bool(j.repeated) for j in judgements), len(judgements)),
            "empty": _ratio(sum(not j.mentioned for j in judgements), len(judgements)),
            "recall_by_objects": by_objects, "hallucination_kinds": _kinds(judgements),
            **({"habit": _habit(judgements, partners, n_halluc, n_mentioned)}
                                                if partners else {})}


def _kinds(judgements: list[Judgement]) -> dict[str, int]:
    counts = dict.fromkeys(CONFUSIONS, 0)
    for j in judgements:
        for h in j.hallucinated:
            counts[confusion_kind(h, j.present) if " " in h else "new shape"] += 1
    return counts


def _habit(judgements: list[Judgement], partners: dict[str, str], n_halluc: int, n_mentioned: int) -> dict:
    """`habit_scores` plus the habit's `share` of the hallucinated mentions and CHAIR-i without it
    (`chair_i_other`: the hallucinations that are not the habit, per mention)."""
    h = habit_scores(judgements, partners)
    return h | {"share": _ratio(h["mentions"], n_halluc), "chair_i_other": _ratio(n_halluc - h["mentions"],
                                                                                 n_mentioned)}


def description_table(scores: dict) -> str:
    from jaxlava.eval.runner import markdown_table
    habit = scores.get("habit") if scores.get("habit", {}).get("images") else None
    return markdown_table(
        ["Descriptions", "Mentions / description", "CHAIR-i (%)", "CHAIR-s (%)", "Object recall (%)",
         *[f"Recall, {k} objects (%)" for k in scores.get("recall_by_objects", {})], "Repeats (%)",
         "No object named (%)",
         *(["Absent partner named (%)", "Partner share of hallucinations (%)"] if habit else [])],
        [[scores["count"], f"{_ratio(scores['mentioned'], scores['count']):.2f}", 100 * scores["chair_i"],
          100 * scores["chair_s"], 100 * scores["recall"],
          *[100 * g["recall"] for g in scores.get("recall_by_objects", {}).values()],
          100 * scores.get("repeats", 0.0), 100 * scores.get("empty", 0.0),
          *([100 * habit["rate"], 100 * habit["share"]] if habit else [])]])


# ----------------------------------------------------------------------------------------------- the world's probes
def ground_truth(record: dict) -> list[str]:
    """The categories of a probe's image, from `extra.image_content` ("size colour shape" names of every object)."""
    names = (record.get("extra") or {}).get("image_content")
    if not names:
        raise EvalError(f"probe {record.get('id')}: no extra.image_content (the image's objects)")
    cats = [" ".join(str(n).split(" ")[-2:]) for n in names]
    bad = [c for c in cats if len(c.split(" ")) != 2 or c.split(" ")[0] not in COLOURS
           or c.split(" ")[1] not in SHAPES]
    if bad:
        raise EvalError(f"probe {record.get('id')}: unknown objects {bad} in extra.image_content")
    return cats


def prompt_judgement(conversations: list[dict], answer: str, facts: list[str]) -> Judgement | None:
    """The judgement of an answer to a world prompt (a ppo_prompt record's turns and facts) when its question is
    one of the world's describe questions; the ground truth is the objects its facts list (the world's
    captions, `jaxlava.shapes.text.caption_objects`).  None for any other prompt."""
    human = next((t["value"] for t in conversations if t["from"] == "human"), "")
    if human.replace("<image>", "").strip() not in DESCRIBE_KINDS:
        return None
    present = caption_objects(facts)
    return None if present is None else judge(parse_mentions(answer), present)


def load_probes(data: str) -> list[dict]:
    """The probe records of a shapes world folder (DATA/probe/test), in file order."""
    from jaxlava.data.storage import StorageError, open_source
    if not os.path.isdir(data):
        raise EvalError(f"shapes world folder not found: {data} (make one with python data/shapes.py --out {data})")
    if not os.path.isfile(os.path.join(data, "world.json")):
        raise EvalError(f"{data} is not a shapes world: no {os.path.join(data, 'world.json')}")
    try:
        src = open_source(data, "probe", "test")
    except StorageError as e:
        raise EvalError(f"shapes world {data}: {e}") from None
    return [src[i] for i in range(len(src))]


def world_partners(data: str) -> dict[str, str]:
    """The co-occurrence partners of a shapes world folder (world.json's config.cooccur_pairs): category ->
    partner, both ways; {} for a world without pairs or written before they were recorded."""
    path = os.path.join(data, "world.json")
    try:
        pairs = (load_world_info(data).get("config") or {}).get("cooccur_pairs") or ()
    except (OSError, ValueError) as e:
        raise EvalError(f"shapes world {data}: cannot read {path}: {e}") from None
    out = {}
    for pair in pairs:
        if len(pair) != 2:
            raise EvalError(f"{path}: co-occurrence pair {pair!r} is not two categories")
        out[pair[0]], out[pair[1]] = pair[1], pair[0]
    return out


def pope_probes(probes: list[dict], images: int | None) -> dict[str, list[dict]]:
    """split -> POPE probes of the first `images` images of that split (all when None), in file order."""
    out: dict[str, list[dict]] = {}
    for split in pope.SPLITS:
        recs = [r for r in probes if r["benchmark"] == "pope" and r["split"] == split]
        keep = set(list(dict.fromkeys(_image_key(r) for r in recs))[:images]) if images is not None else None
        out[split] = [r for r in recs if keep is None or _image_key(r) in keep]
    if not any(out.values()):
        raise EvalError("the shapes world has no POPE probes")
    return out


def description_images(probes: list[dict], n: int | None) -> list[dict]:
    """The first record of every distinct probe image (POPE's images, then MMHal's), the first n of them."""
    first: dict[str, dict] = {}
    for r in probes:
        first.setdefault(_image_key(r), r)
    return list(first.values())[:n]


def _image_key(record: dict) -> str:
    return hashlib.sha1(record["image"]).hexdigest()


# ----------------------------------------------------------------------------------------------- running
@dataclasses.dataclass(kw_only=True)
class ShapesEvalConfig(EvalConfig):
    """Exact hallucination judges on the shapes world (no API): POPE on the world's probes, object hallucination
    in descriptions of held-out images (CHAIR-i, CHAIR-s, object recall) and an MMHal-style 0-6 rating of each
    description, all from the images' ground truth. Greedy decoding, at most 96 new tokens; answers go to
    OUT/answers.jsonl (a cut run resumes), the scores to OUT/results.json, each description's judgement to
    OUT/judgements.jsonl."""
    data: str = "runs/shapes_world"
    """the shapes world folder (python data/shapes.py --out DIR): its probe/test records are the held-out set"""
    out: str = ""
    """output folder (default: evals/NAME/shapes, NAME = the model folder's name, or its parent's for .../hf)"""
    pope_images: int | None = None
    """POPE: the first N images of each split, 6 questions each (default: all, 32 in the default world)"""
    descriptions: int | None = None
    """describe the first N distinct probe images (default: all, 128 in the default world)"""
    batch_size: int = 32
    """questions per generate call (the last batch is padded, so shapes never change)"""


def default_out(model: str) -> str:
    name = os.path.basename(os.path.normpath(model))
    if name == "hf":
        name = os.path.basename(os.path.dirname(os.path.normpath(model))) or name
    return os.path.join("evals", name, "shapes")


def describe_question(i: int) -> str:
    """The describe question of the i-th description image (the world's questions in turn)."""
    return DESCRIBE_QUESTIONS[i % len(DESCRIBE_QUESTIONS)]


def build_items(pope_sets: dict[str, list[dict]], images: list[dict]) -> list:
    from jaxlava.eval.runner import Item
    items = [Item(f"pope/{r['id']}", r["question"] + pope.SUFFIX, r["image"], {"split": s})
             for s, recs in pope_sets.items() for r in recs]
    for i, r in enumerate(images):
        q = describe_question(i)
        items.append(Item(f"describe/{r['id']}", q, r["image"], {"question_type": DESCRIBE_KINDS[q]}))
    return items


def score(pope_sets: dict[str, list[dict]], images: list[dict], answers: dict[str, str],
          partners: dict[str, str] | None = None) -> tuple[dict, list]:
    """(results, per-description rows) from the answers (id -> text); `partners`: the world's co-occurrence
    pairs (`world_partners`), for the habit measure."""
    per_split = {}
    for split, recs in pope_sets.items():
        if recs:
            preds = [pope.parse_answer(answers[f"pope/{r['id']}"]) for r in recs]
            per_split[split] = dict(pope.metrics(preds, [r["answer"] for r in recs]), n=len(recs))
    rows, judgements = [], []
    for i, r in enumerate(images):
        text = answers[f"describe/{r['id']}"]
        m = parse_mentions(text)
        j = judge(m, ground_truth(r))
        judgements.append(j)
        rows.append({"id": r["id"], "question_type": DESCRIBE_KINDS[describe_question(i)], "answer": text,
                     "score": rating(j), **dataclasses.asdict(j), "negated": sorted(m.negated)})
    results = {"benchmark": "shapes", "pope": {"splits": per_split, "overall": pope.overall(per_split)}}
    if rows:
        results["descriptions"] = description_scores(judgements, partners)
        results["rating"] = dict(mmhal.summarize(rows), count=len(rows))
    return results, rows


def tables(results: dict) -> str:
    parts = ["POPE (shapes world):", pope.table(results["pope"]["splits"], results["pope"]["overall"])]
    if "descriptions" in results:
        parts += ["Descriptions (object hallucination):", description_table(results["descriptions"]),
                  "MMHal-style rating of the descriptions (0-6, from the ground truth):",
                  mmhal.table(results["rating"])]
    return "\n\n".join(parts)


def run(cfg: ShapesEvalConfig) -> dict | None:
    from jaxlava.eval.runner import finish, generate_answers, resolve_model, stopped_early
    from jaxlava.fileio import write_text
    t0 = time.perf_counter()
    resolve_model(cfg.model, cfg.adapter)  # a missing model is an error at once, not after loading the world
    cfg = dataclasses.replace(cfg, out=cfg.out or default_out(cfg.model))
    probes = load_probes(cfg.data)
    pope_sets = pope_probes(probes, cfg.pope_images)
    images = description_images(probes, cfg.descriptions)
    items = build_items(pope_sets, images)
    answers = generate_answers(cfg, items, DEFAULTS)
    if stopped_early(cfg, answers, len(items)):
        return None
    results, rows = score(pope_sets, images, answers.texts, world_partners(cfg.data))
    results.update(data=os.path.abspath(cfg.data), generation=answers.stats(),
                   seconds=round(time.perf_counter() - t0, 1))
    write_text(os.path.join(cfg.out, JUDGEMENTS), "".join(json.dumps(r) + "\n" for r in rows))
    return finish(cfg.out, results, tables(results),
                  extra=lambda: print(f"\n{len(items)} answers ({answers.new} new) in {results['seconds']} s; "
                                      f"results in {cfg.out}"))


def main(argv: list[str] | None = None, description: str | None = None) -> int:
    """The command line of eval/shapes.py."""
    from jaxlava.eval.runner import cli_main
    return cli_main(ShapesEvalConfig, run, argv, description=description)
