"""The grid layout of the shapes world (`ShapesConfig.cell`): one object per cell, and a vision patch equal to the
cell, so each object is exactly one image token."""
import re

import numpy as np
import pytest

from jaxlava.shapes.assets import open_world
from jaxlava.shapes.scene import COLOURS, SHAPES, make_spec, object_mask, sample_scene
from jaxlava.shapes.vision import patch_targets
from jaxlava.shapes import text as T
from jaxlava.shapes.text import an, reading_order
from jaxlava.shapes.world import ShapesConfig, build_world, preset, write_world


def test_grid_scenes_put_one_object_in_each_of_distinct_cells():
    spec = make_spec(tuple(COLOURS), SHAPES, (), 0.6, np.random.default_rng(0))
    rng = np.random.default_rng(1)
    moved = False
    for _ in range(200):
        n = int(rng.integers(1, 6))
        scene = sample_scene(spec, rng, image_size=64, n_objects=n, cooccur_prob=0.0, backgrounds=("grey",),
                             cell=16, jitter=True)
        cells = {(int(o.x) // 16, int(o.y) // 16) for o in scene.objects}
        moved |= any(abs(o.x % 16 - 8) > 1 for o in scene.objects if o.size == "small")
        assert len(cells) == n  # distinct cells
        for o in scene.objects:  # inside its cell, with a pixel to spare
            assert o.r <= 0.45 * 16 and max(abs(o.x % 16 - 8), abs(o.y % 16 - 8)) <= max(0.0, 8 - o.r - 1.0) + 1e-9
        # each object's pixels lie in its own cell, so the patch under it names it and no other patch does
        mask = object_mask(scene)
        for k, o in enumerate(scene.objects):
            ys, xs = np.nonzero(mask == k + 1)
            assert len(xs) and set(xs // 16) == {int(o.x) // 16} and set(ys // 16) == {int(o.y) // 16}
        targets = patch_targets(scene, 16, list(COLOURS), list(SHAPES), min_pixels=8)
        assert (targets[:, 0] > 0).sum() == n
    assert moved  # with jitter, small objects are not always at the centre of their cell
    centred = sample_scene(spec, rng, image_size=64, n_objects=5, cooccur_prob=0.0, backgrounds=("grey",), cell=16)
    assert all((o.x % 16, o.y % 16) == (8.0, 8.0) for o in centred.objects)


def test_small_radius_shrinks_small_objects_only():
    spec = make_spec(tuple(COLOURS), SHAPES, (), 0.6, np.random.default_rng(0))
    kw = dict(image_size=64, n_objects=5, cooccur_prob=0.0, backgrounds=("grey",), cell=16)
    a = sample_scene(spec, np.random.default_rng(3), **kw)
    b = sample_scene(spec, np.random.default_rng(3), small_radius=0.12, **kw)
    for oa, ob in zip(a.objects, b.objects):
        assert (oa.category, oa.size) == (ob.category, ob.size)
        assert ob.r == (0.12 * 16 if ob.size == "small" else oa.r)


def test_sizes_restrict_objects_and_hallucinated_objects_alike():
    """`sizes=("small",)`: every object is small, and so is every object a description invents, so the word
    "large" cannot give a hallucination away."""
    from jaxlava.shapes import text as T
    spec = make_spec(tuple(COLOURS), SHAPES, (), 0.6, np.random.default_rng(0))
    rng = np.random.default_rng(4)
    for _ in range(50):
        scene = sample_scene(spec, rng, image_size=64, n_objects=3, cooccur_prob=0.0, backgrounds=("grey",),
                             cell=16, sizes=("small",))
        assert {o.size for o in scene.objects} == {"small"} and scene.sizes == ("small",)
        assert T.fake_object(T.pick_absent(scene, spec, rng, 1)[0], scene, rng).size == "small"
    both = sample_scene(spec, np.random.default_rng(5), image_size=64, n_objects=5, cooccur_prob=0.0,
                        backgrounds=("grey",), cell=16)
    assert both.sizes == ("small", "large")
    with pytest.raises(ValueError, match="sizes"):
        ShapesConfig(sizes=("tiny",))
    with pytest.raises(ValueError, match="sizes"):
        ShapesConfig(sizes=())


def test_grid_config_is_checked():
    with pytest.raises(ValueError, match="cell"):
        ShapesConfig(cell=12)  # not a divisor of 64
    with pytest.raises(ValueError, match="do not fit"):
        ShapesConfig(cell=32, max_objects=5)  # 4 cells
    assert ShapesConfig.from_dict(ShapesConfig(cell=16).to_dict()).cell == 16
    assert "cell" not in {k for k, v in ShapesConfig().to_dict().items() if v}  # free layout by default


def test_grid_world_gives_the_model_one_image_token_per_cell(tmp_path):
    d = str(tmp_path / "w")
    write_world(d, preset("small", cell=16))
    mc = open_world(d, build=False).model_config()
    assert mc.vision.patch_size == 16 and mc.num_image_tokens == 16
    free = str(tmp_path / "free")
    write_world(free, preset("small"))
    assert open_world(free, build=False).model_config().num_image_tokens == 64


def _words(text: str) -> list[str]:
    return sorted(re.sub(r"[,.:]", " ", text).split())


def _paired_texts(a_world, b_world):
    """Every text of two worlds made with the same draws, as (a's, b's) pairs (same record ids and images)."""
    for kind, splits in a_world.records.items():
        for split, recs in splits.items():
            for a, b in zip(recs, b_world.records[kind][split], strict=True):
                assert a["id"] == b["id"] and a["image"] == b["image"]
                ta = [t["value"] for t in a.get("conversations", [])] + [a.get("output_1", ""), a.get("output_2", "")]
                tb = [t["value"] for t in b.get("conversations", [])] + [b.get("output_1", ""), b.get("output_2", "")]
                yield from zip(ta, tb, strict=True)


def test_raster_order_lists_the_objects_in_reading_order_and_changes_nothing_else():
    """raster_order: every description names its present objects top row first, left to right (a made-up object
    of partner noise after them); the random draws are the same, so each record of the world is the one of the
    random-order world with the words of its texts in another order."""
    pairs = (("red circle", "blue square"), ("yellow star", "green triangle"))
    kw = dict(seed=7, cell=16, cell_jitter=True, n_sft=300, n_pref=60, n_ppo=40, pope_images=2, n_mmhal=8,
              colours=("red", "blue", "green", "yellow"), cooccur_pairs=pairs, cooccur_prob=0.5, noise_rate=0.7,
              noise_kind="partner", pref_minimal_prob=0.5, pref_twin_omit_prob=0.3, pref_twin_add_prob=0.3,
              sft_mix=(("describe", 0.6), ("compare", 0.2), ("yesno", 0.2)))
    plain, raster = build_world(preset("small", **kw)), build_world(preset("small", raster_order=True, **kw))
    moved = 0
    for x, y in _paired_texts(plain, raster):
        assert _words(x) == _words(y), (x, y)
        moved += x != y
    assert moved > 50
    checked = 0
    for r in [r for recs in raster.records["conversation"].values() for r in recs]:
        scene = raster.scenes[r["id"]]
        for q, a in zip(r["conversations"][::2], r["conversations"][1::2]):
            if "Description:" in q["value"] or "?" in a["value"]:
                continue  # the reading exercise's answer and question-answers are not descriptions
            first = re.split(r"\.( |$)", a["value"])[0]
            named = [o for o in reading_order(list(scene.objects), scene) if re.search(rf"\b{o.category}\b", first)]
            if len(named) < 2 or not first.startswith(("The image shows", "In this picture", "This is a simple",
                                                       "There ")):
                continue
            at = [first.index(o.category) for o in named]
            assert at == sorted(at), first
            fakes = T.mentioned_categories(first, raster.spec.categories) - scene.categories
            assert all(first.index(f) > max(at) for f in fakes), first
            checked += 1
    assert checked > 50


def test_located_lists_place_each_listed_object_and_change_nothing_else():
    """located_lists: every listed object is followed by its own place ("a small red square at the top left"); with
    those places taken out, each text is the plain world's, and the judges read the same objects."""
    from jaxlava.eval.shapes import parse_mentions
    kw = dict(seed=3, cell=16, n_sft=200, n_pref=40, n_ppo=30, pope_images=2, n_mmhal=8, raster_order=True,
              colours=("red", "blue", "green", "yellow"), pref_twin_omit_prob=0.3, pref_twin_add_prob=0.3,
              sft_mix=(("describe", 0.7), ("compare", 0.3)))
    plain, located = build_world(preset("small", **kw)), build_world(preset("small", located_lists=True, **kw))
    place = re.compile(r" (at the|on the|in the) (top left|top right|bottom left|bottom right|top|bottom|left|"
                       r"right|centre)(?=[,.\n]| and | on a |$)")
    placed = 0
    for x, y in _paired_texts(plain, located):
        lists = [seg for seg in y.split(". ") if not seg.startswith("The ")]  # not the detail sentences
        assert ". ".join(place.sub("", seg) for seg in lists) == ". ".join(
            seg for seg in x.split(". ") if not seg.startswith("The ")), (x, y)
        assert parse_mentions(x).categories == parse_mentions(y).categories
        placed += x != y
    assert placed > 50
    for r in located.records["conversation"]["train"]:
        scene = located.scenes[r["id"]]
        for a in r["conversations"][1::2]:
            for o in scene.objects:
                if f"{an(o.name)} " in a["value"] and not a["value"].startswith("Description:"):
                    assert f"{an(o.name)} {T.where(o.region(scene.image_size))}" in a["value"], a["value"]


def test_raster_order_is_a_world_flag():
    from jaxlava.shapes.cli import parse_args, world_config
    assert world_config(parse_args(["--out", "x", "--raster-order", "True"])).raster_order
    assert not world_config(parse_args(["--out", "x"])).raster_order
    assert world_config(parse_args(["--out", "x", "--located-lists", "True"])).located_lists
