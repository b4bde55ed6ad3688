"""Hugging Face interop: read llava-hf and original-LLaVA folders, write llava-hf folders.

Only safetensors are read.  With `shardings` (a tree of NamedSharding, e.g. from
`jaxlava.sharding`), every device's slice is read straight from the file with
`jax.make_array_from_callback`, so no process holds a full copy of a large tensor.
"""
from __future__ import annotations

import glob
import json
import logging
import os
import shutil
from dataclasses import dataclass, field

import jax
import numpy as np
from flax import nnx
from safetensors import safe_open

from jaxlava.config import LlavaConfig, VisionConfig
from jaxlava.fileio import save_safetensors, write_json
from jaxlava.hf_map import (ALIASES, IGNORED_SUFFIXES, ORIGINAL_ALIASES, P, V, Entry, hf_shape, read_slice,
                            table, to_hf)
from jaxlava.model import LlavaModel
from jaxlava.sharding import load_sharded

log = logging.getLogger("jaxlava.hf")
SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
              "added_tokens.json", "preprocessor_config.json", "processor_config.json", "chat_template.json",
              "chat_template.jinja", "generation_config.json")


# a CLIP folder: CLIPModel / older CLIPVisionModel use `vision_model.*`; transformers 5 CLIPVisionModel has no prefix
CLIP_VISION_PARTS = ("embeddings.", "encoder.", "pre_layrnorm.", "post_layernorm.")


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be loaded as asked."""


@dataclass
class LoadReport:
    missing: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


class _TensorIndex:
    """name -> (file, original name), canonicalised through alias tables; opens files lazily."""

    def __init__(self):
        self.where: dict[str, tuple[str, str]] = {}
        self._handles: dict[str, object] = {}

    def add_folder(self, folder: str, aliases, only_prefix: tuple[str, ...] | None = None) -> list[str]:
        files = _safetensors_files(folder)
        for f in files:
            with safe_open(f, framework="numpy") as h:
                for name in h.keys():
                    if only_prefix is not None and not name.startswith(only_prefix):
                        continue
                    canon = _canonical(name, aliases)
                    self.where[canon] = (f, name)
        return files

    def get(self, canon: str, index=None) -> np.ndarray:
        f, name = self.where[canon]
        h = self._handles.get(f)
        if h is None:
            h = self._handles[f] = safe_open(f, framework="numpy")
        if index is None:
            return h.get_tensor(name)
        return h.get_slice(name)[index]

    def shape(self, canon: str) -> tuple[int, ...]:
        f, name = self.where[canon]
        h = self._handles.get(f) or safe_open(f, framework="numpy")
        self._handles[f] = h
        return tuple(h.get_slice(name).get_shape())


def _canonical(name: str, aliases) -> str:
    for src, dst in aliases:
        if name.startswith(src):
            return dst + name[len(src):]
    return name


def _safetensors_files(folder: str) -> list[str]:
    if not os.path.isdir(folder):
        raise CheckpointError(f"{folder}: not a directory")
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as fh:
            weight_map = json.load(fh).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index}: no 'weight_map' object")
        files = sorted({os.path.join(folder, f) for f in weight_map.values()})
        for f in files:
            if not os.path.exists(f):
                raise CheckpointError(f"{index} names {os.path.basename(f)}, which is missing from {folder}")
        return files
    files = sorted(glob.glob(os.path.join(folder, "*.safetensors")))
    if files:
        return files
    pickles = sorted(glob.glob(os.path.join(folder, "*.bin")) + glob.glob(os.path.join(folder, "*.pt")))
    if pickles:
        raise CheckpointError(
            f"{folder} holds only PyTorch pickle weights ({', '.join(os.path.basename(p) for p in pickles)}). "
            "jaxlava reads safetensors only, because unpickling can run arbitrary code. Convert once with torch: "
            "`python -c \"import torch, safetensors.torch as st; "
            "st.save_file({k: v.contiguous() for k, v in torch.load('pytorch_model.bin', weights_only=True).items()}, "
            "'model.safetensors')\"` (split large checkpoints per file), or load the folder in transformers and "
            "call save_pretrained, which writes safetensors.")
    raise CheckpointError(f"{folder}: no *.safetensors files and no model.safetensors.index.json")


def _read_json(path: str) -> dict:
    try:
        with open(path) as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None


def _original_config(d: dict, vision_tower_path: str | None, runtime: dict) -> LlavaConfig:
    """Config of an original LLaVA / LLaVA-RLHF `sft_model` (LlavaLlamaForCausalLM)."""
    if vision_tower_path is None:
        raise CheckpointError(
            f"this is an original-LLaVA checkpoint (mm_vision_tower={d.get('mm_vision_tower')!r}); pass "
            "vision_tower_path=<local folder of that CLIP model> (jaxlava never downloads weights)")
    vcfg = _read_json(os.path.join(vision_tower_path, "config.json"))
    vcfg = vcfg.get("vision_config", vcfg)
    vision = VisionConfig(**{k: vcfg[k] for k in VisionConfig.__dataclass_fields__ if k in vcfg})
    text = {k: v for k, v in d.items() if not k.startswith("mm_")}
    text.pop("vision_config", None)
    ptype = d.get("mm_projector_type", "linear")
    if ptype not in ("linear", "mlp2x_gelu"):
        raise CheckpointError(f"mm_projector_type {ptype!r} is not supported (linear, mlp2x_gelu)")
    feature = d.get("mm_vision_select_feature", "patch")
    return LlavaConfig.from_hf_dict({
        "vision_config": vision.__dict__, "text_config": text,
        "image_token_index": d.get("image_token_index", text.get("vocab_size", 32000)),
        "projector_type": ptype, "projector_hidden_act": "gelu", "multimodal_projector_bias": True,
        "vision_feature_layer": d.get("mm_vision_select_layer", -2),
        "vision_feature_select_strategy": "default" if feature == "patch" else "full",
    }, **runtime)


def load_config(path: str, vision_tower_path: str | None = None, **runtime) -> tuple[LlavaConfig, bool]:
    """(config, is_original_layout) of a checkpoint folder."""
    d = _read_json(os.path.join(path, "config.json"))
    if "mm_vision_tower" in d or d.get("model_type") in ("llava_llama", "LlavaLlamaForCausalLM"):
        return _original_config(d, vision_tower_path, runtime), True
    if d.get("model_type") != "llava":
        raise CheckpointError(f"{path}/config.json: model_type {d.get('model_type')!r} is neither 'llava' "
                              "(llava-hf) nor an original LLaVA config (mm_vision_tower)")
    return LlavaConfig.from_hf_dict(d, **runtime), False


def from_pretrained(path: str, *, dtype: str = "float32", vision_tower_path: str | None = None,
                    shardings=None, return_report: bool = False, **runtime):
    """Load a llava-hf folder or an original LLaVA `sft_model` folder into a `LlavaModel`.

    dtype: parameter dtype ("float32" or "bfloat16"); runtime: other LlavaConfig fields
    (dtype of compute via compute_dtype=..., remat, scan_layers).
    shardings: optional callable (abstract param state -> tree of NamedSharding) for a sharded load.
    """
    compute = runtime.pop("compute_dtype", dtype)
    cfg, original = load_config(path, vision_tower_path, param_dtype=dtype, dtype=compute, **runtime)
    idx = _TensorIndex()
    report = LoadReport()
    report.files += idx.add_folder(path, ORIGINAL_ALIASES if original else ALIASES)
    if original:
        clip = [("vision_model.", V)] + [(p, V + p) for p in CLIP_VISION_PARTS]
        report.files += idx.add_folder(vision_tower_path, clip, only_prefix=tuple(p for p, _ in clip))
        _rename_original_projector(idx, cfg)
    abstract = nnx.eval_shape(lambda: LlavaModel(cfg, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    flat = dict(nnx.to_flat_state(state))
    target_shardings = dict(nnx.to_flat_state(shardings(state))) if shardings is not None else {}
    used = set()
    entries = table(cfg)
    for e in entries:
        var = flat[e.path]
        full_shape, dt = tuple(var.shape), var.dtype
        one = full_shape[1:] if e.stacked else full_shape
        names = [e.hf.format(i=i) for i in range(full_shape[0])] if e.stacked else [e.hf]
        missing = [n for n in names if n not in idx.where]
        if missing:
            report.missing += missing
            continue
        for n in names:
            got, want = idx.shape(n), hf_shape(e.kind, one)
            if got != want:
                raise CheckpointError(f"tensor {n} ({idx.where[n][0]}): shape {got} does not match the "
                                      f"config's expected shape {want}")
        used.update(names)
        flat[e.path] = var.replace(value=_materialise(e, names, idx, full_shape, one, dt,
                                                      target_shardings.get(e.path)))
    report.unused = sorted(n for n in idx.where if n not in used and not n.endswith(IGNORED_SUFFIXES)
                           and not (cfg.text.tie_word_embeddings and n.endswith("lm_head.weight")))
    if report.missing:
        raise CheckpointError(f"{path}: {len(report.missing)} tensors missing: {report.missing[:10]}"
                              f"{' ...' if len(report.missing) > 10 else ''}")
    if report.unused:
        log.warning("%s: %d tensors not used: %s", path, len(report.unused), report.unused[:10])
    model = nnx.merge(graphdef, nnx.from_flat_state(flat))
    model.source_path = path
    return (model, report) if return_report else model


def _rename_original_projector(idx: _TensorIndex, cfg: LlavaConfig) -> None:
    """model.mm_projector.{weight,bias} (linear) or .{0,2}.* (mlp2x_gelu) -> projector names."""
    ren = {"mm_projector.weight": P + "linear_1.weight", "mm_projector.bias": P + "linear_1.bias",
           "mm_projector.0.weight": P + "linear_1.weight", "mm_projector.0.bias": P + "linear_1.bias",
           "mm_projector.2.weight": P + "linear_2.weight", "mm_projector.2.bias": P + "linear_2.bias"}
    for old, new in ren.items():
        if old in idx.where:
            idx.where[new] = idx.where.pop(old)


def _materialise(e: Entry, names, idx: _TensorIndex, full_shape, one, dtype, sharding):
    def layer_slice(n, index):
        return read_slice(e.kind, lambda i: idx.get(n, i), one, index)

    def read(index):
        if e.stacked:
            layers = range(*index[0].indices(full_shape[0]))
            return np.stack([layer_slice(names[i], index[1:]) for i in layers]).astype(dtype)
        return layer_slice(names[0], index).astype(dtype)

    return load_sharded(read, full_shape, sharding)


def state_dict(model: LlavaModel) -> dict[str, np.ndarray]:
    """HF-named numpy tensors (canonical llava-hf spelling) of a jaxlava model."""
    cfg = model.config
    flat = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    out = {}
    for e in table(cfg):
        arr = np.asarray(jax.device_get(flat[e.path][...]))
        if e.stacked:
            for i in range(arr.shape[0]):
                out[e.hf.format(i=i)] = np.ascontiguousarray(to_hf(e.kind, arr[i]))
        else:
            out[e.hf] = np.ascontiguousarray(to_hf(e.kind, arr))
    if cfg.projector_type == "linear":
        # transformers' LLaVA always has a 2-layer projector: write linear as linear_1, act "linear", identity linear_2
        d = cfg.text.hidden_size
        dt = out[P + "linear_1.weight"].dtype
        out[P + "linear_2.weight"] = np.eye(d, dtype=dt)
        if cfg.projector_bias:
            out[P + "linear_2.bias"] = np.zeros((d,), dt)
    return out


def hf_config(cfg: LlavaConfig) -> dict:
    d = cfg.to_hf_dict()
    if cfg.projector_type == "linear":
        d["projector_hidden_act"] = "linear"
    if cfg.image_token_index >= cfg.text.vocab_size:
        raise CheckpointError(
            f"image_token_index {cfg.image_token_index} is outside the vocabulary ({cfg.text.vocab_size}); "
            "transformers embeds the placeholder id, so the llava-hf layout needs a vocabulary that holds it. "
            "jaxlava does not resize embeddings in place: build the model from a config whose text.vocab_size is "
            "above image_token_index (add the <image> token to the tokenizer first), then export")
    d["torch_dtype"] = d["dtype"] = cfg.param_dtype
    return d


def save_pretrained(model: LlavaModel, path: str, *, max_shard_bytes: int = 2 * 1024 ** 3,
                    copy_side_files_from: str | None = None) -> None:
    """Write the llava-hf layout (config.json + safetensors, sharded with an index above max_shard_bytes).

    Tokenizer / processor files of the source folder (model.source_path or copy_side_files_from) are copied.
    """
    if jax.process_index() != 0:
        return
    cfg_dict = hf_config(model.config)
    tensors = state_dict(model)
    os.makedirs(path, exist_ok=True)
    shards, cur, size = [], {}, 0
    for name in sorted(tensors):
        nbytes = tensors[name].nbytes
        if cur and size + nbytes > max_shard_bytes:
            shards.append(cur)
            cur, size = {}, 0
        cur[name] = tensors[name]
        size += nbytes
    shards.append(cur)
    meta = {"format": "pt"}
    if len(shards) == 1:
        save_safetensors(os.path.join(path, "model.safetensors"), shards[0], meta)
    else:
        weight_map = {}
        for k, shard in enumerate(shards):
            fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
            save_safetensors(os.path.join(path, fname), shard, meta)
            weight_map.update({n: fname for n in shard})
        total = sum(t.nbytes for t in tensors.values())
        write_json(os.path.join(path, "model.safetensors.index.json"),
                   {"metadata": {"total_size": total}, "weight_map": weight_map})
    write_json(os.path.join(path, "config.json"), cfg_dict)
    src = copy_side_files_from or getattr(model, "source_path", None)
    if src and os.path.abspath(src) != os.path.abspath(path):
        for f in SIDE_FILES:
            if os.path.exists(os.path.join(src, f)):
                shutil.copy2(os.path.join(src, f), os.path.join(path, f))


