"""The reward-model stage (LLaVA-RLHF §3): a base LLaVA + LoRA adapter + scalar head; its loss, train step and
held-out accuracy.  The run itself is `jaxlava.training.run_rm`.

The score of a sequence is the head applied to the last hidden state at the LAST position;
sequences are left-padded, so that is the final real token (the end of the reward prompt).
Loss per pair: BCEWithLogits(r1 - r0, choice) + 1e-3 * |mean(r0 + r1)|.

Image dropout (off by default, not in the paper): in training, each pair's image is blanked with probability p,
so that on those pairs only the facts can decide; a reward model that sees the image well enough otherwise never
learns to read them (docs/decisions.md 22).

Coarse sight (off by default, not in the paper): the reward model sees every image at 1/N of its resolution (each
N x N block of pixels replaced by its mean), in training, held-out evaluation and PPO alike, so that the image
shows roughly where and what colour the objects are while only the facts say exactly what they are: a reward
model that sees, but not well enough (docs/decisions.md 45).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from einops import reduce, repeat
from flax import nnx

from jaxlava.lora import LoraConfig, make_lora
from jaxlava.model.heads import apply_scalar_head
from jaxlava.model.layers import Lora
from jaxlava.training.step import make_train_step

CENTERING_COEF = 1e-3


def coarse_images(pixel_values: jax.Array, pool: int) -> jax.Array:
    """pixel_values [B, C, H, W] at 1/pool of their resolution, same shape: each pool x pool block is its mean."""
    if pool <= 1 or pixel_values is None:
        return pixel_values
    H, W = pixel_values.shape[-2:]
    if H % pool or W % pool:
        raise ValueError(f"reward-model image_pool {pool} does not divide the pixel_values' {H} x {W} images")
    block = reduce(pixel_values.astype(jnp.float32), "b c (h p) (w q) -> b c h w", "mean", p=pool, q=pool)
    return repeat(block, "b c h w -> b c (h p) (w q)", p=pool, q=pool).astype(pixel_values.dtype)


def scores(model, head: dict, input_ids, pixel_values, attention_mask, *, lora: Lora | None = None,
           image_pool: int = 0) -> jax.Array:
    """[N, T] left-padded sequences -> [N] scalar rewards; `image_pool` > 1: the images seen coarse
    (`coarse_images`)."""
    pixel_values = coarse_images(pixel_values, image_pool)
    _, hidden = model(input_ids, pixel_values, attention_mask, lora=lora, return_hidden=True)
    return apply_scalar_head(head, hidden[:, -1])


def pair_scores(model, head, batch: dict, *, lora=None, image_pool: int = 0) -> jax.Array:
    """Preference batch (input_ids [B,2,T]) -> rewards [B,2]; the image is shared by both candidates."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    B, C, T = ids.shape
    px = batch.get("pixel_values")
    if px is not None:
        px = jnp.repeat(px, C, axis=0)
    r = scores(model, head, ids.reshape(B * C, T), px, mask.reshape(B * C, T), lora=lora, image_pool=image_pool)
    return r.reshape(B, C)


def preference_loss(r: jax.Array, choice: jax.Array, centering_coef: float = CENTERING_COEF):
    """r [B,2] rewards of (output_1, output_2); choice [B] = 1 when output_2 is preferred.

    Returns (loss, metrics).  The centring term keeps rewards near zero (the paper's 1e-3 * |mean(r0 + r1)|).
    """
    logit = (r[:, 1] - r[:, 0]).astype(jnp.float32)
    y = choice.astype(jnp.float32)
    bce = jnp.mean(jnp.maximum(logit, 0) - logit * y + jnp.log1p(jnp.exp(-jnp.abs(logit))))
    center = centering_coef * jnp.abs(jnp.mean(r[:, 0] + r[:, 1]))
    preferred = jnp.where(choice == 1, r[:, 1], r[:, 0])
    other = jnp.where(choice == 1, r[:, 0], r[:, 1])
    acc = jnp.mean((preferred - other >= 0).astype(jnp.float32))
    return bce + center, {"bce": bce, "center": center, "accuracy": acc,
                          "reward_mean": jnp.mean(r), "margin": jnp.mean(preferred - other)}


def blank_images(pixel_values: jax.Array, keep: jax.Array) -> jax.Array:
    """pixel_values [B, ...] with the images where `keep` [B] is False replaced by a blank one (all zeros: after
    the processor's normalisation, every pixel at the mean colour)."""
    return jnp.where(keep.reshape((-1,) + (1,) * (pixel_values.ndim - 1)), pixel_values, 0).astype(pixel_values.dtype)


def drop_images(batch: dict, rng: jax.Array, p: float) -> dict:
    """The batch with each pair's image blanked with probability p (a fresh draw per pair and step)."""
    px = batch.get("pixel_values")
    if px is None or p <= 0:
        return batch
    keep = jax.random.bernoulli(rng, 1.0 - p, (px.shape[0],))
    return {**batch, "pixel_values": blank_images(px, keep)}


def rm_loss(model, trainable: dict, batch: dict, *, lora_cfg: LoraConfig, rng=None, image_dropout: float = 0.0,
            image_pool: int = 0):
    """trainable = {"lora": adapter params, "head": head params}; adapter dropout and image dropout apply when
    `rng` is given."""
    lora_rng = None
    if rng is not None:
        if image_dropout > 0:
            batch = drop_images(batch, jax.random.fold_in(rng, 1), image_dropout)
        lora_rng = rng if lora_cfg.dropout > 0 else None
    r = pair_scores(model, trainable["head"], batch, lora=make_lora(trainable["lora"], lora_cfg, lora_rng),
                    image_pool=image_pool)
    return preference_loss(r, batch["choice"])


def loss_and_grad(graphdef, base_state, trainable, batch, *, lora_cfg: LoraConfig, rng=None,
                  image_dropout: float = 0.0, image_pool: int = 0):
    """Gradients w.r.t. the adapter and the head only; the base is frozen (and may be shared with other roles)."""
    model = nnx.merge(graphdef, base_state)

    def f(tr):
        return rm_loss(model, tr, batch, lora_cfg=lora_cfg, rng=rng, image_dropout=image_dropout,
                       image_pool=image_pool)

    (loss, metrics), grads = jax.value_and_grad(f, has_aux=True)(trainable)
    return loss, metrics, grads


def make_step(graphdef, lora_cfg: LoraConfig, tx, grad_accum: int = 1, schedule=None, image_dropout: float = 0.0,
              image_pool: int = 0):
    """The RM train step `step(state, base, batch) -> (TrainState, StepOutput)` (trainable: adapter + head)."""
    def lag(params, base, batch, rng):
        return loss_and_grad(graphdef, base, params, batch, lora_cfg=lora_cfg, rng=rng, image_dropout=image_dropout,
                             image_pool=image_pool)
    return make_train_step(lag, tx, grad_accum, schedule)


def eval_accuracy(graphdef, base, lora_cfg: LoraConfig, sets: dict[str, list], image_pool: int = 0):
    """`evaluate(state) -> {name: held-out accuracy}` for each named list of device preference batches
    (`eval_accuracy`; `eval_accuracy_other_facts` when each pair is given another pair's facts;
    `eval_accuracy_blank_image` with every image blanked)."""
    @jax.jit
    def accuracy(params, base_, b):
        model = nnx.merge(graphdef, base_)
        r = pair_scores(model, params["head"], b, lora=make_lora(params["lora"], lora_cfg), image_pool=image_pool)
        return preference_loss(r, b["choice"])[1]["accuracy"]

    def evaluate(state) -> dict:
        return {name: float(np.mean([float(accuracy(state.params, base, b)) for b in bs]))
                for name, bs in sets.items() if bs}
    return evaluate
