"""CLIP vision transformer, computed as transformers' CLIPVisionModel does."""
from __future__ import annotations

import einops
import jax
import jax.numpy as jnp
from flax import nnx

from jaxlava.config import LlavaConfig
from jaxlava.model.layers import activation, layer_norm, param, run_stack, values
from jaxlava.sharding import constrain


class VisionLayers(nnx.Module):
    """Pre-LN transformer blocks, parameters stacked on the leading `layers` axis."""

    def __init__(self, cfg: LlavaConfig, rngs: nnx.Rngs):
        v, pd = cfg.vision, cfg.jnp_param_dtype
        L, D, F, H, Dh = v.num_hidden_layers, v.hidden_size, v.intermediate_size, v.num_attention_heads, v.head_dim
        lay = "layers"
        self.ln1_scale = param(rngs, (L, D), (lay, "norm"), pd, "ones")
        self.ln1_bias = param(rngs, (L, D), (lay, "norm"), pd, "zeros")
        self.ln2_scale = param(rngs, (L, D), (lay, "norm"), pd, "ones")
        self.ln2_bias = param(rngs, (L, D), (lay, "norm"), pd, "zeros")
        for n in ("q", "k", "v"):
            setattr(self, f"{n}_kernel", param(rngs, (L, D, H, Dh), (lay, "vis_embed", "vis_heads", "head_dim"), pd))
            setattr(self, f"{n}_bias", param(rngs, (L, H, Dh), (lay, "vis_heads", "head_dim"), pd, "zeros"))
        self.o_kernel = param(rngs, (L, H, Dh, D), (lay, "vis_heads", "head_dim", "vis_embed"), pd)
        self.o_bias = param(rngs, (L, D), (lay, "norm"), pd, "zeros")
        self.fc1_kernel = param(rngs, (L, D, F), (lay, "vis_embed", "vis_mlp"), pd)
        self.fc1_bias = param(rngs, (L, F), (lay, "vis_mlp"), pd, "zeros")
        self.fc2_kernel = param(rngs, (L, F, D), (lay, "vis_mlp", "vis_embed"), pd)
        self.fc2_bias = param(rngs, (L, D), (lay, "norm"), pd, "zeros")


def _vision_block(p: dict, x: jax.Array, *, eps: float, act, dtype) -> jax.Array:
    c = lambda a: a.astype(dtype)  # noqa: E731
    h = layer_norm(x, p["ln1_scale"], p["ln1_bias"], eps)
    q = jnp.einsum("bnd,dhk->bnhk", h, c(p["q_kernel"])) + c(p["q_bias"])
    k = jnp.einsum("bnd,dhk->bnhk", h, c(p["k_kernel"])) + c(p["k_bias"])
    v = jnp.einsum("bnd,dhk->bnhk", h, c(p["v_kernel"])) + c(p["v_bias"])
    scores = jnp.einsum("bqhk,bshk->bhqs", q, k).astype(jnp.float32) * (q.shape[-1] ** -0.5)
    probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
    attn = jnp.einsum("bhqs,bshk->bqhk", probs, v)
    x = x + jnp.einsum("bqhk,hkd->bqd", attn, c(p["o_kernel"])) + c(p["o_bias"])
    h = layer_norm(x, p["ln2_scale"], p["ln2_bias"], eps)
    h = act(h @ c(p["fc1_kernel"]) + c(p["fc1_bias"]))
    x = x + h @ c(p["fc2_kernel"]) + c(p["fc2_bias"])
    return constrain(x, ("batch", "seq", "vis_embed"))


class VisionTower(nnx.Module):
    def __init__(self, cfg: LlavaConfig, rngs: nnx.Rngs):
        v, pd = cfg.vision, cfg.jnp_param_dtype
        self.cfg = cfg
        P, C, D = v.patch_size, v.num_channels, v.hidden_size
        self.patch_kernel = param(rngs, (P, P, C, D), ("vis_patch", "vis_patch", "vis_channels", "vis_embed"), pd)
        self.class_embedding = param(rngs, (D,), ("vis_embed",), pd)
        self.position_embedding = param(rngs, (v.num_patches + 1, D), ("vis_pos", "vis_embed"), pd)
        self.pre_ln_scale = param(rngs, (D,), ("norm",), pd, "ones")
        self.pre_ln_bias = param(rngs, (D,), ("norm",), pd, "zeros")
        self.post_ln_scale = param(rngs, (D,), ("norm",), pd, "ones")  # unused by LLaVA features; kept for HF
        self.post_ln_bias = param(rngs, (D,), ("norm",), pd, "zeros")
        self.layers = VisionLayers(cfg, rngs)

    def hidden_states(self, pixel_values: jax.Array, upto: int) -> list[jax.Array]:
        """HF `hidden_states[0..upto]`: index 0 is the pre-LN embedding output, i the output of block i."""
        v, dtype = self.cfg.vision, self.cfg.jnp_dtype
        if pixel_values.ndim != 4 or pixel_values.shape[1] != v.num_channels:
            raise ValueError(f"pixel_values must be [B,{v.num_channels},H,W], got {pixel_values.shape}")
        if pixel_values.shape[2] != v.image_size or pixel_values.shape[3] != v.image_size:
            raise ValueError(f"pixel_values are {pixel_values.shape[2]}x{pixel_values.shape[3]}, "
                             f"the vision tower expects {v.image_size}x{v.image_size}")
        P = v.patch_size
        patches = einops.rearrange(pixel_values.astype(dtype), "b c (h p) (w q) -> b (h w) (p q c)", p=P, q=P)
        kernel = self.patch_kernel[...].astype(dtype).reshape(P * P * v.num_channels, v.hidden_size)
        x = patches @ kernel
        cls = jnp.broadcast_to(self.class_embedding[...].astype(dtype), (x.shape[0], 1, v.hidden_size))
        x = jnp.concatenate([cls, x], axis=1) + self.position_embedding[...].astype(dtype)[None]
        x = layer_norm(x, self.pre_ln_scale[...], self.pre_ln_bias[...], v.layer_norm_eps)
        x = constrain(x, ("batch", "seq", "vis_embed"))
        stacked = jax.tree.map(lambda a: a[:upto], values(self.layers))
        act = activation(v.hidden_act)

        def body(h, p):
            h = _vision_block(p, h, eps=v.layer_norm_eps, act=act, dtype=dtype)
            return h, h

        _, ys = run_stack(body, x, stacked, num_layers=upto, scan=self.cfg.scan_layers, remat=self.cfg.remat)
        return [x] + ([ys[i] for i in range(upto)] if upto else [])

    def features(self, pixel_values: jax.Array) -> jax.Array:
        """LLaVA image features: selected layer(s), CLS dropped for the `default` strategy, concatenated."""
        L = self.cfg.vision.num_hidden_layers
        idx = []
        for layer in self.cfg.feature_layers:
            i = layer + L + 1 if layer < 0 else layer
            if not 0 <= i <= L:
                raise ValueError(f"vision_feature_layer {layer} is out of range for {L} layers")
            idx.append(i)
        hs = self.hidden_states(pixel_values, max(idx))
        feats = [hs[i] for i in idx]
        if self.cfg.vision_feature_select_strategy == "default":
            feats = [f[:, 1:] for f in feats]
        return jnp.concatenate(feats, axis=-1) if len(feats) > 1 else feats[0]
