"""LoRA adapters over a frozen base, as a separate pytree (design.md, "LoRA contract").

    params = {"q_proj": {"a": [L, in, r], "b": [L, r, out]}, ...}

`in`/`out` are the flat torch Linear dims (q out = heads * head_dim); layers are stacked on axis 0.
The model applies `dropout(x) @ a @ b * scale` with scale = alpha / r.  Initialisation follows PEFT:
a ~ kaiming_uniform(a=sqrt(5)) of torch's [r, in] weight, i.e. U(-1/sqrt(in), 1/sqrt(in)); b = 0,
so a fresh adapter leaves the model unchanged.

Several roles share one base in memory: a role is (base model, adapter pytree, head).  The base is
never copied; each call passes its adapter: `model(..., lora=make_lora(policy_params, cfg))`,
`model(..., lora=make_lora(value_params, cfg))`, `model(...)` for the reference.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlava.config import LlavaConfig
from jaxlava.model import Lora

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# projection name -> (kernel attribute of DecoderLayers, logical name of the flat in dim, of the flat out dim)
KERNELS = {"q_proj": ("q_kernel", "embed", "heads"), "k_proj": ("k_kernel", "embed", "kv_heads"),
           "v_proj": ("v_kernel", "embed", "kv_heads"), "o_proj": ("o_kernel", "heads", "embed"),
           "gate_proj": ("gate_kernel", "embed", "mlp"), "up_proj": ("up_kernel", "embed", "mlp"),
           "down_proj": ("down_kernel", "mlp", "embed")}


@dataclasses.dataclass
class LoraConfig:
    r: int = 64
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = TARGETS

    def __post_init__(self):
        self.targets = tuple(self.targets)
        unknown = [t for t in self.targets if t not in KERNELS]
        if unknown:
            raise ValueError(f"LoRA targets {unknown} are not decoder projections; choose from {list(TARGETS)}")
        if self.r < 1:
            raise ValueError(f"LoRA rank r must be >= 1, got {self.r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}")

    @property
    def scale(self) -> float:
        return self.alpha / self.r


def lora_dims(config: LlavaConfig, targets=TARGETS) -> dict[str, tuple[int, int]]:
    """{target: (in, out)} flat torch Linear dims of each decoder projection."""
    t = config.text
    q, kv = t.num_attention_heads * t.head_dim, t.num_key_value_heads * t.head_dim
    D, F = t.hidden_size, t.intermediate_size
    dims = {"q_proj": (D, q), "k_proj": (D, kv), "v_proj": (D, kv), "o_proj": (q, D),
            "gate_proj": (D, F), "up_proj": (D, F), "down_proj": (F, D)}
    return {k: dims[k] for k in targets}


def init_lora(rng, config: LlavaConfig, lora_cfg: LoraConfig, dtype=jnp.float32) -> dict:
    """A fresh adapter: a ~ U(-1/sqrt(in), 1/sqrt(in)) (PEFT's kaiming_uniform(a=sqrt(5))), b = 0."""
    L = config.text.num_hidden_layers
    dims = lora_dims(config, lora_cfg.targets)
    keys = jax.random.split(rng, len(dims))
    out = {}
    for k, (name, (din, dout)) in zip(keys, dims.items()):
        bound = 1.0 / math.sqrt(din)
        out[name] = {"a": jax.random.uniform(k, (L, din, lora_cfg.r), jnp.float32, -bound, bound).astype(dtype),
                     "b": jnp.zeros((L, lora_cfg.r, dout), dtype)}
    return out


def make_lora(params: dict, lora_cfg: LoraConfig, rng=None) -> Lora:
    """The model-call wrapper. Dropout applies only when `rng` is given (training)."""
    return Lora(params, rng=rng, scale=lora_cfg.scale, dropout=lora_cfg.dropout if rng is not None else 0.0)


def check_lora(params: dict, config: LlavaConfig) -> int:
    """Validate an adapter's names and shapes against the model config; returns its rank."""
    dims = lora_dims(config)
    L, ranks = config.text.num_hidden_layers, set()
    for name, ab in params.items():
        if name not in dims:
            raise ValueError(f"adapter has an unknown projection {name!r}; known: {list(dims)}")
        din, dout = dims[name]
        a, b = ab["a"], ab["b"]
        r = a.shape[-1]
        if tuple(a.shape) != (L, din, r) or tuple(b.shape) != (L, r, dout):
            raise ValueError(f"adapter {name}: a {tuple(a.shape)}, b {tuple(b.shape)} do not fit the model "
                             f"(expected a [{L}, {din}, r], b [{L}, r, {dout}])")
        ranks.add(r)
    if len(ranks) > 1:
        raise ValueError(f"adapter projections have different ranks {sorted(ranks)}")
    return ranks.pop() if ranks else 0


def lora_delta_kernels(params: dict, scale: float, config: LlavaConfig) -> dict:
    """{kernel attribute: a @ b * scale reshaped to the kernel's layout} (float32).

    q/k/v kernels are [L, embed, heads, head_dim] and o is [L, heads, head_dim, embed]: the flat
    heads*head_dim dim of the adapter is heads-major, as in the model's forward pass.
    """
    t = config.text
    H, KV, Dh, D = t.num_attention_heads, t.num_key_value_heads, t.head_dim, t.hidden_size
    shapes = {"q_kernel": (D, H, Dh), "k_kernel": (D, KV, Dh), "v_kernel": (D, KV, Dh), "o_kernel": (H, Dh, D)}
    out = {}
    for name, ab in params.items():
        kernel = KERNELS[name][0]
        d = jnp.einsum("lir,lro->lio", ab["a"].astype(jnp.float32), ab["b"].astype(jnp.float32)) * scale
        out[kernel] = d.reshape(d.shape[0], *shapes[kernel]) if kernel in shapes else d
    return out


def merge_lora(model: nnx.Module, params: dict, scale: float) -> nnx.Module:
    """A NEW model whose decoder kernels are W + a @ b * scale (for export); `model` is left unchanged.

    Only the merged kernels are new arrays; every other parameter is shared with `model`.
    """
    check_lora(params, model.config)
    graphdef, state = nnx.split(model)
    flat = dict(nnx.to_flat_state(state))
    for kernel, d in lora_delta_kernels(params, scale, model.config).items():
        path = ("language_model", "layers", kernel)
        var = flat[path]
        w = var.get_value()
        flat[path] = var.replace(value=(w.astype(jnp.float32) + d).astype(w.dtype))
    new = nnx.merge(graphdef, nnx.from_flat_state(flat))
    if hasattr(model, "source_path"):
        new.source_path = model.source_path
    return new


def lora_axes(params: dict) -> dict:
    """Logical axis names of each adapter leaf (for jaxlava.sharding.logical_to_spec)."""
    return {name: {"a": ("layers", KERNELS[name][1], "lora_rank"), "b": ("layers", "lora_rank", KERNELS[name][2])}
            for name in params}


def lora_shardings(params: dict, mesh):
    """NamedShardings for an adapter pytree on `mesh` through the rule table (rank replicated)."""
    from jax.sharding import NamedSharding

    from jaxlava.sharding import logical_to_spec
    axes = lora_axes(params)
    return {n: {k: NamedSharding(mesh, logical_to_spec(axes[n][k], params[n][k].shape, mesh)) for k in ("a", "b")}
            for n in params}
