"""Stage 0 of the shapes world (the stand-in for CLIP pretraining) and the text-only reading exercise."""
import os
import re

import jax
import numpy as np
import pytest
from flax import nnx

from jaxlava.shapes import vision as sv
from jaxlava.shapes import text as T
from jaxlava.shapes.world import ShapesConfig, load_world_info, preset, write_world
from jaxlava.shapes.scene import COLOURS, SHAPES, SIZES, Obj, Scene, make_spec, object_mask, sample_scene


def test_object_mask_matches_rendered_pixels():
    from jaxlava.shapes.scene import render
    spec = sv.uniform_spec(ShapesConfig())
    rng = np.random.default_rng(0)
    for _ in range(5):
        scene = sample_scene(spec, rng, image_size=64, n_objects=4, cooccur_prob=0.0, backgrounds=("grey",))
        img = np.asarray(render(scene, "plain"), np.int32)
        mask = object_mask(scene)
        for i, o in enumerate(scene.objects):
            painted = np.all(img == np.asarray(COLOURS[o.colour]), -1)
            # the label map and the picture share their geometry: every labelled pixel is painted in its colour
            assert painted[mask == i + 1].all()
        assert (mask > 0).sum() > 0


def test_patch_targets_name_the_object_under_each_patch():
    o = Obj("star", "blue", "large", 20.0, 20.0, 9.0)
    scene = Scene((o,), "grey", 64)
    t = sv.patch_targets(scene, 8, list(COLOURS), list(SHAPES), 8)
    assert t.shape == (64, 3)
    centre = (20 // 8) * 8 + 20 // 8  # the patch holding the star's centre (row-major)
    assert tuple(t[centre]) == (list(COLOURS).index("blue") + 1, SHAPES.index("star") + 1, 2)
    far = 7 * 8 + 7
    assert tuple(t[far]) == (0, 0, 0)
    labelled = {p for p in range(64) if t[p, 0]}
    rows, cols = zip(*[divmod(p, 8) for p in labelled])
    assert max(rows) <= 3 and max(cols) <= 3  # nothing labelled away from the object


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("world"))
    write_world(d, preset("small"), progress=False)
    return d


def _world_cfg(world) -> ShapesConfig:
    return ShapesConfig.from_dict(load_world_info(world)["config"])


def _model(world):
    from jaxlava.model import LlavaModel
    from jaxlava.presets import shapes_config
    return LlavaModel(shapes_config(load_world_info(world)["tokenizer"]["vocab_size"]), rngs=nnx.Rngs(0))


def test_stage0_trains_caches_and_reloads(world):
    cfg = sv.VisionPretrainConfig(steps=100, batch_size=16, warmup_steps=10, eval_images=32)
    m = _model(world)
    before = jax.device_get(nnx.state(m.vision_tower).to_pure_dict())
    metrics = sv.ensure_pretrained(m, world, cfg, progress=False)
    after = jax.device_get(nnx.state(m.vision_tower).to_pure_dict())
    assert metrics["colour_accuracy"] > 0.5  # colour is easy: far above the 1-in-9 chance after 100 steps
    assert not np.allclose(before["patch_kernel"], after["patch_kernel"])
    assert os.path.exists(os.path.join(world, sv.CACHE_DIR, "tower.safetensors"))
    m2 = _model(world)
    again = sv.ensure_pretrained(m2, world, cfg, progress=False)
    assert again == metrics
    for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(jax.device_get(nnx.state(m2.vision_tower)))):
        np.testing.assert_array_equal(a, b)
    # other settings: retrained, not silently reused
    m3 = _model(world)
    sv.ensure_pretrained(m3, world, sv.VisionPretrainConfig(steps=2, batch_size=8, eval_images=8), progress=False)
    assert not np.allclose(jax.device_get(nnx.state(m3.vision_tower).to_pure_dict())["patch_kernel"],
                           after["patch_kernel"])
    assert sv.ensure_pretrained(_model(world), world, sv.VisionPretrainConfig(steps=0)) is None


def test_shape_and_size_heads_ignore_background_patches(world):
    """Only the colour head (whose class 0 is the background) sees background patches; labels written into the
    shape and size columns of background patches must not change the loss."""
    m = _model(world)
    w, v = _world_cfg(world), m.config.vision
    px, tg = sv.SceneStream(w, v.patch_size, v.image_size, sv.VisionPretrainConfig(), 0).batch(4)
    heads = sv.init_heads(jax.random.key(0), v.hidden_size, (len(w.colours) + 1, len(w.shapes) + 1, len(SIZES) + 1))
    noisy = tg.copy()
    bg = tg[..., 0] == 0
    assert bg.any() and (~bg).any()
    noisy[..., 1][bg] = 3
    noisy[..., 2][bg] = 1
    a, _ = sv.patch_loss(m.vision_tower, heads, px, tg)
    b, _ = sv.patch_loss(m.vision_tower, heads, px, noisy)
    np.testing.assert_allclose(float(a), float(b), rtol=1e-6)
    noisy[..., 0][bg] = 2  # the colour head does see them
    c, _ = sv.patch_loss(m.vision_tower, heads, px, noisy)
    assert abs(float(c) - float(a)) > 1e-3


@pytest.mark.long
def test_stage0_learns_shape_not_only_colour(world):
    """Held-out shape accuracy leaves chance (1 in 6). With the shape loss averaged over background patches
    too, it stayed at 0.21 after 1500 steps; with object patches only it is 0.34 (docs/decisions.md, 9).
    A learning bar of about 3 minutes, so opt-in (`make test-long`) like the other quality bars; that stage 0 trains,
    caches and reloads stays in `make test`."""
    metrics = sv.pretrain(_model(world), _world_cfg(world), sv.VisionPretrainConfig(steps=1500), progress=False)
    assert metrics["colour_accuracy"] > 0.95
    assert metrics["shape_accuracy"] > 0.28


def test_compare_exercise_answers_from_the_scene():
    cfg = ShapesConfig()
    spec = make_spec(cfg.colours, cfg.shapes, cfg.cooccur_pairs, cfg.zipf_exponent, np.random.default_rng(0))
    rng = np.random.default_rng(1)
    cats = [f"{c} {s}" for c in cfg.colours for s in cfg.shapes]
    seen_fake = seen_none = 0
    for _ in range(200):
        scene = sample_scene(spec, rng, image_size=64, n_objects=int(rng.integers(1, 6)), cooccur_prob=0.8,
                             backgrounds=("grey",))
        q, a = T.compare_qa(scene, spec, rng)
        desc = q.split("\nCaptions:")[0]
        named = {c for c in cats if re.search(rf"\b{c}\b", desc)}
        fakes = named - scene.categories
        left_out = scene.categories - named
        not_supported, leaves = a.split(" It leaves ")
        assert {c for c in cats if re.search(rf"\b{c}\b", not_supported)} == fakes
        assert {c for c in cats if re.search(rf"\b{c}\b", leaves)} == left_out
        seen_fake += bool(fakes)
        seen_none += not fakes
    assert seen_fake > 50 and seen_none > 50
