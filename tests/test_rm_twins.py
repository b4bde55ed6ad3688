"""eval/rm_twins.py's sorting of held-out pairs by kind of twin: hand-made pairs of every kind, a generated world's
twins, and the table of accuracies by kind. (Its scores are checked against train/rm.py's in test_train_rm.py.)"""
import collections

import pytest

from jaxlava.shapes.world import build_world, preset
from jaxlava.training.rm_twins import KINDS, accuracy_table, table, twin_kind

COLOURS = {"red", "blue", "green", "yellow"}
FACTS = ["There are 2 objects: a small red circle and a large blue square.",
         "Only these objects are visible: red circle, blue square."]
BASE = "The image shows a small red circle at the top, a large blue square in the centre."


@pytest.mark.parametrize("loser, kind", [
    ("The image shows a small green circle at the top, a large blue square in the centre.", "rename: new colour"),
    ("The image shows a small green star at the top, a large blue square in the centre.", "rename: new colour"),
    ("The image shows a small red star at the top, a large blue square in the centre.", "rename: new shape"),
    ("The image shows a small blue star at the top, a large blue square in the centre.", "rename: new shape"),
    ("The image shows a small red square at the top, a large blue square in the centre.", "rename: binding"),
    ("The image shows a small blue circle at the top, a large blue square in the centre.", "rename: binding"),
    ("The image shows a small red circle at the top.", "omission"),
    ("The image shows a small red circle at the top, a large blue square in the centre, a green star.", "addition"),
    ("The image shows one small red circle at the top.", "omission"),  # a counted list: the count changes too
    ("The image shows a small red circle.", "omission"),
    ("The image shows a small red circle at the top, a large blue square in the centre and a green star.",
     "addition"),
    ("The image shows a small red circle at the top and a large blue square in the centre.", "other"),
    ("A picture of two shapes.", "other"),
    ("The picture holds a small red triangle on the left, a big blue square in the middle.", "other"),
])
def test_kind_of_hand_made_pairs(loser, kind):
    assert twin_kind(BASE, loser, FACTS, COLOURS) == kind
    if kind.startswith("rename"):  # punctuation and case do not change what a word is
        assert twin_kind(BASE.upper(), loser.replace(",", " ,"), [f.replace(",", "") for f in FACTS], COLOURS) \
            == kind


def test_a_world_of_rename_twins_has_renames_only():
    w = build_world(preset("small", seed=2, n_pref=200, pref_minimal_prob=1.0,
                           colours=("red", "blue", "green", "yellow")))
    recs = [r for recs in w.records["preference"].values() for r in recs]
    kinds = collections.Counter(
        twin_kind(*((r["output_1"], r["output_2"]) if r["preference"] == 1 else (r["output_2"], r["output_1"])),
                  r["facts"], {"red", "blue", "green", "yellow"}) for r in recs)
    # where no absent category fits a twin, the world falls back to an ordinary pair ("other")
    assert kinds["omission"] == kinds["addition"] == 0 and kinds["other"] < 0.2 * len(recs), kinds
    assert min(kinds[k] for k in KINDS if k.startswith("rename")) > 0 and sum(kinds.values()) == len(recs)
    cfg = preset("small", seed=2, n_pref=200, pref_minimal_prob=1.0, pref_twin_omit_prob=0.5, pref_twin_add_prob=0.5)
    omit = build_world(cfg)
    recs = [r for recs in omit.records["preference"].values() for r in recs]
    kinds = collections.Counter(
        twin_kind(*((r["output_1"], r["output_2"]) if r["preference"] == 1 else (r["output_2"], r["output_1"])),
                  r["facts"], set(cfg.colours)) for r in recs)
    assert kinds["omission"] > 0.3 * len(recs) and kinds["addition"] > 0.3 * len(recs), kinds


def test_accuracy_table_by_kind():
    kinds = ["omission", "omission", "rename: binding", "addition"]
    t = accuracy_table(kinds, {"own": [True, False, True, True], "other": [False, False, True, False]})
    assert t["omission"] == {"n": 2, "own": 0.5, "other": 0.0}
    assert t["rename: binding"] == {"n": 1, "own": 1.0, "other": 1.0}
    assert t["all"] == {"n": 4, "own": 0.75, "other": 0.25}
    assert list(t) == ["omission", "addition", "rename: binding", "all"]  # kinds in KINDS order, empty ones left out
    text = table({"kinds": t})
    assert "| omission | 2 | 0.500 | 0.000 |" in text and "another pair's facts" in text
