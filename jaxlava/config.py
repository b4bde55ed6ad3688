"""Model configuration: the LLaVA architecture (vision tower, projector, LLaMA decoder).

The field names follow transformers' CLIPVisionConfig / LlamaConfig / LlavaConfig so that
`from_hf_dict` and `to_hf_dict` are thin.  Runtime choices (dtypes, remat, scanned layers)
live in the same object but are never written to config.json.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

import jax.numpy as jnp

ACTIVATIONS = ("quick_gelu", "gelu", "gelu_pytorch_tanh", "gelu_new", "silu", "relu")


def _hash_by_value(self) -> int:
    return hash(json.dumps(dataclasses.asdict(self), sort_keys=True, default=str))


@dataclass
class VisionConfig:
    """CLIP vision tower (HF `CLIPVisionConfig` field names); defaults: ViT-L/14 at 336 px."""
    hidden_size: int = 1024  # width of the tower
    intermediate_size: int = 4096  # MLP width
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    image_size: int = 336  # input side in pixels
    patch_size: int = 14  # one image token per patch: (image_size / patch_size)² tokens
    num_channels: int = 3
    layer_norm_eps: float = 1e-5
    hidden_act: str = "quick_gelu"
    projection_dim: int = 768  # unused by LLaVA; kept for a faithful config.json

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclass
class TextConfig:
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    # transformers' `rope_parameters` minus rope_theta, e.g. {"rope_type": "llama3", "factor": 8.0, ...}
    rope_scaling: dict[str, Any] | None = None
    max_position_embeddings: int = 4096
    hidden_act: str = "silu"
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    bos_token_id: int = 1
    eos_token_id: int = 2
    pad_token_id: int | None = 0

    def __post_init__(self):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}")


@dataclass
class LlavaConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    image_token_index: int = 32000
    projector_type: str = "mlp2x_gelu"  # "linear" (original LLaVA-RLHF) or "mlp2x_gelu" (llava-hf)
    projector_hidden_act: str = "gelu"
    projector_bias: bool = True
    vision_feature_layer: int | list[int] = -2
    vision_feature_select_strategy: str = "default"  # "default" drops CLS, "full" keeps it
    # runtime (not serialised to config.json)
    param_dtype: str = "float32"
    dtype: str = "float32"  # compute dtype
    remat: bool = False
    scan_layers: bool = False

    def __post_init__(self):
        if isinstance(self.vision, dict):
            self.vision = VisionConfig(**self.vision)
        if isinstance(self.text, dict):
            self.text = TextConfig(**self.text)
        if self.projector_type not in ("linear", "mlp2x_gelu"):
            raise ValueError(f"projector_type must be 'linear' or 'mlp2x_gelu', got {self.projector_type!r}")
        if self.vision_feature_select_strategy not in ("default", "full"):
            raise ValueError("vision_feature_select_strategy must be 'default' or 'full', "
                             f"got {self.vision_feature_select_strategy!r}")

    # -- derived ---------------------------------------------------------------------------
    @property
    def feature_layers(self) -> list[int]:
        fl = self.vision_feature_layer
        return list(fl) if isinstance(fl, (list, tuple)) else [fl]

    @property
    def num_image_tokens(self) -> int:
        """Placeholder tokens per image (what the processor expands `<image>` into)."""
        n = self.vision.num_patches
        return n + 1 if self.vision_feature_select_strategy == "full" else n

    @property
    def vision_feature_dim(self) -> int:
        return self.vision.hidden_size * len(self.feature_layers)

    @property
    def jnp_param_dtype(self):
        return jnp.dtype(self.param_dtype)

    @property
    def jnp_dtype(self):
        return jnp.dtype(self.dtype)

    def replace(self, **kw) -> "LlavaConfig":
        return dataclasses.replace(self, **kw)

    # -- HF config.json --------------------------------------------------------------------
    @classmethod
    def from_hf_dict(cls, d: dict, **runtime) -> "LlavaConfig":
        """Build from a llava-hf `config.json` dict (model_type == 'llava')."""
        vd = dict(d.get("vision_config") or {})
        td = dict(d.get("text_config") or {})
        vision = VisionConfig(**{k: vd[k] for k in _fields(VisionConfig) if k in vd})
        rope = dict(td.get("rope_parameters") or {})
        theta = rope.pop("rope_theta", td.get("rope_theta", 10000.0))
        if not rope and td.get("rope_scaling"):
            rope = dict(td["rope_scaling"])
        if rope.get("rope_type", rope.get("type", "default")) == "default":
            rope = None
        elif "rope_type" not in rope:
            rope["rope_type"] = rope.pop("type")
        tkw = {k: td[k] for k in _fields(TextConfig) if k in td and k not in ("rope_scaling", "rope_theta")}
        text = TextConfig(rope_theta=float(theta), rope_scaling=rope, **tkw)
        if "tie_word_embeddings" in d and "tie_word_embeddings" not in td:
            text.tie_word_embeddings = bool(d["tie_word_embeddings"])
        return cls(
            vision=vision, text=text,
            image_token_index=d.get("image_token_index", d.get("image_token_id", 32000)),
            projector_type=d.get("projector_type", "mlp2x_gelu"),
            projector_hidden_act=d.get("projector_hidden_act", "gelu"),
            projector_bias=d.get("multimodal_projector_bias", True),
            vision_feature_layer=d.get("vision_feature_layer", -2),
            vision_feature_select_strategy=d.get("vision_feature_select_strategy", "default"),
            **runtime,
        )

    def to_hf_dict(self) -> dict:
        v, t = self.vision, self.text
        rope = {"rope_theta": t.rope_theta, "rope_type": "default"}
        if t.rope_scaling:
            rope.update(t.rope_scaling)
        text = {k: getattr(t, k) for k in _fields(TextConfig) if k not in ("rope_scaling", "rope_theta")}
        text.update(model_type="llama", rope_parameters=rope)
        vision = {k: getattr(v, k) for k in _fields(VisionConfig)}
        vision.update(model_type="clip_vision_model")
        out = {
            "model_type": "llava",
            "architectures": ["LlavaForConditionalGeneration"],
            "vision_config": vision,
            "text_config": text,
            "image_token_index": self.image_token_index,
            "projector_hidden_act": self.projector_hidden_act,
            "multimodal_projector_bias": self.projector_bias,
            "vision_feature_layer": self.vision_feature_layer,
            "vision_feature_select_strategy": self.vision_feature_select_strategy,
            "image_seq_length": self.num_image_tokens,
            "tie_word_embeddings": t.tie_word_embeddings,
        }
        return out


# Configs are static jit arguments (inside nnx GraphDefs), so they hash by value.
VisionConfig.__hash__ = TextConfig.__hash__ = LlavaConfig.__hash__ = _hash_by_value


def _fields(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]
