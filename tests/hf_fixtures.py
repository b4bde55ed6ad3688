"""Tiny random transformers LLaVA models (torch), the reference for parity tests."""
from __future__ import annotations

import numpy as np
import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

IMAGE_TOKEN = 120


def tiny_hf_config(*, gqa=False, layer=-2, strategy="default", tied=False, rope=None, act="gelu",
                   vocab=128, image_size=32, patch=8, bias=True, text_layers=2, vision_layers=3):
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=vision_layers,
                              num_attention_heads=4, image_size=image_size, patch_size=patch,
                              hidden_act="quick_gelu", projection_dim=16)
    rope_parameters = {"rope_theta": 10000.0, "rope_type": "default"}
    if rope:
        rope_parameters.update(rope)
    text = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=text_layers,
                       num_attention_heads=4, num_key_value_heads=2 if gqa else 4, max_position_embeddings=256,
                       rms_norm_eps=1e-5, tie_word_embeddings=tied, rope_parameters=rope_parameters,
                       pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return LlavaConfig(vision_config=vision, text_config=text, image_token_index=IMAGE_TOKEN,
                       projector_hidden_act=act, vision_feature_layer=layer,
                       vision_feature_select_strategy=strategy, multimodal_projector_bias=bias,
                       tie_word_embeddings=tied)


def tiny_hf_model(seed=0, **kw) -> LlavaForConditionalGeneration:
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(tiny_hf_config(**kw)).eval()
    # random init leaves norms at 1 and biases at 0: perturb everything so the test sees every tensor
    with torch.no_grad():
        for _, p in model.named_parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


def num_image_tokens(cfg) -> int:
    n = (cfg.vision_config.image_size // cfg.vision_config.patch_size) ** 2
    return n + 1 if cfg.vision_feature_select_strategy == "full" else n


def make_batch(cfg, *, padding="right", rows=((True, 5, 3), (False, 7, 0), (True, 2, 6)), seed=0):
    """Rows of (has_image, text_before, text_after) -> ids, mask, pixels (one slot per row), HF pixels."""
    rng = np.random.default_rng(seed)
    n = num_image_tokens(cfg)
    seqs = []
    for has_img, before, after in rows:
        toks = list(rng.integers(3, IMAGE_TOKEN - 1, size=before))
        if has_img:
            toks += [IMAGE_TOKEN] * n
        toks += list(rng.integers(3, IMAGE_TOKEN - 1, size=after))
        seqs.append([1] + toks)
    T = max(len(s) for s in seqs)
    ids = np.zeros((len(seqs), T), np.int64)
    mask = np.zeros((len(seqs), T), np.int64)
    for b, s in enumerate(seqs):
        if padding == "right":
            ids[b, :len(s)], mask[b, :len(s)] = s, 1
        else:
            ids[b, T - len(s):], mask[b, T - len(s):] = s, 1
    size = cfg.vision_config.image_size
    pixels = rng.standard_normal((len(seqs), 3, size, size)).astype(np.float32)
    has = np.array([r[0] for r in rows])
    pixels[~has] = 0.0
    return ids, mask, pixels, pixels[has]


def hf_logits(model, ids, mask, hf_pixels):
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                    pixel_values=torch.tensor(hf_pixels) if len(hf_pixels) else None)
    return out.logits.float().numpy()
