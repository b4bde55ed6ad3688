"""LLaMA / Vicuna decoder: RMSNorm, RoPE (default, linear, llama3), GQA, SwiGLU, KV cache, LoRA."""
from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlava.config import LlavaConfig, TextConfig
from jaxlava.model.layers import Lora, activation, lora_delta, param, rms_norm, run_stack, values
from jaxlava.sharding import constrain

MASK_VALUE = float(jnp.finfo(jnp.float32).min)


def positions_from_mask(mask: jax.Array) -> jax.Array:
    """Position ids from the attention mask: padded rows (left or right) give identical positions on real tokens."""
    return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)


def rope_inv_freq(t: TextConfig) -> jnp.ndarray:
    dim = t.head_dim
    inv = 1.0 / (t.rope_theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))
    rs = t.rope_scaling or {}
    kind = rs.get("rope_type", "default")
    if kind == "default":
        return inv
    if kind == "linear":
        return inv / rs["factor"]
    if kind == "llama3":
        factor, lo, hi = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
        old = rs["original_max_position_embeddings"]
        lo_wavelen, hi_wavelen = old / lo, old / hi
        wavelen = 2 * math.pi / inv
        scaled = jnp.where(wavelen > lo_wavelen, inv / factor, inv)
        smooth = (old / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= hi_wavelen) & (wavelen <= lo_wavelen)
        return jnp.where(medium, smoothed, scaled)
    raise NotImplementedError(f"rope_type {kind!r} is not implemented (supported: default, linear, llama3)")


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
    """x: [B,T,H,Dh]; rotate-half convention of transformers' LLaMA."""
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq  # [B,T,Dh/2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    cos, sin = jnp.cos(emb).astype(x.dtype)[:, :, None], jnp.sin(emb).astype(x.dtype)[:, :, None]
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


class DecoderLayers(nnx.Module):
    def __init__(self, cfg: LlavaConfig, rngs: nnx.Rngs):
        t, pd = cfg.text, cfg.jnp_param_dtype
        L, D, F = t.num_hidden_layers, t.hidden_size, t.intermediate_size
        H, KV, Dh = t.num_attention_heads, t.num_key_value_heads, t.head_dim
        lay = "layers"
        self.input_norm = param(rngs, (L, D), (lay, "norm"), pd, "ones")
        self.post_attn_norm = param(rngs, (L, D), (lay, "norm"), pd, "ones")
        self.q_kernel = param(rngs, (L, D, H, Dh), (lay, "embed", "heads", "head_dim"), pd)
        self.k_kernel = param(rngs, (L, D, KV, Dh), (lay, "embed", "kv_heads", "head_dim"), pd)
        self.v_kernel = param(rngs, (L, D, KV, Dh), (lay, "embed", "kv_heads", "head_dim"), pd)
        self.o_kernel = param(rngs, (L, H, Dh, D), (lay, "heads", "head_dim", "embed"), pd)
        if t.attention_bias:
            self.q_bias = param(rngs, (L, H, Dh), (lay, "heads", "head_dim"), pd, "zeros")
            self.k_bias = param(rngs, (L, KV, Dh), (lay, "kv_heads", "head_dim"), pd, "zeros")
            self.v_bias = param(rngs, (L, KV, Dh), (lay, "kv_heads", "head_dim"), pd, "zeros")
            self.o_bias = param(rngs, (L, D), (lay, "norm"), pd, "zeros")
        self.gate_kernel = param(rngs, (L, D, F), (lay, "embed", "mlp"), pd)
        self.up_kernel = param(rngs, (L, D, F), (lay, "embed", "mlp"), pd)
        self.down_kernel = param(rngs, (L, F, D), (lay, "mlp", "embed"), pd)
        if t.mlp_bias:
            self.gate_bias = param(rngs, (L, F), (lay, "mlp"), pd, "zeros")
            self.up_bias = param(rngs, (L, F), (lay, "mlp"), pd, "zeros")
            self.down_bias = param(rngs, (L, D), (lay, "norm"), pd, "zeros")


def _proj(x, name, kernel_eq, *, p, lora, lora_p, rng, dtype):
    """Projection `name` with optional bias and optional LoRA delta."""
    y = jnp.einsum(kernel_eq, x, p[f"{name}_kernel"].astype(dtype))
    if f"{name}_bias" in p:
        y = y + p[f"{name}_bias"].astype(dtype)
    if lora is not None:
        flat_in = x.reshape(*x.shape[:2], -1)
        d = lora_delta(flat_in, lora_p.get(f"{name}_proj"), lora.scale, lora.dropout, rng)
        if d is not None:
            y = y + d.reshape(y.shape)
    return y


class KVCache(NamedTuple):
    """The decoder's KV cache.  `k`, `v`: stacked arrays [L,B,KV,S,Dh] (what the scanned stack carries), or tuples
    of L arrays [B,KV,S,Dh] (`per_layer`: the unrolled stack updates and reads each layer's buffer in place, no
    slice copies; what `jaxlava.generate` uses).  Both layouts give the same numbers."""
    k: Any
    v: Any

    @property
    def per_layer(self) -> bool:
        return isinstance(self.k, tuple)


class LayerContext(NamedTuple):
    """What every layer of one decoder call shares."""
    t: TextConfig
    positions: jax.Array  # [B,T]
    kv_mask: jax.Array  # [B,S]
    cache_index: Any  # first cache slot written by this call (int or traced scalar)
    inv_freq: jax.Array
    dtype: Any
    lora: Lora | None


class LayerWeights(NamedTuple):
    """One layer's parameter slices, its adapter slices and its dropout key (None without dropout)."""
    p: dict
    lora: dict
    rng: jax.Array | None


def _write_kv(cache, new, layer, cache_index):
    """Write new [B,KV,T,Dh] at slot cache_index of one layer's cache [B,KV,S,Dh] (layer None) or of the
    stacked cache [L,B,KV,S,Dh] (layer: python int or traced index).  Returns (cache, this layer's view)."""
    new = new.astype(cache.dtype)
    if layer is None:
        cache = jax.lax.dynamic_update_slice(cache, new, (0, 0, cache_index, 0))
        return cache, cache
    cache = jax.lax.dynamic_update_slice(cache, new[None], (layer, 0, 0, cache_index, 0))
    if isinstance(layer, int):
        return cache, cache[layer]
    return cache, jax.lax.dynamic_index_in_dim(cache, layer, 0, keepdims=False)


def _attention(ctx: LayerContext, q, k_all, v_all):
    """q [B,T,H,Dh] over keys/values [B,KV,S,Dh] (GQA), causal from `cache_index` and masked by `kv_mask`."""
    t = ctx.t
    B, T = q.shape[:2]
    H, KV, Dh = t.num_attention_heads, t.num_key_value_heads, t.head_dim
    S = k_all.shape[2]
    q = q.reshape(B, T, KV, H // KV, Dh).transpose(0, 2, 3, 1, 4)  # [B,KV,G,T,Dh]
    scores = jnp.einsum("bkgtd,bksd->bkgts", q, k_all).astype(jnp.float32) * (Dh ** -0.5)
    slot = jnp.arange(S)[None, :]
    query_slot = ctx.cache_index + jnp.arange(T)[:, None]
    allowed = (slot <= query_slot)[None] & ctx.kv_mask.astype(bool)[:, None, :]  # [B,T,S]
    scores = jnp.where(allowed[:, None, None], scores, MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(ctx.dtype)
    attn = jnp.einsum("bkgts,bksd->btkgd", probs, v_all).reshape(B, T, H, Dh)
    return constrain(attn, ("batch", "seq", "heads", "head_dim"))


def _decoder_block(ctx: LayerContext, w: LayerWeights, x, cache_k, cache_v, layer):
    """One decoder layer.  cache_k/v: None, one layer's cache [B,KV,S,Dh] (layer None), or the stacked cache
    [L,B,KV,S,Dh] (layer: its index); the keys/values of this call are written at slots cache_index.. and
    attended over.  Returns (x, cache_k, cache_v)."""
    t, dtype = ctx.t, ctx.dtype
    rngs = list(jax.random.split(w.rng, 7)) if w.rng is not None else [None] * 7
    proj = functools.partial(_proj, p=w.p, lora=ctx.lora, lora_p=w.lora, dtype=dtype)
    h = rms_norm(x, w.p["input_norm"], t.rms_norm_eps)
    q = apply_rope(proj(h, "q", "btd,dhk->bthk", rng=rngs[0]), ctx.positions, ctx.inv_freq)
    k = apply_rope(proj(h, "k", "btd,dhk->bthk", rng=rngs[1]), ctx.positions, ctx.inv_freq)
    k = k.transpose(0, 2, 1, 3)  # [B,KV,T,Dh]: the cache layout
    v = proj(h, "v", "btd,dhk->bthk", rng=rngs[2]).transpose(0, 2, 1, 3)
    if cache_k is not None:
        cache_k, k = _write_kv(cache_k, k, layer, ctx.cache_index)
        cache_v, v = _write_kv(cache_v, v, layer, ctx.cache_index)
        k, v = k.astype(dtype), v.astype(dtype)
    x = x + proj(_attention(ctx, q, k, v), "o", "bthk,hkd->btd", rng=rngs[3])
    h = rms_norm(x, w.p["post_attn_norm"], t.rms_norm_eps)
    g = proj(h, "gate", "btd,df->btf", rng=rngs[4])
    u = proj(h, "up", "btd,df->btf", rng=rngs[5])
    m = constrain(activation(t.hidden_act)(g) * u, ("batch", "seq", "mlp"))
    x = x + proj(m, "down", "btf,fd->btd", rng=rngs[6])
    return constrain(x, ("batch", "seq", "embed")), cache_k, cache_v


class LanguageModel(nnx.Module):
    def __init__(self, cfg: LlavaConfig, rngs: nnx.Rngs):
        t, pd = cfg.text, cfg.jnp_param_dtype
        self.cfg = cfg
        self.embed_tokens = param(rngs, (t.vocab_size, t.hidden_size), ("vocab", "embed"), pd)
        self.layers = DecoderLayers(cfg, rngs)
        self.norm = param(rngs, (t.hidden_size,), ("norm",), pd, "ones")
        if not t.tie_word_embeddings:
            self.lm_head = param(rngs, (t.hidden_size, t.vocab_size), ("embed", "vocab"), pd)

    def embed(self, input_ids: jax.Array) -> jax.Array:
        ids = jnp.clip(input_ids, 0, self.cfg.text.vocab_size - 1)
        x = jnp.take(self.embed_tokens[...], ids, axis=0).astype(self.cfg.jnp_dtype)
        return constrain(x, ("batch", "seq", "embed"))

    def init_cache(self, batch: int, max_len: int, dtype=None, *, per_layer: bool = False) -> KVCache:
        """A zero `KVCache` of `max_len` slots: stacked, or per layer (see `KVCache`)."""
        t = self.cfg.text
        shape = (batch, t.num_key_value_heads, max_len, t.head_dim)
        dtype = dtype or self.cfg.jnp_dtype
        if per_layer:
            return KVCache(*(tuple(jnp.zeros(shape, dtype) for _ in range(t.num_hidden_layers)) for _ in "kv"))
        return KVCache(*(jnp.zeros((t.num_hidden_layers, *shape), dtype) for _ in "kv"))

    def split_layers(self, lora: Lora | None = None) -> list[LayerWeights]:
        """Per-layer parameter slices for `__call__(layers=...)` (dropout keys are added per call).

        A caller that runs many steps (the sampler's while loop) slices once outside its loop, so
        XLA does not copy every layer's weights out of the stacked arrays at each step."""
        layer_p = values(self.layers)
        lora_p = lora.params if lora is not None else {}
        return [LayerWeights(jax.tree.map(lambda a, i=i: a[i], layer_p), jax.tree.map(lambda a, i=i: a[i], lora_p),
                             None) for i in range(self.cfg.text.num_hidden_layers)]

    def __call__(self, embeds, positions, kv_mask, *, cache: KVCache | None = None, cache_index=0,
                 lora: Lora | None = None, layers: list[LayerWeights] | None = None):
        """embeds [B,T,D]; kv_mask [B,S] (S = T without a cache). Returns (final-normed hidden, new cache).

        The stack runs scanned (`scan_layers`, a stacked or no cache, no `layers`) or unrolled (otherwise);
        layers: optional `split_layers(lora)` output for the unrolled stack."""
        cfg, t = self.cfg, self.cfg.text
        ctx = LayerContext(t, positions, kv_mask, cache_index, rope_inv_freq(t), cfg.jnp_dtype, lora)
        rng = lora.rng if (lora is not None and lora.dropout > 0) else None
        rngs = jax.random.split(rng, t.num_hidden_layers) if rng is not None else None
        scanned = cfg.scan_layers and layers is None and (cache is None or not cache.per_layer)
        if scanned:
            x, cache = self._run_scanned(ctx, embeds, cache, rngs)
        else:
            x, cache = self._run_unrolled(ctx, embeds, cache, rngs, layers)
        return rms_norm(x, self.norm[...], t.rms_norm_eps), cache

    def _run_scanned(self, ctx: LayerContext, x, cache: KVCache | None, rngs):
        """`lax.scan` over the stacked layers; a stacked cache rides in the carry, each layer updating its slice."""
        L = self.cfg.text.num_hidden_layers
        xs = (LayerWeights(values(self.layers), ctx.lora.params if ctx.lora is not None else {}, rngs),
              jnp.arange(L, dtype=jnp.int32))

        def body(carry, w_and_layer):
            w, layer = w_and_layer
            return _decoder_block(ctx, w, *carry, layer), None

        carry = (x, *(cache if cache is not None else (None, None)))
        (x, ck, cv), _ = run_stack(body, carry, xs, num_layers=L, scan=True, remat=self.cfg.remat)
        return x, (KVCache(ck, cv) if cache is not None else None)

    def _run_unrolled(self, ctx: LayerContext, x, cache: KVCache | None, rngs, layers):
        """A Python loop over per-layer slices (longer compiles, no slicing inside a step)."""
        layers = layers if layers is not None else self.split_layers(ctx.lora)
        per_layer = cache is not None and cache.per_layer
        ck = list(cache.k) if per_layer else (cache.k if cache is not None else None)
        cv = list(cache.v) if per_layer else (cache.v if cache is not None else None)
        for i, w in enumerate(layers):
            w = w._replace(rng=rngs[i] if rngs is not None else None)
            step = functools.partial(_decoder_block, ctx, w, layer=None if per_layer else i)
            if self.cfg.remat:
                step = jax.checkpoint(step, prevent_cse=True, policy=jax.checkpoint_policies.nothing_saveable)
            if per_layer:
                x, ck[i], cv[i] = step(x, ck[i], cv[i])
            else:
                x, ck, cv = step(x, ck, cv)
        if cache is None:
            return x, None
        return x, (KVCache(tuple(ck), tuple(cv)) if per_layer else KVCache(ck, cv))

    def logits(self, hidden: jax.Array) -> jax.Array:
        dtype = self.cfg.jnp_dtype
        if self.cfg.text.tie_word_embeddings:
            w = self.embed_tokens[...].astype(dtype).T
        else:
            w = self.lm_head[...].astype(dtype)
        out = constrain(hidden @ w, ("batch", "seq", "vocab"))
        return out.astype(jnp.float32)
