"""The single table between jaxlava parameter paths and Hugging Face tensor names.

Each entry says how one jaxlava parameter is made from HF tensors (and back): the canonical HF
name (with `{i}` for per-layer tensors stacked on axis 0) and a transform kind.  Loading reads
only the slices a device needs (`read_slice`), so a sharded load never holds a full copy.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from jaxlava.config import LlavaConfig

# canonical HF spelling written by save_pretrained (llava-hf hub layout)
V, P, T, HEAD = "vision_tower.vision_model.", "multi_modal_projector.", "language_model.model.", "language_model.lm_head."

# input spellings seen in the wild -> canonical prefix (longest first)
ALIASES = [
    ("model.vision_tower.vision_model.", V), ("vision_tower.vision_model.", V),
    ("model.vision_tower.", V), ("vision_tower.", V),
    ("model.multi_modal_projector.", P), ("multi_modal_projector.", P),
    ("model.language_model.", T), ("language_model.model.", T),
    ("language_model.lm_head.", HEAD), ("lm_head.", HEAD),
]
# original LLaVA / LLaVA-RLHF `sft_model` (LlavaLlamaForCausalLM) spellings
ORIGINAL_ALIASES = [("model.mm_projector.", "mm_projector."), ("lm_head.", HEAD), ("model.", T)]
# buffers that are not parameters
IGNORED_SUFFIXES = ("rotary_emb.inv_freq", "embeddings.position_ids")


@dataclasses.dataclass(frozen=True)
class Entry:
    path: tuple[str, ...]      # jaxlava parameter path
    hf: str                    # canonical HF name, `{i}` = layer index when stacked
    kind: str                  # copy | linear | heads_in | heads_bias | heads_out | conv
    stacked: bool = False
    heads: int = 0             # for heads_* kinds


def table(cfg: LlavaConfig) -> list[Entry]:
    v, t = cfg.vision, cfg.text
    e: list[Entry] = []
    vl, tl = ("vision_tower", "layers"), ("language_model", "layers")
    e += [Entry(("vision_tower", "patch_kernel"), V + "embeddings.patch_embedding.weight", "conv"),
          Entry(("vision_tower", "class_embedding"), V + "embeddings.class_embedding", "copy"),
          Entry(("vision_tower", "position_embedding"), V + "embeddings.position_embedding.weight", "copy"),
          Entry(("vision_tower", "pre_ln_scale"), V + "pre_layrnorm.weight", "copy"),
          Entry(("vision_tower", "pre_ln_bias"), V + "pre_layrnorm.bias", "copy"),
          Entry(("vision_tower", "post_ln_scale"), V + "post_layernorm.weight", "copy"),
          Entry(("vision_tower", "post_ln_bias"), V + "post_layernorm.bias", "copy")]
    lay = V + "encoder.layers.{i}."
    for n in ("q", "k", "v"):
        e += [Entry(vl + (f"{n}_kernel",), lay + f"self_attn.{n}_proj.weight", "heads_in", True, v.num_attention_heads),
              Entry(vl + (f"{n}_bias",), lay + f"self_attn.{n}_proj.bias", "heads_bias", True, v.num_attention_heads)]
    e += [Entry(vl + ("o_kernel",), lay + "self_attn.out_proj.weight", "heads_out", True, v.num_attention_heads),
          Entry(vl + ("o_bias",), lay + "self_attn.out_proj.bias", "copy", True),
          Entry(vl + ("ln1_scale",), lay + "layer_norm1.weight", "copy", True),
          Entry(vl + ("ln1_bias",), lay + "layer_norm1.bias", "copy", True),
          Entry(vl + ("ln2_scale",), lay + "layer_norm2.weight", "copy", True),
          Entry(vl + ("ln2_bias",), lay + "layer_norm2.bias", "copy", True),
          Entry(vl + ("fc1_kernel",), lay + "mlp.fc1.weight", "linear", True),
          Entry(vl + ("fc1_bias",), lay + "mlp.fc1.bias", "copy", True),
          Entry(vl + ("fc2_kernel",), lay + "mlp.fc2.weight", "linear", True),
          Entry(vl + ("fc2_bias",), lay + "mlp.fc2.bias", "copy", True)]
    n_lin = 2 if cfg.projector_type == "mlp2x_gelu" else 1
    for j in range(1, n_lin + 1):
        e.append(Entry(("projector", f"linear_{j}_kernel"), P + f"linear_{j}.weight", "linear"))
        if cfg.projector_bias:
            e.append(Entry(("projector", f"linear_{j}_bias"), P + f"linear_{j}.bias", "copy"))
    e.append(Entry(("language_model", "embed_tokens"), T + "embed_tokens.weight", "copy"))
    e.append(Entry(("language_model", "norm"), T + "norm.weight", "copy"))
    if not t.tie_word_embeddings:
        e.append(Entry(("language_model", "lm_head"), HEAD + "weight", "linear"))
    lay = T + "layers.{i}."
    heads = {"q": t.num_attention_heads, "k": t.num_key_value_heads, "v": t.num_key_value_heads}
    for n, h in heads.items():
        e.append(Entry(tl + (f"{n}_kernel",), lay + f"self_attn.{n}_proj.weight", "heads_in", True, h))
        if t.attention_bias:
            e.append(Entry(tl + (f"{n}_bias",), lay + f"self_attn.{n}_proj.bias", "heads_bias", True, h))
    e.append(Entry(tl + ("o_kernel",), lay + "self_attn.o_proj.weight", "heads_out", True, t.num_attention_heads))
    if t.attention_bias:
        e.append(Entry(tl + ("o_bias",), lay + "self_attn.o_proj.bias", "copy", True))
    for n in ("gate", "up", "down"):
        e.append(Entry(tl + (f"{n}_kernel",), lay + f"mlp.{n}_proj.weight", "linear", True))
        if t.mlp_bias:
            e.append(Entry(tl + (f"{n}_bias",), lay + f"mlp.{n}_proj.bias", "copy", True))
    e += [Entry(tl + ("input_norm",), lay + "input_layernorm.weight", "copy", True),
          Entry(tl + ("post_attn_norm",), lay + "post_attention_layernorm.weight", "copy", True)]
    return e


def hf_shape(kind: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """HF tensor shape of one (unstacked) jaxlava parameter of `shape`."""
    if kind == "copy":
        return shape
    if kind == "linear":
        return (shape[1], shape[0])
    if kind == "conv":  # ours (p, q, C, D) <- torch (D, C, p, q)
        return (shape[3], shape[2], shape[0], shape[1])
    if kind == "heads_in":  # ours (D, H, Dh) <- torch (H*Dh, D)
        return (shape[1] * shape[2], shape[0])
    if kind == "heads_bias":  # ours (H, Dh) <- (H*Dh,)
        return (shape[0] * shape[1],)
    if kind == "heads_out":  # ours (H, Dh, D) <- torch (D, H*Dh)
        return (shape[2], shape[0] * shape[1])
    raise ValueError(kind)


# kind -> (HF tensor -> jaxlava parameter given its shape, jaxlava parameter -> HF tensor), one layer at a time
CONVERSIONS = {
    "copy": (lambda a, shape: a, lambda a: a),
    "linear": (lambda a, shape: a.T, lambda a: a.T),
    "conv": (lambda a, shape: a.transpose(2, 3, 1, 0), lambda a: a.transpose(3, 2, 0, 1)),
    "heads_in": (lambda a, shape: a.T.reshape(shape), lambda a: a.reshape(a.shape[0], -1).T),
    "heads_bias": (lambda a, shape: a.reshape(shape), lambda a: a.reshape(-1)),
    "heads_out": (lambda a, shape: a.T.reshape(shape), lambda a: a.reshape(-1, a.shape[-1]).T),
}


def to_jax(kind: str, a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Full HF tensor -> full jaxlava parameter (one layer)."""
    if kind not in CONVERSIONS:
        raise ValueError(kind)
    return CONVERSIONS[kind][0](a, shape)


def to_hf(kind: str, a: np.ndarray) -> np.ndarray:
    """jaxlava parameter (one layer) -> HF tensor."""
    if kind not in CONVERSIONS:
        raise ValueError(kind)
    return CONVERSIONS[kind][1](a)


def read_slice(kind: str, get, shape: tuple[int, ...], index: tuple[slice, ...]) -> np.ndarray:
    """Read `param[index]` of one layer by slicing the HF tensor through `get(hf_index)`.

    `shape` is the jaxlava (unstacked) shape and `index` a tuple of slices over it.
    """
    idx = [slice(*s.indices(n)) for s, n in zip(index, shape)]
    if kind == "copy":
        return get(tuple(idx))
    if kind == "linear":
        return get((idx[1], idx[0])).T
    if kind == "conv":
        return get((idx[3], idx[2], idx[0], idx[1])).transpose(2, 3, 1, 0)
    if kind in ("heads_in", "heads_out", "heads_bias"):
        if kind == "heads_in":
            d, h, k = idx
        elif kind == "heads_out":
            h, k, d = idx
        else:
            h, k = idx
            d = None
        dh = shape[-2] if kind == "heads_out" else shape[-1]
        rows = slice(h.start * dh, h.stop * dh)
        if kind == "heads_in":
            a = get((rows, d)).T.reshape(d.stop - d.start, h.stop - h.start, dh)[:, :, k]
        elif kind == "heads_out":
            a = get((d, rows)).T.reshape(h.stop - h.start, dh, d.stop - d.start)[:, k, :]
        else:
            a = get((rows,)).reshape(h.stop - h.start, dh)[:, k]
        return a
    raise ValueError(kind)
