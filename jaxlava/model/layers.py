"""Shared primitives: parameters with logical axes, norms, activations, LoRA, layer stacks.

Compute here is written as pure functions of arrays; the NNX modules in this package only
hold parameters.  That keeps one parameter layout (layers stacked on a leading axis) for
both the scanned and the unrolled execution of a layer stack.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

Array = jax.Array


def param(rngs: nnx.Rngs | None, shape, axes, dtype, init: str = "normal", std: float = 0.02) -> nnx.Param:
    """An nnx.Param carrying logical axis names in its `axes` metadata."""
    if len(shape) != len(axes):
        raise ValueError(f"shape {shape} and axes {axes} differ in rank")
    if init == "zeros":
        value = jnp.zeros(shape, dtype)
    elif init == "ones":
        value = jnp.ones(shape, dtype)
    elif init == "normal":
        value = (std * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)
    else:
        raise ValueError(f"unknown init {init!r}")
    return nnx.Param(value, axes=tuple(axes))


def _quick_gelu(x):
    return x * jax.nn.sigmoid(1.702 * x)


ACT: dict[str, Callable[[Array], Array]] = {
    "quick_gelu": _quick_gelu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "relu": jax.nn.relu,
    "linear": lambda x: x,
}


def activation(name: str) -> Callable[[Array], Array]:
    try:
        return ACT[name]
    except KeyError:
        raise ValueError(f"unsupported activation {name!r}; known: {sorted(ACT)}") from None


def layer_norm(x: Array, scale: Array, bias: Array, eps: float) -> Array:
    dtype = x.dtype
    x = x.astype(jnp.float32)
    mean = x.mean(-1, keepdims=True)
    var = jnp.square(x - mean).mean(-1, keepdims=True)
    y = (x - mean) * jax.lax.rsqrt(var + eps)
    return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(dtype)


def rms_norm(x: Array, weight: Array, eps: float) -> Array:
    """LLaMA RMSNorm as transformers computes it (normalise in fp32, cast back, then scale)."""
    dtype = x.dtype
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.mean(jnp.square(xf), -1, keepdims=True) + eps)
    return weight.astype(dtype) * y.astype(dtype)


# ---------------------------------------------------------------------------------------------
# LoRA: an adapter is a pytree separate from the base weights.
# ---------------------------------------------------------------------------------------------
@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Lora:
    """Adapter weights plus their (static) scale and dropout.

    params: {"q_proj": {"a": [L, in, r], "b": [L, r, out]}, ...}; rng is only needed when dropout > 0.
    """
    params: dict
    rng: Any = None
    scale: float = dataclasses.field(default=1.0, metadata=dict(static=True))
    dropout: float = dataclasses.field(default=0.0, metadata=dict(static=True))


def lora_delta(x: Array, ab: dict | None, scale: float, dropout: float, rng) -> Array | None:
    """x: [..., in] -> [..., out] low-rank update, or None when there is no adapter for this projection."""
    if ab is None:
        return None
    if dropout > 0.0 and rng is not None:
        keep = jax.random.bernoulli(rng, 1.0 - dropout, x.shape)
        x = jnp.where(keep, x / (1.0 - dropout), 0).astype(x.dtype)
    a = ab["a"].astype(x.dtype)
    b = ab["b"].astype(x.dtype)
    return (x @ a) @ b * jnp.asarray(scale, x.dtype)


# ---------------------------------------------------------------------------------------------
# Running a stack of layers whose parameters are stacked on axis 0.
# ---------------------------------------------------------------------------------------------
def run_stack(body: Callable, carry, xs, *, num_layers: int, scan: bool, remat: bool):
    """Apply `body(carry, x_l) -> (carry, y_l)` over the leading axis of `xs`.

    scan=True uses `lax.scan` (one compiled layer); scan=False unrolls a Python loop over
    slices (faster steps, longer compiles).  remat wraps the body in jax.checkpoint.
    """
    if remat:
        body = jax.checkpoint(body, prevent_cse=not scan,
                              policy=jax.checkpoint_policies.nothing_saveable)
    if scan:
        return jax.lax.scan(body, carry, xs, length=num_layers)
    ys = []
    for i in range(num_layers):
        carry, y = body(carry, jax.tree.map(lambda a: a[i], xs))
        ys.append(y)
    if ys and ys[0] is not None:
        ys = jax.tree.map(lambda *a: jnp.stack(a), *ys)
    else:
        ys = None
    return carry, ys


def values(module: nnx.Module) -> dict:
    """The raw arrays of a parameter-holder module, keyed by attribute name."""
    out = {}
    for name, v in vars(module).items():
        if isinstance(v, nnx.Variable):
            out[name] = v[...]
    return out

