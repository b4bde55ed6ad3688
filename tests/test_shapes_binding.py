"""Binding confusions in the shapes world (`ShapesConfig.pref_binding_prob`, `shapes.scene.binding_swaps`): what
counts as one, that the option reaches the preference pairs and nothing else, and that a world without it is the
world it was before."""
import collections
import hashlib
import json

import numpy as np

from jaxlava.eval.shapes_reading import fake_kind
from jaxlava.shapes import text as T
from jaxlava.shapes.scene import Obj, Scene, binding_swaps
from jaxlava.shapes.world import _Builder, generate_world, preset
from jaxlava.training.rm_twins import twin_kind

COLOURS = {"red", "blue", "green", "yellow"}


def _scene(*cats):
    return Scene(tuple(Obj(c.split()[1], c.split()[0], "large", 10.0 + 20 * i, 10.0, 5.0) for i, c in enumerate(cats)),
                 "grey", 64)


def test_binding_swaps_pair_a_present_colour_with_another_objects_shape():
    assert binding_swaps(_scene("red square", "blue circle")) == ["blue square", "red circle"]
    assert binding_swaps(_scene("red square", "red circle")) == []  # one colour: nothing to mis-bind
    assert binding_swaps(_scene("red square")) == []
    three = binding_swaps(_scene("red square", "blue circle", "blue square"))
    assert three == ["red circle"]
    for cat in three:
        assert fake_kind(cat, _scene("red square", "blue circle", "blue square")) == "binding"
    s = _scene("red square", "blue circle")
    assert [fake_kind(c, s) for c in ("green square", "red star", "green star", "blue square")] == [
        "new colour", "new shape", "both new", "binding"]


def test_pick_absent_with_binding_prob():
    w = preset("small", seed=5)
    b = _Builder(w, None)
    s = _scene("red square", "blue circle", "green star")
    swaps = set(binding_swaps(s))
    r0, r1 = np.random.default_rng(0), np.random.default_rng(0)
    assert T.pick_absent(s, b.spec, r0, 2) == T.pick_absent(s, b.spec, r1, 2, 0.0)  # off draws nothing extra
    assert r0.random() == r1.random()
    rng = np.random.default_rng(1)
    for k in (1, 2, 3):
        picks = T.pick_absent(s, b.spec, rng, k, 1.0)
        assert len(picks) == len(set(picks)) == k and set(picks) <= swaps and not set(picks) & s.categories
    many = T.pick_absent(s, b.spec, rng, 10, 1.0)  # more picks than swaps: the rest as before, no repeats
    assert len(set(many)) == 10 and set(many[:len(swaps)]) == swaps and not set(many) & s.categories
    shares = [np.mean([T.pick_absent(s, b.spec, rng, 1, p)[0] in swaps for _ in range(400)]) for p in (0.0, 0.5)]
    assert shares[0] < 0.25 and 0.4 < shares[1] < 0.75


def _digest(records):
    return hashlib.sha256(json.dumps(records, sort_keys=True, default=str).encode()).hexdigest()


def test_binding_prob_changes_only_the_preference_pairs():
    kw = dict(seed=9, n_sft=300, n_pref=600, pref_minimal_prob=1.0, colours=("red", "blue", "green", "yellow"),
              shapes=("circle", "square", "triangle", "star"), max_objects=3)
    off, on = generate_world(preset("small", **kw)), generate_world(preset("small", pref_binding_prob=0.8, **kw))
    assert off.keys() == on.keys()
    for kind in off:
        same = _digest(off[kind]) == _digest(on[kind])
        assert same == (kind != "preference"), kind
    kinds = {}
    for name, world in (("off", off), ("on", on)):
        c = collections.Counter()
        for r in world["preference"]["train"]:
            win, lose = (r["output_1"], r["output_2"])[::1 if r["preference"] == 1 else -1]
            c[twin_kind(win, lose, r["facts"], COLOURS)] += 1
        kinds[name] = c
    assert kinds["on"]["rename: binding"] > 3 * max(kinds["off"]["rename: binding"], 5)
