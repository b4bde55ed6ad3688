"""The fact-check exercise (`jaxlava.shapes.factcheck`, world flag `n-factcheck`): every verdict agrees with the
scene the facts describe, absent objects include binding confusions, the picture is of another scene, and a world
with the records is the world it was without them in everything else, tokenizer included."""
import collections
import re

import numpy as np

from jaxlava.data.templates import FACTS_HEADER
from jaxlava.eval.shapes_reading import fake_kind
from jaxlava.shapes import factcheck as F
from jaxlava.shapes import text as T
from jaxlava.shapes.world import FACTCHECK_SPLITS, _Builder, build_world, preset

KW = dict(seed=4, n_sft=120, n_pref=60, colours=("red", "blue", "green", "yellow"), max_objects=3, raster_order=True,
          located_lists=True)


def test_mention_order_and_parse_verdicts():
    cats = ("red circle", "blue square", "red square")
    text = "I can see a blue square at the top, a red square and a red circle. The red circle is small."
    assert F.mention_order(text, cats) == ["blue square", "red square", "red circle"]
    assert F.mention_order("a red circles", cats) == []  # a plural is not the category
    assert F.parse_verdicts("blue square yes; red square no; blue square no.") == {"blue square": "yes",
                                                                                   "red square": "no"}
    assert F.parse_verdicts("The captions support every object.") == {}


def test_verdicts_follow_the_scene_and_include_binding_confusions():
    b = _Builder(preset("small", **KW), None)
    rng = np.random.default_rng(0)
    kinds, verdicts = collections.Counter(), collections.Counter()
    for _ in range(400):
        scene, _ = b.scene(rng)
        q, a, named = F.factcheck_qa(scene, b.spec, rng, raster=True, located=True)
        assert q.startswith("Description: ") and q.endswith(F.QUESTION)
        got = F.parse_verdicts(a)
        assert list(got) == named and named == F.mention_order(q, b.spec.categories)
        for cat, v in got.items():
            assert (v == "yes") == (cat in scene.categories), (q, a)
            verdicts[v] += 1
            if v == "no":
                kinds[fake_kind(cat, scene)] += 1
        block = F.facts_block(scene, rng)
        assert block.startswith(FACTS_HEADER) and sorted(block[len(FACTS_HEADER):].splitlines()) == sorted(
            f"  - {c}" for c in T.captions(scene))
    assert verdicts["no"] > 0.3 * verdicts["yes"]  # absent objects are common, not a rarity
    assert kinds["binding"] > 0.3 * sum(kinds.values())  # BINDING_PROB where the scene allows one
    rng, only = np.random.default_rng(0), collections.Counter()
    for _ in range(400):
        scene, _ = b.scene(rng)
        _, a, _ = F.factcheck_qa(scene, b.spec, rng, binding_prob=1.0)
        only.update(fake_kind(c, scene) for c, v in F.parse_verdicts(a).items() if v == "no")
    assert only["binding"] / sum(only.values()) > kinds["binding"] / sum(kinds.values())


def test_world_records_and_nothing_else_changes():
    off = build_world(preset("small", **KW))
    on = build_world(preset("small", n_factcheck=40, **KW))
    assert set(on.records["conversation"]) == set(off.records["conversation"]) | set(FACTCHECK_SPLITS)
    for kind in off.records:
        for split, recs in off.records[kind].items():
            assert [r["id"] for r in on.records[kind][split]] == [r["id"] for r in recs]
            assert [r.get("conversations") for r in on.records[kind][split]] == [r.get("conversations") for r in recs]
    fc = on.records["conversation"]["factcheck"] + on.records["conversation"]["factcheck_test"]
    assert len(fc) == 40 and len(on.records["conversation"]["factcheck_test"]) == 2  # sft_test_frac 0.05
    for r in fc:
        scene, turns = on.scenes[r["id"]], r["conversations"]
        first = turns[0]["value"]
        assert first.startswith("<image>\n" + FACTS_HEADER) and all(FACTS_HEADER not in t["value"] for t in turns[1:])
        for gpt in turns[1::2]:
            for cat, v in F.parse_verdicts(gpt["value"]).items():
                assert (v == "yes") == (cat in scene.categories)
        assert re.search(r"\byes\b|\bno\b", turns[1]["value"])
    # the picture is another scene's: its PNG is none of the described scene's own renderings
    assert sum(r["image"] == fc[0]["image"] for r in fc) == 1


def test_factcheck_records_do_not_train_the_tokenizer(tmp_path):
    from jaxlava.shapes.world import write_world
    kw = dict(KW, n_sft=60, n_pref=30, n_ppo=20, pope_images=4, n_mmhal=8)
    write_world(str(tmp_path / "off"), preset("small", **kw), progress=False)
    write_world(str(tmp_path / "on"), preset("small", n_factcheck=30, **kw), progress=False)
    assert ((tmp_path / "off" / "tokenizer" / "tokenizer.json").read_text()
            == (tmp_path / "on" / "tokenizer" / "tokenizer.json").read_text())


def test_omissions_list_what_the_description_leaves_out_and_draw_nothing_more():
    """`omissions`: the same description and verdicts, then the facts' objects it does not name, in the facts'
    order; a world with the flag differs from one without only in its fact-check answers and question."""
    b = _Builder(preset("small", **KW), None)
    seen = collections.Counter()
    for seed in range(200):
        scene, _ = b.scene(np.random.default_rng([seed, 0]))
        q0, a0, named0 = F.factcheck_qa(scene, b.spec, np.random.default_rng(seed), raster=True)
        q1, a1, named1 = F.factcheck_qa(scene, b.spec, np.random.default_rng(seed), raster=True, omissions=True)
        assert named1 == named0 and q1 == q0.replace(F.QUESTION, F.OMISSIONS_QUESTION) and a1.startswith(a0 + " ")
        missing = [c for c in T.caption_objects(T.captions(scene)) if c not in named0]
        assert a1.endswith(F.LEFT_OUT + (", ".join(missing) or F.NO_OBJECT) + ".")
        assert F.parse_omissions(a1) == set(missing) and F.parse_omissions(a0) is None
        seen[bool(missing)] += 1
    assert seen[True] > 20 and seen[False] > 20  # both kinds of answer are common
    assert F.parse_omissions("red circle yes. left out: blue star , green square.") == {"blue star", "green square"}
    kw = dict(KW, n_factcheck=20)
    off, on = build_world(preset("small", **kw)), build_world(preset("small", factcheck_omissions=True, **kw))
    for kind in off.records:
        for split, recs in off.records[kind].items():
            other = on.records[kind][split]
            if split in FACTCHECK_SPLITS:
                assert all(F.LEFT_OUT in t["value"] for r in other for t in r["conversations"][1::2])
                assert [r["image"] for r in other] == [r["image"] for r in recs]
            else:
                assert [r.get("conversations") for r in other] == [r.get("conversations") for r in recs]
