"""The SFT stage: masked next-token cross-entropy, its train step and its eval metric.

Pure functions and step builders only (the run itself is `jaxlava.training.run_sft`).  The trainer and the AOT
planner (`jaxlava.plan`) both call `make_step`, so the step that is planned is the step that runs.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlava.data.templates import IGNORE_INDEX
from jaxlava.lora import LoraConfig, make_lora
from jaxlava.training.step import make_train_step

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


def _model_and_lora(graphdef, params, frozen, lora_cfg: LoraConfig | None, rng=None):
    """Full fine-tune: the model is (params, frozen); LoRA (the RL-init stage): the frozen base + the adapter."""
    if lora_cfg is None:
        return nnx.merge(graphdef, params, frozen), None
    return nnx.merge(graphdef, frozen), make_lora(params, lora_cfg, rng)


def make_step(graphdef, tx, grad_accum: int = 1, schedule=None, lora_cfg: LoraConfig | None = None):
    """The SFT train step `step(state, frozen, batch) -> (TrainState, StepOutput)` (not jitted: the trainer jits
    it with donation, the planner lowers it with shardings).  With `lora_cfg` the trainable state is a LoRA
    adapter over the frozen base `frozen` (the RL-init policy of spec §4.10)."""
    def lag(params, frozen, batch, rng):
        if lora_cfg is None:
            return loss_and_grad(graphdef, params, frozen, batch)

        def f(p):
            model, lora = _model_and_lora(graphdef, p, frozen, lora_cfg, rng if lora_cfg.dropout > 0 else None)
            return sft_loss(model, batch, lora=lora)
        (loss, aux), grads = jax.value_and_grad(f, has_aux=True)(params)
        return loss, aux, grads
    return make_train_step(lag, tx, grad_accum, schedule)


def eval_loss(graphdef, frozen, batches: list, lora_cfg: LoraConfig | None = None):
    """`evaluate(state) -> {"eval_loss": mean loss over the held-out batches}` (device batches, made once)."""
    def loss(p, fr, b):
        model, lora = _model_and_lora(graphdef, p, fr, lora_cfg)
        return sft_loss(model, b, lora=lora)[0]
    loss_fn = jax.jit(loss)

    def evaluate(state) -> dict:
        if not batches:
            return {}
        return {"eval_loss": float(np.mean([loss_fn(state.params, frozen, b) for b in batches]))}
    return evaluate
