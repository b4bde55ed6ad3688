"""Stage 0 of the shapes world: a stand-in for CLIP pretraining.

LLaVA starts from a pretrained CLIP encoder and keeps it frozen.  The shapes model has no pretrained encoder to
download, and a randomly initialised frozen tower leaves the language model nearly blind (the SFT model barely
tells the right image from another row's; measurements in docs/decisions.md, 9).  So before SFT the `shapes`
preset trains its small vision tower on freshly drawn scenes (never the world's own images; categories drawn uniformly, with no
co-occurrence) to name, at every patch, the colour, shape and size of the object painted there.  Afterwards
the tower is frozen exactly like the paper's CLIP.  The heads read the features LLaVA reads (the
`vision_feature_layer` output, CLS dropped), and are thrown away.

The result is cached in DATA/vision_tower/ (safetensors + meta.json), so reruns and resumed SFT runs, which
rebuild the frozen part of the model, see the same tower.
"""
from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, traverse_util
from safetensors.numpy import load_file, save_file
from tqdm import tqdm

from jaxlava.data.processor import ImagePrep
from jaxlava.fileio import atomic_dir
from jaxlava.shapes.world import ShapesConfig, load_world_info
from jaxlava.shapes.scene import SIZES, WorldSpec, object_mask, render, sample_scene

CACHE_DIR = "vision_tower"
LOSS_VERSION = 2  # part of the cache key: 2 = shape and size heads trained on object patches only


@dataclasses.dataclass(frozen=True)
class VisionPretrainConfig:
    steps: int = 3000  # 0: keep the random tower (the behaviour before stage 0 existed)
    batch_size: int = 32
    lr: float = 3e-3
    warmup_steps: int = 20
    min_pixels: int = 8  # an object labels a patch when it covers at least this many of the patch's pixels
    seed: int = 1234  # scene stream, separate from every stream the world itself uses
    eval_images: int = 256


def uniform_spec(world: ShapesConfig) -> WorldSpec:
    """Every colour x shape equally likely, no designed pairs: pretraining must not teach the world's biases."""
    cats = tuple(f"{c} {s}" for c in world.colours for s in world.shapes)
    return WorldSpec(cats, np.full(len(cats), 1.0 / len(cats)), {}, tuple(world.colours), tuple(world.shapes))


def patch_targets(scene, patch: int, colours, shapes, min_pixels: int) -> np.ndarray:
    """[num_patches, 3] int32 (colour, shape, size) ids of the object covering most of each patch, row-major
    like the vision tower's patches; id 0 is the background."""
    mask = object_mask(scene)
    g = scene.image_size // patch
    blocks = mask[: g * patch, : g * patch].reshape(g, patch, g, patch).transpose(0, 2, 1, 3).reshape(g * g, -1)
    counts = np.stack([(blocks == i + 1).sum(-1) for i in range(len(scene.objects))], -1) if scene.objects else \
        np.zeros((g * g, 1), np.int64)
    best = counts.argmax(-1)
    out = np.zeros((g * g, 3), np.int32)
    for p, (k, n) in enumerate(zip(best, counts[np.arange(g * g), best])):
        if n >= min_pixels:
            o = scene.objects[k]
            out[p] = (colours.index(o.colour) + 1, shapes.index(o.shape) + 1, SIZES.index(o.size) + 1)
    return out


class SceneStream:
    """Fresh scenes -> (pixels [B,3,S,S] as the processor makes them, targets [B, N, 3])."""

    def __init__(self, world: ShapesConfig, patch: int, image_size: int, cfg: VisionPretrainConfig, seed: int):
        if world.image_size != image_size:
            raise ValueError(f"shapes vision pretraining: the world's images are {world.image_size}px but the "
                             f"vision tower expects {image_size}px")
        self.world, self.patch, self.cfg = world, patch, cfg
        self.spec = uniform_spec(world)
        self.prep = ImagePrep(image_size, pad_to_square=True)
        self.rng = np.random.default_rng([world.seed, seed])

    def batch(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        w, px, tg = self.world, [], []
        for _ in range(n):
            k = int(self.rng.integers(w.min_objects, w.max_objects + 1))
            scene = sample_scene(self.spec, self.rng, image_size=w.image_size, n_objects=k, cooccur_prob=0.0,
                                 backgrounds=w.backgrounds, cell=w.cell,
                                 small_radius=w.small_radius, jitter=w.cell_jitter, sizes=w.sizes)
            px.append(self.prep(render(scene, w.texture)))
            tg.append(patch_targets(scene, self.patch, list(w.colours), list(w.shapes), self.cfg.min_pixels))
        return np.stack(px), np.stack(tg)


def init_heads(key, dim: int, sizes: tuple[int, ...]) -> list[dict]:
    keys = jax.random.split(key, len(sizes))
    return [{"w": jax.random.normal(k, (dim, n), jnp.float32) / np.sqrt(dim), "b": jnp.zeros((n,), jnp.float32)}
            for k, n in zip(keys, sizes)]


def patch_loss(tower, heads, pixels, targets):
    """Cross-entropy of the three per-patch heads, and per-head accuracy on object patches.

    The colour head also separates objects from the background (its class 0) and is trained on every patch;
    the shape and size heads are trained on object patches only.  Averaging their loss over all patches too
    drowns the shape signal: with background patches in it, held-out shape accuracy stays at chance."""
    feats = tower.features(pixels).astype(jnp.float32)  # [B, N, D]
    loss, acc = 0.0, []
    obj = (targets[..., 0] > 0).astype(jnp.float32)
    n_obj = jnp.maximum(obj.sum(), 1.0)
    for j, h in enumerate(heads):
        logits = feats @ h["w"] + h["b"]
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets[..., j])
        loss = loss + (ce.mean() if j == 0 else (ce * obj).sum() / n_obj)
        hit = (logits.argmax(-1) == targets[..., j]).astype(jnp.float32)
        acc.append((hit * obj).sum() / n_obj)
    return loss, jnp.stack(acc)


def pretrain(model, world: ShapesConfig, cfg: VisionPretrainConfig = VisionPretrainConfig(),
             progress: bool = True) -> dict:
    """Train `model.vision_tower` in place; returns held-out object-patch accuracies (colour, shape, size)."""
    v = model.config.vision
    heads = init_heads(jax.random.key(cfg.seed), v.hidden_size * len(model.config.feature_layers),
                       (len(world.colours) + 1, len(world.shapes) + 1, len(SIZES) + 1))
    graphdef, params = nnx.split(model.vision_tower)
    shardings = jax.tree.map(lambda a: a.sharding, params)
    sched = optax.warmup_cosine_decay_schedule(0.0, cfg.lr, cfg.warmup_steps, max(cfg.steps, cfg.warmup_steps + 1))
    tx = optax.adamw(sched, weight_decay=0.0)
    train = {"tower": params, "heads": heads}
    opt = tx.init(train)

    @jax.jit
    def step(train, opt, px, tg):
        def f(t):
            return patch_loss(nnx.merge(graphdef, t["tower"]), t["heads"], px, tg)
        (loss, acc), g = jax.value_and_grad(f, has_aux=True)(train)
        upd, opt = tx.update(g, opt, train)
        return optax.apply_updates(train, upd), opt, loss, acc

    stream = SceneStream(world, v.patch_size, v.image_size, cfg, cfg.seed)
    bar = tqdm(range(cfg.steps), desc="vision stage 0", disable=not progress, dynamic_ncols=True)
    for _ in bar:
        px, tg = stream.batch(cfg.batch_size)
        train, opt, loss, acc = step(train, opt, px, tg)
        bar.set_postfix(loss=f"{float(loss):.3f}")
    held_out = SceneStream(world, v.patch_size, v.image_size, cfg, cfg.seed + 1)
    px, tg = held_out.batch(cfg.eval_images)
    _, acc = jax.jit(lambda t, p, y: patch_loss(nnx.merge(graphdef, t["tower"]), t["heads"], p, y))(train, px, tg)
    nnx.update(model.vision_tower, jax.tree.map(jax.device_put, train["tower"], shardings))
    return {"colour_accuracy": float(acc[0]), "shape_accuracy": float(acc[1]), "size_accuracy": float(acc[2])}


def _meta(model, world: ShapesConfig, cfg: VisionPretrainConfig) -> dict:
    return {"vision": dataclasses.asdict(model.config.vision), "feature_layers": list(model.config.feature_layers),
            "world": world.to_dict(), "pretrain": dataclasses.asdict(cfg), "loss_version": LOSS_VERSION}


def ensure_pretrained(model, data_dir: str, cfg: VisionPretrainConfig = VisionPretrainConfig(),
                      progress: bool = True) -> dict | None:
    """Give `model` the stage-0 tower: load DATA/vision_tower if it was made with the same settings, else
    train it and write it there (atomically).  Returns the tower's metrics; None when cfg.steps == 0."""
    if cfg.steps <= 0:
        return None
    world = ShapesConfig.from_dict(load_world_info(data_dir)["config"])
    meta = _meta(model, world, cfg)
    path = os.path.join(data_dir, CACHE_DIR)
    state = nnx.state(model.vision_tower)
    if os.path.exists(os.path.join(path, "meta.json")):
        with open(os.path.join(path, "meta.json")) as f:
            saved = json.load(f)
        if saved["settings"] == json.loads(json.dumps(meta)):
            pure = traverse_util.unflatten_dict(load_file(os.path.join(path, "tower.safetensors")), sep=".")
            state.replace_by_pure_dict(jax.tree.map(lambda a, s: jax.device_put(a, s.sharding), pure,
                                                    state.to_pure_dict()))
            nnx.update(model.vision_tower, state)
            return saved["metrics"]
        print(f"{path} was made with other settings: training the vision tower again", flush=True)
    metrics = pretrain(model, world, cfg, progress)
    if jax.process_index() == 0:
        flat = traverse_util.flatten_dict(jax.device_get(nnx.state(model.vision_tower).to_pure_dict()), sep=".")
        with atomic_dir(path) as tmp:
            save_file(flat, os.path.join(tmp, "tower.safetensors"))
            with open(os.path.join(tmp, "meta.json"), "w") as f:
                json.dump({"settings": meta, "metrics": metrics}, f, indent=1)
    return metrics

