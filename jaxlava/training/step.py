"""The generic jitted train step: gradient accumulation, AdamW update, NaN/inf guard.

Contract (docs/design.md, "The fit contract"):
- `TrainState` holds what trains (full weights in SFT; adapters and heads when the base is frozen), the
  optimizer state, the optimizer-step counter, an RNG key and the count of skipped (non-finite) steps.
- A step is `step(state, frozen, batch) -> (TrainState, StepOutput)`.  `make_train_step` builds the usual one
  from a `loss_and_grad(params, frozen, batch, rng) -> (loss, aux, grads)`; PPO builds its own out of jitted
  pieces (a rollout, then several epochs of updates) with the same signature.
- Both are pytrees; `state["params"]` / `out["loss"]` item access reads a field, for callers that treat them as
  mappings.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import struct


class _Fields:
    def __getitem__(self, name: str):
        try:
            return getattr(self, name)
        except AttributeError:
            raise KeyError(name) from None


@struct.dataclass
class TrainState(_Fields):
    params: Any  # the trainable pytree
    opt_state: Any
    step: jax.Array  # optimizer steps taken (int32 scalar)
    rng: jax.Array  # raw key data (uint32), so checkpoints hold plain arrays
    skipped: jax.Array  # steps whose update was skipped for a non-finite loss or gradient


@struct.dataclass
class StepOutput(_Fields):
    loss: jax.Array
    finite: jax.Array  # False: the update was skipped (the loop counts these and stops after too many in a row)
    metrics: dict = struct.field(default_factory=dict)  # everything else to log (scalars)

    def row(self) -> dict:
        """The metrics row the loop logs: loss first, then the stage's own metrics."""
        return {"loss": self.loss, **self.metrics}


def init_state(trainable, tx: optax.GradientTransformation, seed: int = 0) -> TrainState:
    return TrainState(params=trainable, opt_state=tx.init(trainable), step=jnp.zeros((), jnp.int32),
                      rng=jax.random.key_data(jax.random.key(seed)), skipped=jnp.zeros((), jnp.int32))


def split_microbatches(batch, n: int):
    """[B, ...] leaves -> [n, B/n, ...] (scalars pass through)."""
    def one(x):
        if not hasattr(x, "shape") or x.ndim == 0:
            return x
        if x.shape[0] % n:
            raise ValueError(f"batch of {x.shape[0]} rows does not split into {n} microbatches")
        return x.reshape(n, x.shape[0] // n, *x.shape[1:])
    return jax.tree.map(one, batch)


def accumulate(loss_and_grad: Callable, params, frozen, batch, rng, grad_accum: int):
    """Mean (loss, aux, grads) over `grad_accum` microbatches of `batch`, scanned (one microbatch live)."""
    if grad_accum == 1:
        return loss_and_grad(params, frozen, batch, rng)
    micro = split_microbatches(batch, grad_accum)

    def body(carry, mb_and_key):
        mb, k = mb_and_key
        out = loss_and_grad(params, frozen, mb, k)
        return jax.tree.map(jnp.add, carry, out), None

    shapes = jax.eval_shape(lambda: loss_and_grad(params, frozen, jax.tree.map(lambda x: x[0], micro), rng))
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    total, _ = jax.lax.scan(body, zeros, (micro, jax.random.split(rng, grad_accum)))
    return jax.tree.map(lambda a: a / grad_accum, total)


def apply_update(state: TrainState, grads, loss, tx: optax.GradientTransformation, rng):
    """One optimizer update guarded against non-finite values: (new state, gradient norm, finite)."""
    gnorm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(gnorm)
    updates, new_opt = tx.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa: E731
    new_state = state.replace(params=keep(new_params, state.params), opt_state=keep(new_opt, state.opt_state),
                              step=state.step + 1, rng=jax.random.key_data(rng),
                              skipped=state.skipped + (~finite).astype(jnp.int32))
    return new_state, gnorm, finite


def make_train_step(loss_and_grad: Callable, tx: optax.GradientTransformation, grad_accum: int = 1,
                    schedule: optax.Schedule | None = None):
    """loss_and_grad(params, frozen, batch, rng) -> (loss, aux dict, grads).

    Returns step(state, frozen, batch) -> (TrainState, StepOutput).  Gradients are averaged over `grad_accum`
    microbatches.  A non-finite loss or gradient skips the update (params and optimizer state unchanged) and
    counts it in `state.skipped`; `StepOutput.finite` tells the host loop.
    """
    def step(state: TrainState, frozen, batch):
        key, sub = jax.random.split(jax.random.wrap_key_data(state.rng))
        loss, aux, grads = accumulate(loss_and_grad, state.params, frozen, batch, sub, grad_accum)
        new_state, gnorm, finite = apply_update(state, grads, loss, tx, key)
        metrics = {"grad_norm": gnorm, **aux}
        if schedule is not None:
            metrics["lr"] = schedule(state.step)
        return new_state, StepOutput(loss=loss, finite=finite, metrics=metrics)

    return step
