"""SFT stage math: masked next-token cross-entropy and its loss-and-gradient step.

Pure functions only; the trainer (train/sft.py) and the AOT planner (jaxlava.plan) both use
`loss_and_grad`, so the step that is planned is the step that runs.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

IGNORE_INDEX = -100

# SFT trains the projector and the language model; the vision tower is always frozen.
TRAINABLE = nnx.All(nnx.Param, nnx.Not(nnx.PathContains("vision_tower")))


def token_nll(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-position negative log-likelihood of labels[:, 1:] under logits[:, :-1], and the target mask."""
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, jnp.where(mask, targets, 0)[..., None], axis=-1)[..., 0]
    return jnp.where(mask, nll, 0.0), mask


def sft_loss(model, batch: dict, *, lora=None) -> tuple[jax.Array, dict]:
    """Mean cross-entropy over assistant tokens (labels != -100). Returns (loss, aux)."""
    logits = model(batch["input_ids"], batch.get("pixel_values"), batch["attention_mask"], lora=lora)
    nll, mask = token_nll(logits, batch["labels"])
    n = mask.sum()
    loss = nll.sum() / jnp.maximum(n, 1)
    return loss, {"target_tokens": n, "nll_sum": nll.sum()}


def split_trainable(model, trainable=TRAINABLE):
    """(graphdef, trainable params, everything else) of an nnx model."""
    return nnx.split(model, trainable, ...)


def loss_and_grad(graphdef, trainable, frozen, batch: dict):
    """Loss, aux and gradients w.r.t. the trainable state. Pure; jit it with shardings as needed."""
    def f(tr):
        return sft_loss(nnx.merge(graphdef, tr, frozen), batch)

    (loss, aux), grads = jax.value_and_grad(f, has_aux=True)(trainable)
    return loss, aux, grads
