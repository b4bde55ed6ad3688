"""Optimiser, schedules and the generic jitted train step (gradient accumulation + NaN/inf guard).

The step is pure: `step(state, frozen, batch) -> (state, metrics)`; `state` holds only what trains
(full weights in SFT, adapter + head in the RM) plus the optimizer state, the step and an RNG key.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Literal

import jax
import jax.numpy as jnp
import optax


@dataclasses.dataclass
class OptimConfig:
    lr: float = 2e-5
    schedule: Literal["cosine", "constant_with_warmup"] = "cosine"
    warmup_ratio: float = 0.03
    warmup_steps: int | None = None  # overrides warmup_ratio when set
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    max_grad_norm: float = 1.0
    grad_accum: int = 1  # microbatches per optimizer step (the batch is split along axis 0)


def warmup_steps(cfg: OptimConfig, total_steps: int) -> int:
    if cfg.warmup_steps is not None:
        return cfg.warmup_steps
    return int(round(cfg.warmup_ratio * total_steps))


def make_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    """HF-style schedules: linear warmup from 0, then cosine to 0 (or constant)."""
    w = max(warmup_steps(cfg, total_steps), 0)
    total = max(total_steps, w + 1)

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warm = step / max(w, 1)
        if cfg.schedule == "constant_with_warmup":
            decay = 1.0
        else:
            progress = jnp.clip((step - w) / max(total - w, 1), 0.0, 1.0)
            decay = 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
        return cfg.lr * jnp.where(step < w, warm, decay)

    return schedule


def make_optimizer(cfg: OptimConfig, total_steps: int) -> optax.GradientTransformation:
    return optax.chain(
        optax.clip_by_global_norm(cfg.max_grad_norm),
        optax.adamw(make_schedule(cfg, total_steps), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                    weight_decay=cfg.weight_decay),
    )


def init_state(trainable, tx: optax.GradientTransformation, seed: int = 0) -> dict:
    return {"params": trainable, "opt_state": tx.init(trainable), "step": jnp.zeros((), jnp.int32),
            "rng": jax.random.key_data(jax.random.key(seed)), "skipped": jnp.zeros((), jnp.int32)}


def _split_micro(batch, n: int):
    def one(x):
        if not hasattr(x, "shape") or x.ndim == 0:
            return x
        if x.shape[0] % n:
            raise ValueError(f"batch of {x.shape[0]} rows does not split into {n} microbatches")
        return x.reshape(n, x.shape[0] // n, *x.shape[1:])
    return jax.tree.map(one, batch)


def make_train_step(loss_and_grad: Callable, tx: optax.GradientTransformation, grad_accum: int = 1,
                    schedule: optax.Schedule | None = None):
    """loss_and_grad(params, frozen, batch, rng) -> (loss, aux dict, grads).

    Returns step(state, frozen, batch) -> (state, metrics).  Gradients are averaged over `grad_accum`
    microbatches.  A non-finite loss or gradient skips the update (params and optimizer state unchanged)
    and counts it in state["skipped"]; metrics["finite"] tells the host loop.
    """
    def step(state, frozen, batch):
        key = jax.random.wrap_key_data(state["rng"])
        key, sub = jax.random.split(key)
        params = state["params"]
        if grad_accum == 1:
            loss, aux, grads = loss_and_grad(params, frozen, batch, sub)
        else:
            micro = _split_micro(batch, grad_accum)

            def body(carry, mb_and_key):
                mb, k = mb_and_key
                loss, aux, g = loss_and_grad(params, frozen, mb, k)
                acc_loss, acc_aux, acc_g = carry
                return (acc_loss + loss, jax.tree.map(jnp.add, acc_aux, aux), jax.tree.map(jnp.add, acc_g, g)), None

            l0, a0, g0 = jax.eval_shape(lambda: loss_and_grad(params, frozen, jax.tree.map(lambda x: x[0], micro),
                                                              sub))
            zeros = lambda t: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), t)  # noqa: E731
            (loss, aux, grads), _ = jax.lax.scan(body, (zeros(l0), zeros(a0), zeros(g0)),
                                                 (micro, jax.random.split(sub, grad_accum)))
            loss = loss / grad_accum
            aux = jax.tree.map(lambda a: a / grad_accum, aux)
            grads = jax.tree.map(lambda g: g / grad_accum, grads)
        gnorm = optax.global_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(gnorm)
        updates, new_opt = tx.update(grads, state["opt_state"], params)
        new_params = optax.apply_updates(params, updates)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa: E731
        new_state = {"params": keep(new_params, params), "opt_state": keep(new_opt, state["opt_state"]),
                     "step": state["step"] + 1, "rng": jax.random.key_data(key),
                     "skipped": state["skipped"] + (~finite).astype(jnp.int32)}
        metrics = {"loss": loss, "grad_norm": gnorm, "finite": finite, **aux}
        if schedule is not None:
            metrics["lr"] = schedule(state["step"])
        return new_state, metrics

    return step
