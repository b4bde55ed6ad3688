"""Optimiser and learning-rate schedules (AdamW with global-norm clipping; HF-style warmup + cosine/constant).

The jitted step that uses them is in `jaxlava.training.step`.
"""
from __future__ import annotations

import dataclasses
from typing import Literal

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


def make_optimizer(cfg: OptimConfig, total_steps: int, updates_per_step: int = 1,
                   clip_groups: dict[str, str] | None = None) -> optax.GradientTransformation:
    """Clip by global norm, then AdamW on the schedule.  `updates_per_step` > 1 steps the schedule once per run
    step rather than once per update (PPO: several minibatch updates per PPO step, spec §4.9).

    `clip_groups` maps each top-level key of the parameter dict to a group name; each group's gradient is then
    clipped to `max_grad_norm` by its own norm (None: one norm over everything)."""
    schedule = make_schedule(cfg, total_steps)
    if updates_per_step > 1:
        schedule = per_run_step(schedule, updates_per_step)
    return optax.chain(gradient_clip(cfg.max_grad_norm, clip_groups),
                       optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay))


def gradient_clip(max_norm: float, clip_groups: dict[str, str] | None = None) -> optax.GradientTransformation:
    """Scale the gradient down to `max_norm` when its global norm is larger: one norm over the whole tree, or with
    `clip_groups` (top-level key -> group name) one norm per group."""
    if clip_groups is None:
        return optax.clip_by_global_norm(max_norm)
    per_group = {g: optax.clip_by_global_norm(max_norm) for g in set(clip_groups.values())}
    return optax.multi_transform(per_group, lambda params: {k: jax.tree.map(lambda _: clip_groups[k], v)
                                                            for k, v in params.items()})


def per_run_step(schedule: optax.Schedule, updates_per_step: int) -> optax.Schedule:
    """The schedule as a function of the update count, advancing once every `updates_per_step` updates."""
    return lambda count: schedule(count // updates_per_step)
