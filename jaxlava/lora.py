"""LoRA adapters over a frozen base, as a separate pytree (design.md, "LoRA contract").

    params = {"q_proj": {"a": [L, in, r], "b": [L, r, out]}, ...}

`in`/`out` are the flat torch Linear dims (q out = heads * head_dim, o in = heads * head_dim); layers are
stacked on axis 0.  The model applies `dropout(x) @ a @ b * scale` with scale = alpha / r.  Initialisation
follows PEFT: a ~ kaiming_uniform(a=sqrt(5)) of torch's [r, in] lora_A weight, i.e. U(-1/sqrt(in), 1/sqrt(in));
b = 0, so a fresh adapter leaves the model unchanged.

Several roles share one base in memory: a role is (base model, adapter pytree, head).  Nothing in this
module copies the base except `merge_lora` (which builds an independent model for export): each call passes
its adapter, e.g. `model(..., lora=make_lora(policy, cfg))`, `model(..., lora=make_lora(value, cfg))`, and
`model(...)` (no adapter) for the base.
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
# projection -> (kernel attribute in model.language_model.layers, logical axis of the flat in dim, of the out dim)
KERNELS = {"q_proj": ("q_kernel", "embed", "heads"), "k_proj": ("k_kernel", "embed", "kv_heads"),
           "v_proj": ("v_kernel", "embed", "kv_heads"), "o_proj": ("o_kernel", "heads", "embed"),
           "gate_proj": ("gate_kernel", "embed", "mlp"), "up_proj": ("up_kernel", "embed", "mlp"),
           "down_proj": ("down_kernel", "mlp", "embed")}


@dataclasses.dataclass
class LoraConfig:
    """LLaVA-RLHF defaults (spec §3.1): r=64, alpha=16 (scale 0.25), dropout 0, all seven decoder projections."""
    r: int = 64
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = TARGETS

    def __post_init__(self):
        self.targets = tuple(self.targets)
        unknown = [t for t in self.targets if t not in KERNELS]
        if unknown:
            raise ValueError(f"LoRA targets {unknown} are not decoder projections; choose from {list(TARGETS)}")
        if not self.targets:
            raise ValueError("LoRA needs at least one target projection")
        if int(self.r) != self.r or self.r < 1:
            raise ValueError(f"LoRA rank r must be an integer >= 1, got {self.r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}")

    @property
    def scale(self) -> float:
        return self.alpha / self.r


def lora_dims(config: LlavaConfig, targets=TARGETS) -> dict[str, tuple[int, int]]:
    """{target: (in, out)}: the flat torch Linear dims of each decoder projection."""
    t = config.text
    q, kv = t.num_attention_heads * t.head_dim, t.num_key_value_heads * t.head_dim
    D, F = t.hidden_size, t.intermediate_size
    dims = {"q_proj": (D, q), "k_proj": (D, kv), "v_proj": (D, kv), "o_proj": (q, D),
            "gate_proj": (D, F), "up_proj": (D, F), "down_proj": (F, D)}
    return {k: dims[k] for k in targets}


def lora_param_count(config: LlavaConfig, lora_cfg: LoraConfig) -> int:
    """Number of adapter parameters (without allocating them)."""
    L = config.text.num_hidden_layers
    return sum(L * lora_cfg.r * (din + dout) for din, dout in lora_dims(config, lora_cfg.targets).values())


def init_lora(config: LlavaConfig, lora_cfg: LoraConfig, rng, dtype=jnp.float32) -> dict:
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
    """The model-call wrapper.  Dropout applies only when `rng` is given (training)."""
    return Lora(params, rng=rng, scale=lora_cfg.scale, dropout=lora_cfg.dropout if rng is not None else 0.0)


def check_lora(params: dict, config: LlavaConfig) -> int:
    """Validate an adapter's names and shapes against the model config; returns its rank."""
    dims = lora_dims(config)
    L, ranks = config.text.num_hidden_layers, set()
    for name, ab in params.items():
        if name not in dims:
            raise ValueError(f"adapter has an unknown projection {name!r}; known: {list(dims)}")
        if set(ab) != {"a", "b"}:
            raise ValueError(f"adapter {name}: expected keys a and b, found {sorted(ab)}")
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
    """{kernel attribute: a @ b * scale in the stacked kernel's layout} (float32).

    q/k/v kernels are [L, embed, heads, head_dim] and o is [L, heads, head_dim, embed]: the flat
    heads*head_dim dim of the adapter is heads-major, as in torch's q_proj/o_proj.
    """
    t = config.text
    H, KV, Dh, D = t.num_attention_heads, t.num_key_value_heads, t.head_dim, t.hidden_size
    shapes = {"q_kernel": (D, H, Dh), "k_kernel": (D, KV, Dh), "v_kernel": (D, KV, Dh), "o_kernel": (H, Dh, D)}
    out = {}
    for name, ab in params.items():
        kernel = KERNELS[name][0]
        d = jnp.einsum("lir,lro->lio", jnp.asarray(ab["a"], jnp.float32), jnp.asarray(ab["b"], jnp.float32),
                       precision=jax.lax.Precision.HIGHEST) * scale
        out[kernel] = d.reshape(d.shape[0], *shapes[kernel]) if kernel in shapes else d
    return out


def merge_lora(model: nnx.Module, params: dict, lora_cfg: LoraConfig) -> nnx.Module:
    """A NEW model whose decoder kernels are W + a @ b * scale (for export); `model` is not modified.

    This is the one place that copies the base: every parameter of the result is a fresh array in a fresh
    nnx.Variable, so updating, donating or deleting the merged model never touches `model` (peak memory is
    two full models).  Sum in float32, stored in the kernel's dtype.
    """
    check_lora(params, model.config)
    graphdef, state = nnx.split(model)
    flat = dict(nnx.to_flat_state(state))
    deltas = lora_delta_kernels(params, lora_cfg.scale, model.config)
    for path, var in flat.items():
        w = var.get_value()
        kernel = path[-1] if path[:2] == ("language_model", "layers") else None
        if kernel in deltas:
            new = (w.astype(jnp.float32) + deltas[kernel]).astype(w.dtype)
        else:
            new = jnp.copy(w) if isinstance(w, jax.Array) else w
        flat[path] = var.replace(value=new)
    missing = {k for k in deltas if ("language_model", "layers", k) not in flat}
    if missing:
        raise ValueError(f"model has no decoder kernels {sorted(missing)} under language_model.layers")
    merged = nnx.merge(graphdef, nnx.from_flat_state(flat))
    if hasattr(model, "source_path"):
        merged.source_path = model.source_path
    return merged


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
