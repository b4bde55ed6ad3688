"""LLaMA / Vicuna decoder: RMSNorm, RoPE (default, linear, llama3), GQA, SwiGLU, KV cache, LoRA."""
from __future__ import annotations

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


def _decoder_block(p, lora_p, x, positions, kv_mask, cache_k, cache_v, cache_index, *, t: TextConfig,
                   inv_freq, dtype, lora: Lora | None, rng):
    B, T, _ = x.shape
    H, KV, Dh = t.num_attention_heads, t.num_key_value_heads, t.head_dim
    rngs = list(jax.random.split(rng, 7)) if rng is not None else [None] * 7
    h = rms_norm(x, p["input_norm"], t.rms_norm_eps)
    q = _proj(h, p, "q", "btd,dhk->bthk", lora, lora_p, rngs[0], dtype)
    k = _proj(h, p, "k", "btd,dhk->bthk", lora, lora_p, rngs[1], dtype)
    v = _proj(h, p, "v", "btd,dhk->bthk", lora, lora_p, rngs[2], dtype)
    q = apply_rope(q, positions, inv_freq)
    k = apply_rope(k, positions, inv_freq)
    if cache_k is not None:
        cache_k = jax.lax.dynamic_update_slice(cache_k, k.astype(cache_k.dtype), (0, cache_index, 0, 0))
        cache_v = jax.lax.dynamic_update_slice(cache_v, v.astype(cache_v.dtype), (0, cache_index, 0, 0))
        k_all, v_all = cache_k.astype(dtype), cache_v.astype(dtype)
    else:
        k_all, v_all = k, v
    S = k_all.shape[1]
    q = q.reshape(B, T, KV, H // KV, Dh)
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k_all).astype(jnp.float32) * (Dh ** -0.5)
    slot = jnp.arange(S)[None, :]
    query_slot = cache_index + jnp.arange(T)[:, None]
    allowed = (slot <= query_slot)[None] & kv_mask.astype(bool)[:, None, :]  # [B,T,S]
    scores = jnp.where(allowed[:, None, None], scores, MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
    attn = jnp.einsum("bkgts,bskd->btkgd", probs, v_all).reshape(B, T, H, Dh)
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

    def init_cache(self, batch: int, max_len: int, dtype=None) -> dict:
        t = self.cfg.text
        shape = (t.num_hidden_layers, batch, max_len, t.num_key_value_heads, t.head_dim)
        dtype = dtype or self.cfg.jnp_dtype
        return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}

    def __call__(self, embeds, positions, kv_mask, *, cache=None, cache_index=0, lora: Lora | None = None):
        """embeds [B,T,D]; kv_mask [B,S] (S = T without a cache). Returns (final-normed hidden, new cache)."""
        cfg, t = self.cfg, self.cfg.text
        inv_freq = rope_inv_freq(t)
        layer_p = values(self.layers)
        lora_p = lora.params if lora is not None else {}
        L = t.num_hidden_layers
        rng = lora.rng if (lora is not None and lora.dropout > 0) else None
        xs = {"p": layer_p, "lora": lora_p,
              "rng": jax.random.split(rng, L) if rng is not None else None,
              "k": cache["k"] if cache is not None else None,
              "v": cache["v"] if cache is not None else None}

        def body(x, s):
            x, ck, cv = _decoder_block(s["p"], s["lora"], x, positions, kv_mask, s["k"], s["v"], cache_index,
                                       t=t, inv_freq=inv_freq, dtype=cfg.jnp_dtype, lora=lora, rng=s["rng"])
            return x, ({"k": ck, "v": cv} if ck is not None else None)

        x, new_cache = run_stack(body, embeds, xs, num_layers=L, scan=cfg.scan_layers, remat=cfg.remat)
        return rms_norm(x, self.norm[...], t.rms_norm_eps), new_cache

    def logits(self, hidden: jax.Array) -> jax.Array:
        dtype = self.cfg.jnp_dtype
        if self.cfg.text.tie_word_embeddings:
            w = self.embed_tokens[...].astype(dtype).T
        else:
            w = self.lm_head[...].astype(dtype)
        out = constrain(hidden @ w, ("batch", "seq", "vocab"))
        return out.astype(jnp.float32)
