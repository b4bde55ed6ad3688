"""Scalar heads read from the decoder's last hidden states (reward model and PPO value model)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def init_scalar_head(rng, hidden_size: int, *, zero: bool = False) -> dict:
    """{"w": [D], "b": []}. The reward head uses torch Linear's default init (bias 0); the value head is all zeros."""
    if zero:
        return {"w": jnp.zeros((hidden_size,), jnp.float32), "b": jnp.zeros((), jnp.float32)}
    bound = 1.0 / np.sqrt(hidden_size)
    w = jax.random.uniform(rng, (hidden_size,), jnp.float32, -bound, bound)
    return {"w": w, "b": jnp.zeros((), jnp.float32)}


def apply_scalar_head(head: dict, hidden: jax.Array) -> jax.Array:
    """hidden [..., D] -> [...] in float32."""
    return hidden.astype(jnp.float32) @ head["w"].astype(jnp.float32) + head["b"].astype(jnp.float32)
