"""The shapes world: determinism, statistics vs configuration, images vs ground truth, annotator rule,
record formats, and the CLI writing every dataset."""
import hashlib
import io
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from jaxlava.shapes import text as T
from jaxlava.shapes.world import WORLD_SIZES as PRESETS, ShapesConfig, build_world, generate_world, preset
from jaxlava.shapes.scene import COLOURS, make_spec, sample_scene
from jaxlava.shapes.tokenizer import image_token_id, load_tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def world():
    return build_world(preset("small", seed=3, n_sft=600, noise_rate=0.3))


def _digest(records) -> str:
    def enc(o):
        return hashlib.sha1(o).hexdigest() if isinstance(o, bytes) else repr(o)
    return hashlib.sha1(json.dumps(records, default=enc, sort_keys=True).encode()).hexdigest()


def _all(world, kind):
    return [r for recs in world.records[kind].values() for r in recs]


def _binomial_ok(k: int, n: int, p: float, z: float = 4.0) -> bool:
    return abs(k / n - p) <= z * math.sqrt(p * (1 - p) / n) + 1e-9


def test_deterministic_from_seed(world):
    again = generate_world(preset("small", seed=3, n_sft=600, noise_rate=0.3))
    assert _digest(again) == _digest(world.records)
    assert _digest(generate_world(preset("small", seed=4))) != _digest(generate_world(preset("small", seed=3)))


def test_config_validation_and_roundtrip():
    cfg = preset("small", seed=7)
    assert ShapesConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="noise_rate"):
        ShapesConfig(noise_rate=1.5)
    with pytest.raises(ValueError, match="not a category"):
        make_spec(("red", "blue", "green", "yellow"), ("circle", "square"), [("red circle", "pink star")], 1.0,
                  np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown size"):
        preset("huge")
    assert set(PRESETS) == {"small", "default", "large"}
    # a smaller palette keeps only the designed pairs that still exist in it; explicit pairs are kept as given
    small = preset("small", colours=("red", "blue", "green", "yellow"), shapes=("circle", "square", "triangle"))
    assert small.cooccur_pairs == (("red circle", "blue square"),)
    assert preset("small", colours=("red", "blue", "green", "yellow"), cooccur_pairs=()).cooccur_pairs == ()


def test_object_counts_and_cooccurrence_rate():
    cfg = ShapesConfig(cooccur_prob=0.6)
    spec = make_spec(cfg.colours, cfg.shapes, cfg.cooccur_pairs, cfg.zipf_exponent, np.random.default_rng(0))
    rng = np.random.default_rng(1)
    scenes = [sample_scene(spec, rng, image_size=64, n_objects=int(rng.integers(1, 6)), cooccur_prob=0.6,
                           backgrounds=cfg.backgrounds) for _ in range(3000)]
    sizes = np.array([len(s.objects) for s in scenes])
    assert sizes.min() == 1 and sizes.max() == 5
    assert all(len(s.categories) == len(s.objects) for s in scenes)  # each category at most once
    both = sum(a in s.categories and b in s.categories for s in scenes for a, b in cfg.cooccur_pairs)
    either = sum(a in s.categories or b in s.categories for s in scenes for a, b in cfg.cooccur_pairs)
    assert either > 500 and _binomial_ok(both, either, 0.6)
    # a designed pair co-occurs far more often than an arbitrary pair of equally popular categories
    i, j = spec.categories.index("red circle"), spec.categories.index("blue square")
    rest = [c for c in spec.categories if c not in spec.partner]
    base = np.mean([sum(a in s.categories and b in s.categories for s in scenes)
                    / max(1, sum(a in s.categories or b in s.categories for s in scenes))
                    for a, b in zip(rest[::2], rest[1::2])])
    assert base < 0.25 and spec.partner[spec.categories[i]] == spec.categories[j]


def test_world_stats_match_config(world):
    st = world.stats
    for kind, hist in st["object_count_histogram"].items():
        assert set(hist) <= {1, 2, 3, 4, 5}, kind
    h = st["object_count_histogram"]["conversation"]
    assert all(_binomial_ok(h[k], 600, 0.2, z=5) for k in range(1, 6))
    co = st["cooccurrence"]
    assert _binomial_ok(round(co["empirical"] * co["scene_pairs"]), co["scene_pairs"], 0.8)
    n = st["noise"]
    assert n["descriptions"] > 150 and _binomial_ok(round(n["empirical"] * n["descriptions"]), n["descriptions"], 0.3)
    assert st["counts"]["conversation"] == {"train": 570, "test": 30}
    assert st["counts"]["preference"] == {"train": 108, "test": 12}
    json.dumps(st)  # world.json-serialisable


def test_noisy_descriptions_are_detectable_and_recorded(world):
    """Parse every SFT description against the scene: the absent objects it names are exactly the recorded noise,
    and they are co-occurring partners or popular categories."""
    noisy_ids = set(world.stats["noise"]["noisy_ids"])
    seen, flagged = 0, 0
    for r in _all(world, "conversation"):
        scene = world.scenes[r["id"]]
        turns = r["conversations"]
        assert turns[0]["from"] == "human" and turns[0]["value"].startswith("<image>\n")
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
        assert sum(t["value"].count("<image>") for t in turns) == 1
        for q, a in zip(turns[::2], turns[1::2]):
            if q["value"].replace("<image>\n", "") not in T.DESCRIBE_QUESTIONS:
                continue
            seen += 1
            absent = T.mentioned_categories(a["value"], world.spec.categories) - scene.categories
            assert len(absent) <= 1
            flagged += bool(absent)
            assert bool(absent) == (r["id"] in noisy_ids)
    assert seen == world.stats["noise"]["descriptions"] and flagged == len(noisy_ids)


def test_images_contain_the_objects(world):
    for r in _all(world, "conversation")[:80] + _all(world, "probe")[::7]:
        scene = world.scenes[r["id"]]
        img = np.asarray(Image.open(io.BytesIO(r["image"])).convert("RGB"))
        assert img.shape == (64, 64, 3)
        for o in scene.objects:
            assert tuple(img[int(o.y), int(o.x)]) == COLOURS[o.colour], (r["id"], o)
        corner = tuple(img[0, 0])
        assert corner not in COLOURS.values()
        drawn = {c for c, rgb in COLOURS.items() if (img.reshape(-1, 3) == rgb).all(-1).sum() >= 10}
        assert drawn == {o.colour for o in scene.objects}, r["id"]


def test_image_size_is_configurable():
    w = build_world(preset("small", image_size=32, n_sft=20, n_pref=4, n_ppo=4, pope_images=2, n_mmhal=8))
    r = w.records["conversation"]["train"][0]
    assert Image.open(io.BytesIO(r["image"])).size == (32, 32)


def test_annotator_rule():
    def d(h, m, det):
        return T.Description("x", tuple(f"h{i}" for i in range(h)), tuple(f"m{i}" for i in range(m)), det)
    assert T.annotator_prefers(d(0, 1, 0), d(1, 5, 5)) == 1  # less hallucinated wins even if much less complete
    assert T.annotator_prefers(d(2, 4, 4), d(1, 0, 0)) == 2
    assert T.annotator_prefers(d(1, 2, 0), d(1, 3, 0)) == 2  # tie on hallucination -> more complete
    assert T.annotator_prefers(d(0, 2, 2), d(0, 3, 0)) == 1
    assert T.annotator_prefers(d(1, 2, 1), d(1, 1, 2)) is None


def test_preference_pairs(world):
    recs = _all(world, "preference")
    assert {r["preference"] for r in recs} == {1, 2}
    assert _binomial_ok(sum(r["preference"] == 1 for r in recs), len(recs), 0.5)
    for r in recs:
        scene, resp = world.scenes[r["id"]], world.meta[r["id"]]["responses"]
        win, lose = (resp[0], resp[1]) if r["preference"] == 1 else (resp[1], resp[0])
        assert (len(win["hallucinated"]), -win["mentioned"].__len__() - win["details"]) < \
            (len(lose["hallucinated"]), -lose["mentioned"].__len__() - lose["details"])
        assert r["conversations"][-1]["value"] == r[f"output_{r['preference']}"]
        assert r["hallucination"] == bool(resp[0]["hallucinated"] or resp[1]["hallucinated"])
        facts = " ".join(r["facts"])
        for out, meta in ((r["output_1"], resp[0]), (r["output_2"], resp[1])):
            named = T.mentioned_categories(out, world.spec.categories)
            assert named - scene.categories == set(meta["hallucinated"])
            # with the facts the hallucinated objects are visible: the facts never name them
            assert not T.mentioned_categories(facts, meta["hallucinated"])
    assert 0.2 < np.mean([r["hallucination"] for r in recs]) < 1.0


def test_preferences_need_the_facts():
    """A judge that checks the responses against the facts recovers the annotator's choice; surface cues without
    the facts (length, number of objects named) are close to chance."""
    w = build_world(preset("small", seed=11, n_pref=800))
    recs = _all(w, "preference")
    cats = w.spec.categories

    def with_facts(r) -> int:
        truth = T.mentioned_categories(" ".join(r["facts"]), cats)

        def score(text):
            named = T.mentioned_categories(text, cats)
            return len(named - truth), -len(named & truth) - len(re.findall(r" is (?:at|on|in) the ", text))
        return 1 if score(r["output_1"]) < score(r["output_2"]) else 2

    def acc(judge):
        return np.mean([judge(r) == r["preference"] for r in recs])
    assert acc(with_facts) > 0.97
    n_named = lambda r, k: len(T.mentioned_categories(r[f"output_{k}"], cats))  # noqa: E731
    for cue in (lambda r: 1 if len(r["output_1"]) >= len(r["output_2"]) else 2,
                lambda r: 1 if len(r["output_1"]) < len(r["output_2"]) else 2,
                lambda r: 1 if n_named(r, 1) >= n_named(r, 2) else 2,
                lambda r: 1 if n_named(r, 1) < n_named(r, 2) else 2):
        assert acc(cue) < 0.62


def test_counterfactual_twins(world):
    """pref_minimal_prob: the losing response is the winner with one present object renamed to an absent category
    (in every sentence), so only the image or the facts can tell them apart; off by default."""
    assert not any(m.get("counterfactual") for m in world.meta.values())
    w = build_world(preset("small", seed=5, n_pref=300, pref_minimal_prob=1.0))
    recs = _all(w, "preference")
    # not a twin only when the first response names no present object (all of them replaced by hallucinations)
    assert np.mean([w.meta[r["id"]]["counterfactual"] for r in recs]) > 0.85
    for r in recs:
        if not w.meta[r["id"]]["counterfactual"]:
            continue
        win, lose = r[f"output_{r['preference']}"].split(), r[f"output_{3 - r['preference']}"].split()
        assert len(win) == len(lose)
        diff = {(a.strip(".,"), b.strip(".,")) for a, b in zip(win, lose) if a != b}
        renamed = T.mentioned_categories(" ".join(lose), w.spec.categories) - \
            T.mentioned_categories(" ".join(win), w.spec.categories)
        assert len(renamed) == 1 and not T.mentioned_categories(" ".join(r["facts"]), renamed)
        assert diff and all(a in COLOURS or a in w.spec.shapes for pair in diff for a in pair)


@pytest.mark.parametrize("attr", ["shape", "colour"])
def test_twin_rename_one_attribute(attr):
    """pref_twin_rename: a twin keeps the renamed object's other attribute and gives it a shape (colour) that no
    object of the image has, so the new word is in no fact."""
    w = build_world(preset("small", seed=6, n_pref=200, pref_minimal_prob=1.0, pref_twin_rename=attr))
    recs = [r for r in _all(w, "preference") if w.meta[r["id"]]["counterfactual"]]
    assert len(recs) > 100
    pool = set(w.spec.shapes) if attr == "shape" else set(COLOURS)
    for r in recs:
        win, lose = r[f"output_{r['preference']}"].split(), r[f"output_{3 - r['preference']}"].split()
        diff = {(a.strip(".,"), b.strip(".,")) for a, b in zip(win, lose) if a != b}
        assert len(diff) == 1, diff
        (old, new), = diff
        assert old in pool and new in pool
        scene = w.scenes[r["id"]]
        assert new not in {getattr(o, attr) for o in scene.objects}
        assert not re.search(rf"\b{new}\b", " ".join(r["facts"]))
    with pytest.raises(ValueError, match="pref_twin_rename"):
        preset("small", pref_twin_rename="size")
    with pytest.raises(ValueError, match="sft_mix"):
        preset("small", sft_mix=(("describe", 1.0), ("essay", 0.5)))
    with pytest.raises(ValueError, match="other than describe"):
        preset("small", sft_mix=(("describe", 1.0), ("yesno", 0.0)))
    assert preset("small", sft_mix=(("describe", 1.0),), max_turns=1).sft_mix == (("describe", 1.0),)


def test_ppo_prompts(world):
    recs = _all(world, "ppo_prompt")
    assert {r["caption_type"] for r in recs} >= {1, 6, 7}
    for r in recs:
        q, ref = r["conversations"][0]["value"], r["conversations"][1]["value"]
        assert q.startswith("<image>\n") and r["facts"][:5] == T.captions(world.scenes[r["id"]])
        ct = r["caption_type"]
        if ct == 1:
            assert r["length_bonus"] == -0.5
        else:
            assert r["length_bonus"] == 1.0
        if 2 <= ct <= 5:
            letter = "ABCD"[ct - 2]
            assert ref.startswith(letter + ". ") and f"\n{ref}\n" in q
            assert f"The correct option is {ref}." in r["facts"]
        if ct in (6, 7):
            assert ref.startswith("No" if ct == 6 else "Yes")


def test_pope_probes(world):
    pope = [r for r in _all(world, "probe") if r["benchmark"] == "pope"]
    counts = world.counts
    for split in T.NEGATIVE_KINDS:
        rs = [r for r in pope if r["split"] == split]
        assert len(rs) == 8 * 6 and sum(r["answer"] == "yes" for r in rs) == len(rs) // 2
        for r in rs:
            scene, obj = world.scenes[r["id"]], r["extra"]["object"]
            assert r["question"] == f"Is there {T.an(obj)} in the image?"
            assert (obj in scene.categories) == (r["answer"] == "yes")
            if r["answer"] == "no" and split == "popular":
                top = [c for c in counts.by_popularity() if c not in scene.categories][:3]
                assert obj in top
        if split == "adversarial":  # an absent designed partner of a positive is always asked about
            for img in {r["extra"]["image_index"] for r in rs}:
                group = [r for r in rs if r["extra"]["image_index"] == img]
                scene = world.scenes[group[0]["id"]]
                pos = [r["extra"]["object"] for r in group if r["answer"] == "yes"]
                neg = {r["extra"]["object"] for r in group if r["answer"] == "no"}
                mates = {world.spec.partner[p] for p in pos if p in world.spec.partner} - scene.categories
                assert mates <= neg


def test_mmhal_probes(world):
    mm = [r for r in _all(world, "probe") if r["benchmark"] == "mmhal"]
    assert [r["extra"]["question_type"] for r in mm[:8]] == list(T.MMHAL_TYPES)
    for r in mm:
        scene = world.scenes[r["id"]]
        assert r["answer"] and r["question"] and r["facts"] == T.captions(scene)
        assert r["extra"]["image_content"] == [o.name for o in scene.objects]
        if r["extra"]["question_type"] == "adversarial":
            assert r["extra"]["absent_object"] not in scene.categories
            assert r["answer"].startswith("There is no")


def test_cli_writes_all_datasets(tmp_path):
    from jaxlava.data import storage
    out = tmp_path / "world"
    proc = subprocess.run([sys.executable, os.path.join(REPO, "data", "shapes.py"), "--out", str(out),
                           "--size", "small", "--seed", "5", "--n-pref", "150"], capture_output=True, text=True,
                          cwd=REPO, env=os.environ | {"JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((out / "world.json").read_text())
    assert info["config"]["seed"] == 5 and info["config"]["n_pref"] == 150
    assert info["tokenizer"]["eos_token_id"] == 2
    expect = generate_world(preset("small", seed=5, n_pref=150))
    for kind, splits in expect.items():
        for split, recs in splits.items():
            src = storage.open_source(str(out), kind, split=split)
            assert len(src) == len(recs) == info["stats"]["counts"][kind][split]
            got = {g["id"]: g for g in (src[i] for i in range(len(src)))}  # storage may reorder records
            assert got == {r["id"]: r for r in recs}, (kind, split)
    tok = load_tokenizer(str(out / "tokenizer"))
    assert image_token_id(tok) == info["tokenizer"]["image_token_index"]


def _yes_share_by_category(world) -> dict[str, tuple[int, int]]:
    """category -> (yes answers, yes/no questions) over the SFT conversations."""
    out: dict[str, list[int]] = {}
    for r in _all(world, "conversation"):
        turns = r["conversations"]
        for q, a in zip(turns[::2], turns[1::2]):
            m = re.search(r"Is there an? (\w+ \w+) in the image\?", q["value"])
            if m:
                n = out.setdefault(m.group(1), [0, 0])
                n[0] += a["value"].startswith("Yes")
                n[1] += 1
    return {c: (y, n) for c, (y, n) in out.items()}


def test_matched_yesno_negatives_leave_the_answer_to_the_image():
    """With POPE's kinds the most popular categories are mostly asked about absent, so the question hints "No";
    with matched negatives every category is asked about present and absent alike."""
    cfg = dict(seed=4, n_sft=1500, n_pref=4, n_ppo=4, pope_images=2, n_mmhal=8, sft_mix=(("yesno", 1.0),))
    for mode, hinted in (("kinds", True), ("matched", False)):
        w = build_world(preset("small", yesno_negatives=mode, **cfg))
        shares = _yes_share_by_category(w)
        top = w.counts.by_popularity()[:3]
        y, n = sum(shares[c][0] for c in top), sum(shares[c][1] for c in top)
        assert n > 150
        assert (y / n < 0.35) == hinted, (mode, y, n)
        if not hinted:
            assert _binomial_ok(y, n, 0.5), (y, n)
    with pytest.raises(ValueError, match="yesno_negatives"):
        ShapesConfig(yesno_negatives="popular")


def test_partner_noise_names_the_absent_partner_last():
    """noise_kind="partner": a noisy description names the absent co-occurrence partner of a present object, after
    every real object; images without such a partner get clean descriptions; the rate holds among the rest."""
    pairs = (("red circle", "blue square"), ("yellow star", "green triangle"), ("red hexagon", "yellow diamond"),
             ("blue star", "green circle"))
    w = build_world(preset("small", seed=5, n_sft=1500, n_pref=4, n_ppo=4, pope_images=2, n_mmhal=8,
                           colours=("red", "blue", "green", "yellow"), cooccur_pairs=pairs, cooccur_prob=0.5,
                           noise_rate=0.7, noise_kind="partner", sft_mix=(("describe", 1.0),), max_turns=1))
    eligible = noisy = 0
    for r in _all(w, "conversation"):
        scene, text = w.scenes[r["id"]], r["conversations"][1]["value"]
        mates = T.absent_partners(scene, w.spec)
        absent = T.mentioned_categories(text, w.spec.categories) - scene.categories
        assert absent <= set(mates) and len(absent) <= 1
        eligible, noisy = eligible + bool(mates), noisy + bool(absent)
        if absent:
            fake = absent.pop()
            last_real = max(re.search(rf"\b{c}\b", text).start() for c in scene.categories if c in text)
            assert text.index(fake) > last_real, text
    assert eligible > 200 and _binomial_ok(noisy, eligible, 0.7), (noisy, eligible)
    assert w.stats["noise"]["empirical"] == pytest.approx(noisy / len(_all(w, "conversation")), abs=1e-3)
    with pytest.raises(ValueError, match="noise_kind"):
        ShapesConfig(noise_kind="last")


def test_cli_cooccur_pairs_and_probe_counts():
    from jaxlava.shapes.cli import parse_args, world_config
    cfg = world_config(parse_args(["--out", "x", "--colours", "red", "blue", "green", "yellow",
                                   "--cooccur-pairs", "red-circle:blue-square", "green-star:yellow-hexagon",
                                   "--n-mmhal", "300", "--pope-images", "50"]))
    assert cfg.cooccur_pairs == (("red circle", "blue square"), ("green star", "yellow hexagon"))
    assert (cfg.n_mmhal, cfg.pope_images) == (300, 50)
    with pytest.raises(SystemExit, match="red-circle:blue-square"):
        world_config(parse_args(["--out", "x", "--cooccur-pairs", "red circle:blue square"]))


def test_omission_twins_leave_one_present_object_out():
    """pref_twin_omit_prob: a share of the twins keeps every word but one present object's, so the loser is the less
    complete description (same hallucinations, no count claimed); off by default, and the rename twins remain."""
    w = build_world(preset("small", seed=7, n_pref=300, pref_minimal_prob=1.0, pref_twin_omit_prob=0.5))
    recs = [r for r in _all(w, "preference") if w.meta[r["id"]]["counterfactual"]]
    omitted = [r for r in recs if w.meta[r["id"]]["decided_by"] == "completeness"]
    assert _binomial_ok(len(omitted), len(recs), 0.5 * np.mean([len(w.scenes[r["id"]].objects) >= 2 for r in recs]))
    cats = w.spec.categories
    for r in omitted:
        win, lose = r[f"output_{r['preference']}"], r[f"output_{3 - r['preference']}"]
        named_win, named_lose = T.mentioned_categories(win, cats), T.mentioned_categories(lose, cats)
        present = set(w.scenes[r["id"]].categories)
        gone = named_win - named_lose
        assert len(gone) <= 1 and gone <= present and named_lose <= named_win
        assert named_win - present == named_lose - present  # the same hallucinations
        assert not re.search(r"\b(one|two|three|four|five) (shape|object)", win + lose)
        assert len(lose.split()) < len(win.split())
    with pytest.raises(ValueError, match="pref_twin_omit_prob"):
        preset("small", pref_twin_omit_prob=1.5)


def test_addition_twins_add_one_absent_object_and_balance_the_lengths():
    """pref_twin_add_prob: a share of the twins adds one absent object to a complete description, so the loser is
    the longer one; with as many omission twins, the longer list wins about half of the pairs that differ in
    length, and only the image or the facts tell which.  pref_twin_counted lets both kinds claim a count, the
    loser's wrong by one."""
    w = build_world(preset("small", seed=8, n_pref=400, pref_minimal_prob=1.0, pref_twin_omit_prob=0.4,
                           pref_twin_add_prob=0.4, pref_twin_counted=True))
    cats, longer_wins, counted = w.spec.categories, [], 0
    for r in (r for r in _all(w, "preference") if w.meta[r["id"]]["counterfactual"]):
        win, lose = r[f"output_{r['preference']}"], r[f"output_{3 - r['preference']}"]
        named_win, named_lose = T.mentioned_categories(win, cats), T.mentioned_categories(lose, cats)
        present = set(w.scenes[r["id"]].categories)
        if len(named_win) == len(named_lose):
            continue  # a rename twin
        longer_wins.append(len(named_win) > len(named_lose))
        assert present <= named_win  # both kinds: the winner names every object of the image
        if not longer_wins[-1]:  # an addition twin
            added = named_lose - named_win
            assert named_win <= named_lose and len(added) == 1 and not added & present
            assert w.meta[r["id"]]["decided_by"] == "hallucination"
        claims = [re.search(rf"\b({'|'.join(T.NUM)}) (shape|object)", t) for t in (win, lose)]
        assert bool(claims[0]) == bool(claims[1])  # the same phrasing
        if claims[0]:  # the counts differ by one, as the lists do
            counted += 1
            n_win, n_lose = (T.NUM.index(c.group(1)) for c in claims)
            assert n_lose - n_win == (-1 if longer_wins[-1] else 1)
    assert len(longer_wins) > 100 and _binomial_ok(sum(longer_wins), len(longer_wins), 0.5)
    assert counted > 20
    with pytest.raises(ValueError, match="pref_twin_add_prob"):
        preset("small", pref_twin_omit_prob=0.6, pref_twin_add_prob=0.6)


def test_checklist_verdicts_and_the_grounding_splits():
    """`checklist` questions name k distinct objects and the answer gives each name its true verdict, in the
    question's order; n_ground adds checklist-only conversations on scenes of their own in the splits "ground" and
    "ground_test" and leaves the SFT conversations as they were."""
    cfg = dict(seed=6, n_sft=300, n_pref=4, n_ppo=4, pope_images=2, n_mmhal=8, checklist_items=5,
               sft_mix=(("checklist", 1.0),))
    plain = build_world(preset("small", **cfg))
    w = build_world(preset("small", n_ground=200, **cfg))
    assert set(plain.records["conversation"]) == {"train", "test"}
    assert set(w.records["conversation"]) == {"train", "test", "ground", "ground_test"}
    assert _digest(w.records["conversation"]["train"]) == _digest(plain.records["conversation"]["train"])
    assert [len(w.records["conversation"][s]) for s in ("ground", "ground_test")] == [190, 10]
    yes = total = 0
    for r in _all(w, "conversation"):
        present = w.scenes[r["id"]].categories
        for q, a in zip(r["conversations"][::2], r["conversations"][1::2]):
            names = q["value"].split("in the image? ")[1].rstrip(".").split(", ")
            assert len(names) == 5 == len(set(names))
            verdicts = [item.rsplit(" ", 1) for item in a["value"].rstrip(".").split("; ")]
            assert [n for n, _ in verdicts] == names
            assert [v for _, v in verdicts] == ["yes" if n in present else "no" for n in names]
            yes, total = yes + sum(v == "yes" for _, v in verdicts), total + len(names)
    assert 0.2 < yes / total < 0.5, yes / total  # each draw is present with p 1/2; repeats are drawn again
    assert all(r["id"].startswith("shapes-ground-") for r in w.records["conversation"]["ground"])
    with pytest.raises(ValueError, match="checklist_items"):
        preset("small", checklist_items=0)


def test_grounding_conversations_that_ask_one_object_a_turn():
    """ground_yesno_prob: that share of the grounding conversations asks POPE's single question in every turn (each
    turn another object, the answer true of the scene, half of them short); the others are checklists; the SFT
    conversations and, at 0, the grounding ones stay as they were (no random draw is added)."""
    cfg = dict(seed=3, n_sft=40, n_pref=4, n_ppo=4, pope_images=2, n_mmhal=8, n_ground=400)
    base = build_world(preset("small", **cfg))
    zero = build_world(preset("small", ground_yesno_prob=0.0, **cfg))
    half = build_world(preset("small", ground_yesno_prob=0.5, **cfg))
    assert _digest(zero.records["conversation"]["ground"]) == _digest(base.records["conversation"]["ground"])
    assert _digest(half.records["conversation"]["train"]) == _digest(base.records["conversation"]["train"])
    single = short = turns = 0
    for r in half.records["conversation"]["ground"] + half.records["conversation"]["ground_test"]:
        qs = [t["value"].removeprefix("<image>\n") for t in r["conversations"][::2]]
        answers = [t["value"] for t in r["conversations"][1::2]]
        kinds = {q.startswith("Is there") for q in qs}
        assert len(kinds) == 1, qs  # one way of asking a conversation
        if not kinds.pop():
            continue
        single += 1
        present = half.scenes[r["id"]].categories
        asked = [re.match(r"Is there an? (\w+ \w+) in the image\?", q).group(1) for q in qs]
        assert len(set(asked)) == len(asked), qs
        for name, q, a in zip(asked, qs, answers):
            assert a.startswith("Yes" if name in present else "No"), (q, a, present)
            short += q.endswith("single word or phrase.")
            turns += 1
    assert 0.4 < single / 400 < 0.6 and 0.35 < short / turns < 0.65, (single, short, turns)
    with pytest.raises(ValueError, match="ground_yesno_prob"):
        preset("small", ground_yesno_prob=1.5)
