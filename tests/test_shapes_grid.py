"""The grid layout of the shapes world (`ShapesConfig.cell`): one object per cell, and a vision patch equal to the
cell, so each object is exactly one image token."""
import numpy as np
import pytest

from jaxlava.shapes.assets import open_world
from jaxlava.shapes.scene import COLOURS, SHAPES, make_spec, object_mask, sample_scene
from jaxlava.shapes.vision import patch_targets
from jaxlava.shapes.world import ShapesConfig, preset, write_world


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
