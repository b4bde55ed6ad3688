"""Edit twins (jaxlava/shapes/edits.py, jaxlava/training/rm_edits.py): the text edits against the world's own
omission and addition twins, which build both descriptions from the scene, and the pairs against the exact
judges."""
import random
import re

import numpy as np
import pytest

from jaxlava.data import storage
from jaxlava.eval.shapes import judge, parse_mentions
from jaxlava.shapes import text as T
from jaxlava.shapes.edits import Vocab, lists, put_in, take_out
from jaxlava.shapes.scene import SIZES, make_spec, sample_scene
from jaxlava.shapes.world import ShapesConfig
from jaxlava.training.rm_edits import (EDIT_KINDS, EDIT_WINS, edit_pairs, edited_texts, fact_sizes, row_edits,
                                       twin_margins)

CFG = ShapesConfig()
VOCAB = Vocab(tuple(CFG.colours), tuple(CFG.shapes), SIZES)


def _scenes(n, seed=0):
    spec = make_spec(CFG.colours, CFG.shapes, CFG.cooccur_pairs, CFG.zipf_exponent, np.random.default_rng(seed))
    rng = np.random.default_rng(seed + 1)
    for _ in range(n):
        yield spec, rng, sample_scene(spec, rng, image_size=64, n_objects=int(rng.integers(1, 5)),
                                      cooccur_prob=CFG.cooccur_prob, backgrounds=CFG.backgrounds)


def _named(text):
    return T.mentioned_categories(text, [f"{c} {s}" for c in CFG.colours for s in CFG.shapes])


@pytest.mark.parametrize("located,detailed", [(True, False), (False, False), (False, True), (True, True)])
def test_take_out_gives_the_worlds_omission_twin(located, detailed):
    checked = 0
    for spec, rng, scene in _scenes(150):
        cats = [o.category for o in scene.objects]
        twins = T.omission_twin(scene, rng, hallucinate=T.pick_absent(scene, spec, rng, int(rng.integers(2))),
                                detailed=detailed, located=located)
        if twins is None:
            assert take_out(T.describe(scene, rng).text, cats[0], VOCAB) is None  # the only item of its list
            continue
        full, twin = twins
        gone = set(full.mentioned) - set(twin.mentioned)
        if len(cats) != len(set(cats)):
            continue  # two objects of one category: the world's twin drops one, an edit drops the category
        assert take_out(full.text, gone.pop(), VOCAB) == twin.text
        checked += 1
    assert checked > 50


@pytest.mark.parametrize("located", [True, False])
def test_put_in_gives_the_worlds_addition_twin(located):
    checked = 0
    for spec, rng, scene in _scenes(150, seed=5):
        extra = T.pick_absent(scene, spec, rng, 1)[0]
        base, more = T.addition_twin(scene, rng, extra, located=located)
        items = [m.group(0) for m in lists(more.text, VOCAB)[0]]
        at = next(i for i, it in enumerate(items) if f" {extra}" in it and extra not in base.text)
        size = items[at].split(" ")[1]
        place = re.search(r" the (.+)$", items[at]).group(1) if located else "top"
        assert put_in(base.text, extra, size, place, at, VOCAB) == more.text
        checked += 1
    assert checked == 150


def test_edits_refuse_what_they_cannot_do():
    assert take_out("A picture of shapes.", "red circle", VOCAB) is None
    assert take_out("In this picture I can see a red circle and a blue star.", "green star", VOCAB) is None
    assert put_in("No shapes here.", "red circle", "small", "top", 0, VOCAB) is None
    # every item of a list and the sentences that name only it go; a list of one item cannot lose it
    text = "The image shows a small red circle at the top and a large blue star on the left. The red circle is red."
    assert take_out(text, "red circle", VOCAB) == "The image shows a large blue star on the left."
    assert take_out("I can see a red circle. It is near a blue star.", "red circle", VOCAB) is None


def test_fact_sizes_read_the_sized_caption():
    facts = T.captions(next(_scenes(1, seed=3))[2])
    scene = next(_scenes(1, seed=3))[2]
    assert fact_sizes(facts, VOCAB) == {o.category: o.size for o in scene.objects}


def _rows(n, seed):
    rows, prompts = [], {}
    for k, (spec, rng, scene) in enumerate(_scenes(n, seed)):
        texts = []
        for _ in range(4):
            halluc = T.pick_absent(scene, spec, rng, int(rng.integers(3)))
            omit = int(rng.integers(len(scene.objects)))
            texts.append(T.describe(scene, rng, hallucinate=halluc, omit=omit, located=bool(rng.integers(2))).text)
        judged = [judge(parse_mentions(t), [o.category for o in scene.objects]) for t in texts]
        rows.append({"id": f"p{k}", "texts": texts, "judged": judged})
        prompts[f"p{k}"] = {"id": f"p{k}", "image": b"\x89PNG", "facts": T.captions(scene),
                            "conversations": [{"from": "human", "value": "<image>\nDescribe the image."}]}
    return rows, prompts


def test_edit_pairs_differ_in_one_object_and_balance_length_and_editing():
    rows, prompts = _rows(80, seed=11)
    kinded, counts = edit_pairs(rows, prompts, VOCAB, seed=0)
    n = counts["kept"]
    assert n > 10 and all(counts["made"][k] >= n for k in EDIT_KINDS)
    assert sorted(kind for _, kind in kinded) == sorted(EDIT_KINDS * n)
    texts = {r["id"]: r["texts"] for r in rows}
    present = {p["id"]: set(T.caption_objects(p["facts"])) for p in prompts.values()}
    longer = edited = 0
    for rec, kind in kinded:
        win, lose = (rec["output_1"], rec["output_2"])[::1 if rec["preference"] == 1 else -1]
        pid, s, _ = rec["id"].split("-")
        here, source = present[pid], texts[pid][int(s[1:])]
        jw, jl = (judge(parse_mentions(t), sorted(here)) for t in (win, lose))
        diff = (set(jw.mentioned) ^ set(jl.mentioned))
        assert len(diff) == 1, (win, lose)
        obj = diff.pop()
        assert (obj in here) == kind.startswith("present")
        assert (obj in jw.mentioned) == (obj in here)  # the winner names the present object, not the absent one
        assert (lose == source) == EDIT_WINS[kind] and (win == source) != EDIT_WINS[kind]
        assert rec["hallucination"] == kind.startswith("absent")
        longer += len(jw.mentioned) > len(jl.mentioned)
        edited += win != source
        storage.encode("preference", rec, rec["id"])
    assert longer == edited == 2 * n  # half of the pairs each way
    assert {r["preference"] for r, _ in kinded} == {1, 2}
    assert edit_pairs(rows, prompts, VOCAB, seed=0) == (kinded, counts)


def test_twin_margins_score_each_kind_on_the_samples_that_have_it():
    """row_edits lines up with the row's samples, edited_texts swaps in each kind's edit, and twin_margins
    compares the right response with the other: a scorer that counts present objects minus twice the absent ones
    ranks every twin right, at margin 1 for a present object and 2 for an absent one."""
    rows, prompts = _rows(30, seed=4)
    rng = random.Random(1)
    edits = [row_edits(r, prompts[r["id"]]["facts"], VOCAB, rng) for r in rows]
    present = {p["id"]: T.caption_objects(p["facts"]) for p in prompts.values()}

    def score(r, texts):
        return [len(j.recalled) - 2 * len(j.hallucinated)
                for j in (judge(parse_mentions(t), present[r["id"]]) for t in texts)]
    base = [score(r, r["texts"]) for r in rows]
    edited = {k: [score(r, edited_texts(r, e, k)) for r, e in zip(rows, edits)] for k in EDIT_KINDS}
    for r, e in zip(rows, edits):
        assert len(e) == len(r["texts"])
        for k in EDIT_KINDS:
            assert [t == s for t, s in zip(edited_texts(r, e, k), r["texts"])] == [k not in x for x in e]
    m = twin_margins(base, edited, edits)
    for k in EDIT_KINDS:
        assert m[k]["pairs"] == sum(k in x for e in edits for x in e) > 0
        assert m[k]["accuracy"] == 1.0 and m[k]["margin"] == (2.0 if k.startswith("absent") else 1.0)
    # scores equal everywhere count one half
    flat = twin_margins(base, {k: base for k in EDIT_KINDS}, edits)
    assert all(v["accuracy"] == 0.5 and v["margin"] == 0.0 for v in flat.values())
