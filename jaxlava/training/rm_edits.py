"""Edit twins of the policy's own samples: preference pairs that only the image, or its facts, can decide.

`rm_pairs` pairs two samples of one prompt by the annotators' rule; most of those pairs are won by the shorter
response, and reward models trained on them charged several times more for an absent object than they paid for
a present one (docs/decisions.md 65-66). An edit twin is one sample beside itself with one object taken out or put
in (`jaxlava.shapes.edits`), judged again exactly. Four kinds, written in equal numbers:

| kind | the edit | the winner | longer wins | the edited one wins |
|---|---|---|---|---|
| `present_out` | a named present object taken out | the sample | yes | no |
| `absent_in` | an absent object put in | the sample | no | no |
| `absent_out` | a named absent object taken out | the edit | no | yes |
| `present_in` | an unnamed present object put in | the edit | yes | yes |

so neither length nor editing tells the winner; the first two kinds exist for nearly every sample, the last two
only where a sample hallucinates or leaves an object out, and the count of those bounds the four. An absent object
put in is one the prompt's other samples named wrongly where there is one (the policy's own confusions), else any
absent category of the world; a present one takes the size the facts give it. Places are drawn at random.
"""
from __future__ import annotations

import random
import re

import numpy as np

from jaxlava.eval.shapes import judge, parse_mentions
from jaxlava.shapes.edits import PLACES, Vocab, put_in, take_out
from jaxlava.shapes.world import load_world_info

EDIT_KINDS = ("present_out", "absent_in", "absent_out", "present_in")
EDIT_WINS = {"present_out": False, "absent_in": False, "absent_out": True, "present_in": True}


def world_vocab(data: str) -> Vocab:
    """The colours, shapes and sizes of the world in folder `data` (its world.json)."""
    c = load_world_info(data)["config"]
    return Vocab(tuple(c["colours"]), tuple(c["shapes"]), tuple(c["sizes"]))


def fact_sizes(facts: list[str], vocab: Vocab) -> dict[str, str]:
    """category -> the size the facts give an object of it ("a small red square"), where they give one."""
    words = lambda ws: "|".join(map(re.escape, ws))  # noqa: E731
    found = re.findall(rf"\b({words(vocab.sizes)}) ({words(vocab.colours)}) ({words(vocab.shapes)})\b",
                       " ".join(facts or ()).lower())
    return {f"{c} {s}": size for size, c, s in found}


def _changed(j, e) -> tuple[set, set]:
    """The objects (hallucinated or recalled) that judgement `e` has and `j` has not, and those `j` has and `e` has
    not."""
    added = (set(e.hallucinated) - set(j.hallucinated)) | (set(e.recalled) - set(j.recalled))
    removed = (set(j.hallucinated) - set(e.hallucinated)) | (set(j.recalled) - set(e.recalled))
    return added, removed


def sample_edits(text: str, j, facts: list[str], confusions: list[str], vocab: Vocab,
                 rng: random.Random) -> dict[str, tuple[str, str]]:
    """kind -> (winner, loser) for each kind of edit twin that `text` (judged `j`) allows, one per kind, each
    checked by judging the edit: it must differ from `text` in exactly the one object."""
    present = list(j.present)
    named = set(j.hallucinated) | set(j.recalled)
    categories = [f"{c} {s}" for c in vocab.colours for s in vocab.shapes]
    wrong = [c for c in confusions if c not in named and c not in present]
    absent = wrong or [c for c in categories if c not in present and c not in named]
    sizes = fact_sizes(facts, vocab)
    options = {
        "present_out": [(c, None) for c in j.recalled],
        "absent_out": [(c, None) for c in j.hallucinated if " " in c],
        "present_in": [(c, sizes.get(c)) for c in present if c not in j.recalled and sizes.get(c)],
        "absent_in": [(c, rng.choice(vocab.sizes)) for c in sorted(set(absent))],
    }
    out = {}
    for kind in EDIT_KINDS:
        picks = options[kind]
        rng.shuffle(picks)
        for cat, size in picks:
            if size is None:
                edited = take_out(text, cat, vocab)
            else:
                edited = put_in(text, cat, size, rng.choice(PLACES), rng.randrange(12), vocab)
            if edited is None or edited == text:
                continue
            added, removed = _changed(j, judge(parse_mentions(edited), present))
            if (added, removed) != (({cat}, set()) if size else (set(), {cat})):
                continue
            out[kind] = (edited, text) if EDIT_WINS[kind] else (text, edited)
            break
    return out


def _confusions(row: dict) -> list[str]:
    """The absent categories that any sample of `row` names: the policy's own confusions on that image."""
    return sorted({c for j in row["judged"] if j is not None for c in j.hallucinated if " " in c})


def edit_pairs(rows: list[dict], prompts: dict, vocab: Vocab, seed: int) -> tuple[list[tuple[dict, str]], dict]:
    """Edit twins of every distinct sample of `rows` (as `rm_audit.sample_describe` returns them, judged), as
    (preference record, kind), the same number of each kind (chosen at random, seeded), and the counts
    {"made": per kind before balancing, "kept": per kind}. Records as `rm_pairs` writes them; which response is
    output_1 is a coin flip."""
    rng = random.Random(seed)
    made: dict[str, list[tuple[dict, str]]] = {k: [] for k in EDIT_KINDS}
    for r in rows:
        p = prompts[r["id"]]
        human = [t for t in p["conversations"] if t["from"] == "human"][:1]
        confusions = _confusions(r)
        seen = set()
        for s, (text, j) in enumerate(zip(r["texts"], r["judged"])):
            if j is None or text in seen:
                continue
            seen.add(text)
            for kind, (win, lose) in sample_edits(text, j, p["facts"], confusions, vocab, rng).items():
                first = rng.random() < 0.5
                made[kind].append(({"id": f"{r['id']}-s{s}-{kind}", "image": p["image"], "source": "on-policy edit",
                                    "conversations": human + [{"from": "gpt", "value": win}],
                                    "output_1": win if first else lose, "output_2": lose if first else win,
                                    "preference": 1 if first else 2, "hallucination": kind.startswith("absent"),
                                    "facts": p["facts"]}, kind))
    n = min(len(v) for v in made.values())
    keep = {k: set(rng.sample(range(len(v)), n)) for k, v in made.items()}
    kept = [x for k in EDIT_KINDS for i, x in enumerate(made[k]) if i in keep[k]]
    rng.shuffle(kept)
    return kept, {"made": {k: len(v) for k, v in made.items()}, "kept": n}


def row_edits(row: dict, facts: list[str], vocab: Vocab, rng: random.Random) -> list[dict[str, tuple[str, str]]]:
    """Per sample of `row` (as `rm_audit.sample_describe` returns it, judged): its edit twins by kind, as
    `sample_edits` makes them (every sample, repeats included, so the list lines up with the row's texts)."""
    confusions = _confusions(row)
    return [{} if j is None else sample_edits(t, j, facts, confusions, vocab, rng)
            for t, j in zip(row["texts"], row["judged"])]


def edited_texts(row: dict, edits: list[dict[str, tuple[str, str]]], kind: str) -> list[str]:
    """The row's texts with each sample replaced by its edit of `kind` (kept where it has none)."""
    out = []
    for text, twins in zip(row["texts"], edits):
        pair = twins.get(kind)
        out.append(text if pair is None else pair[0] if EDIT_WINS[kind] else pair[1])
    return out


def twin_margins(scores: list[list[float]], edited: dict[str, list[list[float]]],
                 edits: list[list[dict]]) -> dict[str, dict]:
    """How a reward model ranks edit twins: `scores` per row and sample (the samples as written), `edited` per
    kind the same with each sample replaced by its edit (`edited_texts`), `edits` per row `row_edits`. Per kind:
    {"pairs", "accuracy" (the winner scored higher; a tie counts one half), "margin": the mean score of the winner
    minus the loser's}. A kind's margin is what the model pays for a present object (present_out, present_in) or
    charges for an absent one (absent_in, absent_out), measured on one object with every other word kept."""
    out = {}
    for kind in EDIT_KINDS:
        diffs = []
        for row_scores, row_edited, row_twins in zip(scores, edited[kind], edits):
            for s, e, twins in zip(row_scores, row_edited, row_twins):
                if kind in twins:
                    diffs.append(e - s if EDIT_WINS[kind] else s - e)
        d = np.asarray(diffs, np.float64)
        out[kind] = {"pairs": len(diffs), "accuracy": float(np.mean((d > 0) + 0.5 * (d == 0))) if len(d) else None,
                     "margin": float(d.mean()) if len(d) else None}
    return out
