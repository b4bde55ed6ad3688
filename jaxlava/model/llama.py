"""LLaMA / Vicuna decoder: RMSNorm, RoPE (default, linear, llama3), GQA, SwiGLU, KV cache, LoRA."""
from __future__ import annotations

import functools
import math

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


def _proj(x, p, name, kernel_eq, lora, lora_p, rng, dtype, out_shape=None):
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


def _decoder_block(p, lora_p, x, positions, kv_mask, cache_k, cache_v, cache_index, layer, *, t: TextConfig,
                   inv_freq, dtype, lora: Lora | None, rng):
    """One decoder layer.  cache_k/v: None, one layer's cache [B,KV,S,Dh] (layer None), or the stacked cache
    [L,B,KV,S,Dh]; the keys/values of this call are written in place at slots cache_index.. and attended over."""
    B, T, _ = x.shape
    H, KV, Dh = t.num_attention_heads, t.num_key_value_heads, t.head_dim
    rngs = list(jax.random.split(rng, 7)) if rng is not None else [None] * 7
    h = rms_norm(x, p["input_norm"], t.rms_norm_eps)
    q = _proj(h, p, "q", "btd,dhk->bthk", lora, lora_p, rngs[0], dtype)
    k = _proj(h, p, "k", "btd,dhk->bthk", lora, lora_p, rngs[1], dtype)
    v = _proj(h, p, "v", "btd,dhk->bthk", lora, lora_p, rngs[2], dtype)
    q = apply_rope(q, positions, inv_freq)
    k = apply_rope(k, positions, inv_freq).transpose(0, 2, 1, 3)  # [B,KV,T,Dh]: the cache layout
    v = v.transpose(0, 2, 1, 3)
    if cache_k is not None:
        cache_k, k_all = _write_kv(cache_k, k, layer, cache_index)
        cache_v, v_all = _write_kv(cache_v, v, layer, cache_index)
        k_all, v_all = k_all.astype(dtype), v_all.astype(dtype)
    else:
        k_all, v_all = k, v
    S = k_all.shape[2]
    q = q.reshape(B, T, KV, H // KV, Dh).transpose(0, 2, 3, 1, 4)  # [B,KV,G,T,Dh]
    scores = jnp.einsum("bkgtd,bksd->bkgts", q, k_all).astype(jnp.float32) * (Dh ** -0.5)
    slot = jnp.arange(S)[None, :]
    query_slot = cache_index + jnp.arange(T)[:, None]
    allowed = (slot <= query_slot)[None] & kv_mask.astype(bool)[:, None, :]  # [B,T,S]
    scores = jnp.where(allowed[:, None, None], scores, MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
    attn = jnp.einsum("bkgts,bksd->btkgd", probs, v_all).reshape(B, T, H, Dh)
    attn = constrain(attn, ("batch", "seq", "heads", "head_dim"))
    x = x + _proj(attn, p, "o", "bthk,hkd->btd", lora, lora_p, rngs[3], dtype)
    h = rms_norm(x, p["post_attn_norm"], t.rms_norm_eps)
    act = activation(t.hidden_act)
    g = _proj(h, p, "gate", "btd,df->btf", lora, lora_p, rngs[4], dtype)
    u = _proj(h, p, "up", "btd,df->btf", lora, lora_p, rngs[5], dtype)
    m = constrain(act(g) * u, ("batch", "seq", "mlp"))
    x = x + _proj(m, p, "down", "btf,fd->btd", lora, lora_p, rngs[6], dtype)
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

    def init_cache(self, batch: int, max_len: int, dtype=None, *, per_layer: bool = False) -> dict:
        """Zero KV cache {"k", "v"}: stacked [L,B,KV,S,Dh], or (per_layer) lists of L arrays [B,KV,S,Dh].

        The per-layer layout lets an unrolled decode step update and read each layer's buffer in place
        (no slice copies); both layouts give the same numbers."""
        t = self.cfg.text
        shape = (batch, t.num_key_value_heads, max_len, t.head_dim)
        dtype = dtype or self.cfg.jnp_dtype
        if per_layer:
            return {n: [jnp.zeros(shape, dtype) for _ in range(t.num_hidden_layers)] for n in ("k", "v")}
        return {n: jnp.zeros((t.num_hidden_layers, *shape), dtype) for n in ("k", "v")}

    def split_layers(self, lora: Lora | None = None) -> list[dict]:
        """Per-layer parameter slices [{"p": ..., "lora": ...}] for `__call__(layers=...)`.

        A caller that runs many steps (the sampler's while loop) slices once outside its loop, so
        XLA does not copy every layer's weights out of the stacked arrays at each step."""
        layer_p = values(self.layers)
        lora_p = lora.params if lora is not None else {}
        return [{"p": jax.tree.map(lambda a, i=i: a[i], layer_p), "lora": jax.tree.map(lambda a, i=i: a[i], lora_p)}
                for i in range(self.cfg.text.num_hidden_layers)]

    def __call__(self, embeds, positions, kv_mask, *, cache=None, cache_index=0, lora: Lora | None = None,
                 layers: list[dict] | None = None):
        """embeds [B,T,D]; kv_mask [B,S] (S = T without a cache). Returns (final-normed hidden, new cache).

        layers: optional `split_layers(lora)` output; the stack then runs unrolled over those slices."""
        cfg, t = self.cfg, self.cfg.text
        inv_freq = rope_inv_freq(t)
        L = t.num_hidden_layers
        rng = lora.rng if (lora is not None and lora.dropout > 0) else None
        rngs = jax.random.split(rng, L) if rng is not None else None
        per_layer = cache is not None and isinstance(cache["k"], (list, tuple))

        def block(x, ck, cv, s, layer):
            return _decoder_block(s["p"], s["lora"], x, positions, kv_mask, ck, cv, cache_index, layer, t=t,
                                  inv_freq=inv_freq, dtype=cfg.jnp_dtype, lora=lora, rng=s["rng"])

        if cfg.scan_layers and layers is None and not per_layer:
            # the whole stacked cache rides in the carry and each layer updates its slice in place
            xs = {"p": values(self.layers), "lora": lora.params if lora is not None else {}, "rng": rngs,
                  "layer": jnp.arange(L, dtype=jnp.int32)}
            carry = (embeds, *((cache["k"], cache["v"]) if cache is not None else (None, None)))

            def body(c, s):
                return block(*c, s, s["layer"]), None

            (x, ck, cv), _ = run_stack(body, carry, xs, num_layers=L, scan=True, remat=cfg.remat)
            new_cache = {"k": ck, "v": cv} if cache is not None else None
            return rms_norm(x, self.norm[...], t.rms_norm_eps), new_cache
        layers = layers if layers is not None else self.split_layers(lora)
        x = embeds
        ck = list(cache["k"]) if per_layer else (cache["k"] if cache is not None else None)
        cv = list(cache["v"]) if per_layer else (cache["v"] if cache is not None else None)
        for i in range(L):
            s = dict(layers[i], rng=rngs[i] if rngs is not None else None)
            step = functools.partial(block, layer=None if per_layer else i)
            if cfg.remat:
                step = jax.checkpoint(step, prevent_cse=True, policy=jax.checkpoint_policies.nothing_saveable)
            if per_layer:
                x, ck[i], cv[i] = step(x, ck[i], cv[i], s)
            else:
                x, ck, cv = step(x, ck, cv, s)
        new_cache = {"k": ck, "v": cv} if cache is not None else None
        return rms_norm(x, self.norm[...], t.rms_norm_eps), new_cache

    def logits(self, hidden: jax.Array) -> jax.Array:
        dtype = self.cfg.jnp_dtype
        if self.cfg.text.tie_word_embeddings:
            w = self.embed_tokens[...].astype(dtype).T
        else:
            w = self.lm_head[...].astype(dtype)
        out = constrain(hidden @ w, ("batch", "seq", "vocab"))
        return out.astype(jnp.float32)
