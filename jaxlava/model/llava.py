"""LLaVA: vision tower -> projector -> image features spliced into the LLaMA token embeddings."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlava.config import LlavaConfig
from jaxlava.model.clip import VisionTower
from jaxlava.model.layers import Lora, activation, param
from jaxlava.model.llama import LanguageModel, positions_from_mask
from jaxlava.sharding import constrain


class Projector(nnx.Module):
    """`linear` (original LLaVA / LLaVA-RLHF) or `mlp2x_gelu` (llava-hf, LLaVA-1.5)."""

    def __init__(self, cfg: LlavaConfig, rngs: nnx.Rngs):
        pd, din, d = cfg.jnp_param_dtype, cfg.vision_feature_dim, cfg.text.hidden_size
        self.cfg = cfg
        self.linear_1_kernel = param(rngs, (din, d), ("proj_in", "embed"), pd)
        if cfg.projector_bias:
            self.linear_1_bias = param(rngs, (d,), ("norm",), pd, "zeros")
        if cfg.projector_type == "mlp2x_gelu":
            self.linear_2_kernel = param(rngs, (d, d), ("proj_in", "embed"), pd)
            if cfg.projector_bias:
                self.linear_2_bias = param(rngs, (d,), ("norm",), pd, "zeros")

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = self.cfg.jnp_dtype
        x = x @ self.linear_1_kernel[...].astype(dtype)
        if self.cfg.projector_bias:
            x = x + self.linear_1_bias[...].astype(dtype)
        if self.cfg.projector_type == "mlp2x_gelu":
            x = activation(self.cfg.projector_hidden_act)(x) @ self.linear_2_kernel[...].astype(dtype)
            if self.cfg.projector_bias:
                x = x + self.linear_2_bias[...].astype(dtype)
        return x


def _held_rows(input_ids) -> list[tuple[int, np.ndarray]]:
    """(first row, rows) blocks of the ids this process holds whole: all of a host or fully addressable array; of
    a global array spanning other processes (a multi-process batch), its distinct addressable shards that hold
    whole rows (the other processes check the rest)."""
    if not isinstance(input_ids, jax.Array) or input_ids.is_fully_addressable:
        return [(0, np.asarray(input_ids))]
    width = input_ids.shape[-1]
    blocks = {}
    for shard in input_ids.addressable_shards:
        last = shard.index[-1]
        if (last.start or 0) == 0 and last.stop in (None, width):
            blocks.setdefault(shard.index[0].start or 0, shard.data)
    return [(start, np.asarray(data)) for start, data in sorted(blocks.items())]


def check_image_tokens(input_ids, config: LlavaConfig) -> None:
    """Host-side check: each row holds 0 or exactly `num_image_tokens` placeholders (on several processes, each
    checks its own rows)."""
    n = config.num_image_tokens
    for first, ids in _held_rows(input_ids):
        counts = (ids == config.image_token_index).sum(axis=-1)
        for row, c in enumerate(counts.reshape(-1), start=first):
            if c not in (0, n):
                raise ValueError(f"row {row} holds {int(c)} image placeholder tokens (id {config.image_token_index}) "
                                 f"but an image gives {n} features")


def merge_image_features(tok_embeds, input_ids, features, image_token_index: int):
    """Put features[b, k] at the k-th placeholder of row b (static shapes; rows without placeholders unchanged)."""
    is_img = input_ids == image_token_index
    idx = jnp.clip(jnp.cumsum(is_img, axis=1) - 1, 0, features.shape[1] - 1)
    gathered = jnp.take_along_axis(features, idx[..., None], axis=1)
    return jnp.where(is_img[..., None], gathered.astype(tok_embeds.dtype), tok_embeds)


class LlavaModel(nnx.Module):
    def __init__(self, config: LlavaConfig, *, rngs: nnx.Rngs | None = None):
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        self.config = config
        self.vision_tower = VisionTower(config, rngs)
        self.projector = Projector(config, rngs)
        self.language_model = LanguageModel(config, rngs)

    def encode_images(self, pixel_values: jax.Array) -> jax.Array:
        """[B,3,H,W] -> projected image features [B, num_image_tokens, D]. The vision tower gets no gradient."""
        feats = jax.lax.stop_gradient(self.vision_tower.features(pixel_values))
        return constrain(self.projector(feats), ("batch", "seq", "embed"))

    def embed(self, input_ids: jax.Array, pixel_values: jax.Array | None) -> jax.Array:
        if not isinstance(input_ids, jax.core.Tracer):
            check_image_tokens(input_ids, self.config)
        x = self.language_model.embed(input_ids)
        if pixel_values is None:
            return x
        if pixel_values.shape[0] != input_ids.shape[0]:
            raise ValueError(f"pixel_values has {pixel_values.shape[0]} rows but input_ids has "
                             f"{input_ids.shape[0]} (one image slot per row; zeros for rows without an image)")
        feats = self.encode_images(pixel_values)
        return merge_image_features(x, input_ids, feats, self.config.image_token_index)

    def lm_logits(self, hidden: jax.Array) -> jax.Array:
        return self.language_model.logits(hidden)

    def __call__(self, input_ids, pixel_values=None, attention_mask=None, *, lora: Lora | None = None,
                 return_hidden: bool = False, positions=None):
        if attention_mask is None:
            attention_mask = jnp.ones(input_ids.shape, jnp.int32)
        if positions is None:
            positions = positions_from_mask(attention_mask)
        x = self.embed(input_ids, pixel_values)
        hidden, _ = self.language_model(x, positions, attention_mask, lora=lora)
        logits = self.lm_logits(hidden)
        return (logits, hidden) if return_hidden else logits
