"""Model presets: named `LlavaConfig` factories.

- `llava-7b-224`: Vicuna-7B v1.5 + CLIP ViT-L/14 at 224 px, linear projector (the LLaVA-RLHF 7B model).
- `llava-13b-336`: Vicuna-13B v1.5 + CLIP ViT-L/14 at 336 px, linear projector (the LLaVA-RLHF 13B model).
- `tiny`: a few-kilobyte model for tests.
- `shapes`: the small model trained on the embedded shapes world (`shapes_config(vocab, image_token_index)`
  fits the vocabulary of the world's tokenizer).

`MODEL_PRESETS` maps each name to its factory; `get_preset(name, **overrides)` returns a fresh config, where
overrides are LlavaConfig fields (runtime ones such as `param_dtype`, `remat`, `scan_layers` included).
"""
from __future__ import annotations

from typing import Callable

from jaxlava.config import LlavaConfig, TextConfig, VisionConfig


def _clip_l14(image_size: int) -> VisionConfig:
    return VisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                        image_size=image_size, patch_size=14, layer_norm_eps=1e-5, hidden_act="quick_gelu",
                        projection_dim=768)


def _vicuna(hidden: int, layers: int, heads: int, inter: int) -> TextConfig:
    return TextConfig(vocab_size=32000, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=heads, rms_norm_eps=1e-5,
                      max_position_embeddings=4096, hidden_act="silu", tie_word_embeddings=False,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0)


def _llava_rlhf(vision: VisionConfig, text: TextConfig) -> LlavaConfig:
    return LlavaConfig(vision=vision, text=text, image_token_index=32000, projector_type="linear",
                       vision_feature_layer=-2, vision_feature_select_strategy="default")


def llava_7b_224() -> LlavaConfig:
    return _llava_rlhf(_clip_l14(224), _vicuna(4096, 32, 32, 11008))


def llava_13b_336() -> LlavaConfig:
    return _llava_rlhf(_clip_l14(336), _vicuna(5120, 40, 40, 13824))


def tiny() -> LlavaConfig:
    """2+2 layers, hidden 32/64, vocab 128, 32 px images in 8 px patches (16 image tokens); ids 120 = <image>."""
    vision = VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                          image_size=32, patch_size=8, projection_dim=16)
    text = TextConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return LlavaConfig(vision=vision, text=text, image_token_index=120, projector_type="mlp2x_gelu",
                       vision_feature_layer=-2, vision_feature_select_strategy="default")


def shapes_config(vocab_size: int = 2048, image_token_index: int | None = None, patch_size: int = 8) -> LlavaConfig:
    """The shapes-world model: CLIP 2 x 64 at 64 px / patch 8 (64 image tokens; a grid world's cell size sets the
    patch instead), LLaMA 4 x 128 (4 heads, 2 KV heads, MLP 256), mlp2x_gelu projector.  `image_token_index`
    defaults to the last id of the vocabulary."""
    if image_token_index is None:
        image_token_index = vocab_size - 1
    if not 0 <= image_token_index < vocab_size:
        raise ValueError(f"shapes_config: image_token_index {image_token_index} is outside the vocabulary "
                         f"of {vocab_size} ids")
    vision = VisionConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                          image_size=64, patch_size=patch_size, projection_dim=64)
    text = TextConfig(vocab_size=vocab_size, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
    return LlavaConfig(vision=vision, text=text, image_token_index=image_token_index, projector_type="mlp2x_gelu",
                       projector_hidden_act="gelu", vision_feature_layer=-2,
                       vision_feature_select_strategy="default")


MODEL_PRESETS: dict[str, Callable[[], LlavaConfig]] = {
    "llava-7b-224": llava_7b_224,
    "llava-13b-336": llava_13b_336,
    "tiny": tiny,
    "shapes": shapes_config,
}


def get_preset(name: str, **overrides) -> LlavaConfig:
    """A fresh LlavaConfig of preset `name`, with LlavaConfig field overrides."""
    try:
        factory = MODEL_PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model preset {name!r}; presets are: {', '.join(MODEL_PRESETS)}") from None
    cfg = factory()
    return cfg.replace(**overrides) if overrides else cfg
