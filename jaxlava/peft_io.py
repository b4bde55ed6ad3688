"""PEFT-format LoRA adapters (adapter_config.json + adapter_model.safetensors) and the LLaVA-RLHF RM layout.

Key names (found empirically with peft 0.21.2 + transformers 5 on `LlavaForConditionalGeneration`):
    base_model.model.model.language_model.layers.{i}.self_attn.{q,k,v,o}_proj.lora_{A,B}.weight
    base_model.model.model.language_model.layers.{i}.mlp.{gate,up,down}_proj.lora_{A,B}.weight
lora_A is torch [r, in] (our a = A.T), lora_B is [out, r] (our b = B.T).  The reader also accepts the older
spellings `base_model.model.language_model.model.layers.{i}...` (transformers 4.x llava-hf) and
`base_model.model.model.layers.{i}...` (original LLaVA's LlavaLlamaForCausalLM, e.g. LLaVA-RLHF's
rm_lora_adapter_model / rlhf_lora_adapter_model) and keys carrying an adapter name (`lora_A.default.weight`).

target_modules: LLaVA's vision tower also has q/k/v/o-like modules, so PEFT's plain list ["q_proj", ...]
would ALSO wrap CLIP (the original code escaped this only because it loaded the vision tower after wrapping).
We write a regex matching decoder projections only (any module name without "vision"), which PEFT
full-matches against module names.  On read, LoRA tensors on the vision tower are ignored with a warning when
their B is exactly zero (a fresh PEFT init: no effect) and refused otherwise.

RM layout (LLaVA-RLHF release `rm_lora_adapter_model/`): `adapter_model/` (PEFT files) + the reward head.  The
release stores the head as a torch pickle `reward_head`; we read only `reward_head.safetensors` (torch
Linear(D, 1) layout: weight [1, D], bias [1]) and refuse pickles with conversion instructions.
"""
from __future__ import annotations

import json
import logging
import os
import re

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file

from jaxlava.fileio import save_safetensors, write_json
from jaxlava.lora import TARGETS, LoraConfig, check_lora

log = logging.getLogger("jaxlava.peft_io")

ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
HEAD_FILE = "reward_head.safetensors"
MODULE = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
          "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}
KEY_FMT = "base_model.model.model.language_model.layers.{i}.{module}.{name}.lora_{ab}.weight"
_KEY_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.(self_attn|mlp)\.(" + "|".join(TARGETS) +
                     r")\.lora_([AB])(?:\.[A-Za-z0-9_\-]+)?\.weight$")
_CONVERT = ('python -c "import torch; from safetensors.torch import save_file; '
            "sd = torch.load('{src}', map_location='cpu', weights_only=True); "
            "save_file({{k: v.contiguous() for k, v in sd.items()}}, '{dst}')\"")


class AdapterFormatError(ValueError):
    """An adapter folder or file that jaxlava cannot read (named in the message)."""


def target_regex(targets=TARGETS) -> str:
    """PEFT `target_modules` regex: the decoder's projections only, never the CLIP vision tower."""
    groups: dict[str, list[str]] = {}
    for t in targets:
        groups.setdefault(MODULE[t], []).append(t)
    alts = "|".join(f"{m}\\.({'|'.join(ts)})" for m, ts in groups.items())
    return f"^(?!.*vision).*\\.layers\\.\\d+\\.({alts})$"


def _refuse_pickle(path: str, dst: str, what: str):
    raise AdapterFormatError(
        f"{path} is {what}; jaxlava reads only safetensors (unpickling a file can run code). Convert it once, "
        f"where you trust the file (a whole pickled nn.Module needs weights_only=False and .state_dict()):\n"
        f"  cd {os.path.dirname(path) or '.'} && " + _CONVERT.format(src=os.path.basename(path), dst=dst))


# ------------------------------------------------------------------------------------------- write
def adapter_config(lora_cfg: LoraConfig, base_model_name_or_path: str | None = None) -> dict:
    """adapter_config.json contents as peft 0.21 reads them."""
    return {
        "peft_type": "LORA", "task_type": None, "base_model_name_or_path": base_model_name_or_path,
        "r": int(lora_cfg.r), "lora_alpha": float(lora_cfg.alpha), "lora_dropout": float(lora_cfg.dropout),
        "target_modules": target_regex(lora_cfg.targets), "bias": "none", "fan_in_fan_out": False,
        "inference_mode": True, "init_lora_weights": True, "use_rslora": False, "use_dora": False,
        "modules_to_save": None, "rank_pattern": {}, "alpha_pattern": {}, "layers_to_transform": None,
        "layers_pattern": None, "revision": None,
    }


def save_adapter(path: str, params: dict, lora_cfg: LoraConfig, *, base_model_name_or_path: str | None = None,
                 dtype=np.float32) -> None:
    """Write `params` as a PEFT adapter folder loadable by `peft.PeftModel.from_pretrained`.

    dtype: storage dtype (numpy or ml_dtypes, e.g. ml_dtypes.bfloat16)."""
    tensors = {}
    for name, ab in params.items():
        if name not in MODULE:
            raise ValueError(f"adapter has an unknown projection {name!r}; known: {list(TARGETS)}")
        a, b = np.asarray(ab["a"]).astype(dtype), np.asarray(ab["b"]).astype(dtype)
        if a.ndim != 3 or b.ndim != 3 or a.shape[-1] != lora_cfg.r or b.shape[1] != lora_cfg.r \
                or a.shape[0] != b.shape[0]:
            raise ValueError(f"adapter {name}: a {a.shape} / b {b.shape} are not [L, in, r={lora_cfg.r}] / "
                             f"[L, r={lora_cfg.r}, out]")
        for i in range(a.shape[0]):
            tensors[KEY_FMT.format(i=i, module=MODULE[name], name=name, ab="A")] = np.ascontiguousarray(a[i].T)
            tensors[KEY_FMT.format(i=i, module=MODULE[name], name=name, ab="B")] = np.ascontiguousarray(b[i].T)
    cfg = LoraConfig(r=lora_cfg.r, alpha=lora_cfg.alpha, dropout=lora_cfg.dropout, targets=tuple(params))
    os.makedirs(path, exist_ok=True)
    save_safetensors(os.path.join(path, ADAPTER_WEIGHTS), tensors, {"format": "pt"})
    write_json(os.path.join(path, ADAPTER_CONFIG), adapter_config(cfg, base_model_name_or_path), sort_keys=True)


# -------------------------------------------------------------------------------------------- read
def _check_peft_config(d: dict, where: str) -> None:
    def refuse(what):
        raise AdapterFormatError(f"{where}: {what} is not supported by jaxlava's LoRA")
    if str(d.get("peft_type", "LORA")).upper() != "LORA":
        refuse(f"peft_type {d.get('peft_type')!r}")
    if d.get("bias", "none") != "none":
        refuse(f"bias={d.get('bias')!r} (only 'none')")
    for flag in ("use_dora", "use_rslora", "fan_in_fan_out", "lora_bias"):
        if d.get(flag):
            refuse(f"{flag}=true")
    for pat in ("rank_pattern", "alpha_pattern"):
        if d.get(pat):
            refuse(f"a non-empty {pat}")
    if d.get("modules_to_save"):
        refuse(f"modules_to_save={d['modules_to_save']} (fully trained extra modules)")
    if "r" not in d:
        raise AdapterFormatError(f"{where}: no rank `r`")


def _read_weights(folder: str) -> dict[str, np.ndarray]:
    st = os.path.join(folder, ADAPTER_WEIGHTS)
    if os.path.exists(st):
        try:
            return load_file(st)
        except Exception as e:  # noqa: BLE001
            raise AdapterFormatError(f"{st}: not a readable safetensors file ({e})") from None
    binf = os.path.join(folder, "adapter_model.bin")
    if os.path.exists(binf):
        _refuse_pickle(binf, ADAPTER_WEIGHTS, "a torch pickle (adapter_model.bin)")
    raise AdapterFormatError(f"{folder}: no {ADAPTER_WEIGHTS} found")


def _group(tensors: dict, where: str) -> dict[str, dict[str, dict[int, np.ndarray]]]:
    """{name: {"A": {layer: [r, in]}, "B": {layer: [out, r]}}} of the decoder LoRA tensors."""
    found: dict[str, dict[str, dict[int, np.ndarray]]] = {}
    vision_b = {k: v for k, v in tensors.items() if "vision" in k and ".lora_B" in k}
    for key, value in tensors.items():
        if "lora_" not in key:
            raise AdapterFormatError(f"{where}: tensor {key} is not a LoRA weight")
        if "vision" in key:
            b = vision_b.get(key.replace(".lora_A", ".lora_B"), value)
            if not np.any(np.asarray(b, np.float32)):
                log.warning("%s: ignoring LoRA tensor %s on the vision tower (its lora_B is zero)", where, key)
                continue
        m = _KEY_RE.search(key)
        if "vision" in key or m is None:
            raise AdapterFormatError(f"{where}: tensor {key} is not a LoRA weight of a decoder projection "
                                     f"({', '.join(TARGETS)}); jaxlava adapts the language model only")
        layer, module, name, ab = int(m.group(1)), m.group(2), m.group(3), m.group(4)
        if MODULE[name] != module:
            raise AdapterFormatError(f"{where}: tensor {key}: {name} is not under {module}")
        slot = found.setdefault(name, {"A": {}, "B": {}})[ab]
        if layer in slot:
            raise AdapterFormatError(f"{where}: two tensors for layer {layer} {name} lora_{ab} (mixed key spellings?)")
        slot[layer] = value
    if not found:
        raise AdapterFormatError(f"{where}: holds no decoder LoRA tensors")
    return found


def load_adapter(path: str, config=None, dtype=np.float32) -> tuple[dict, LoraConfig]:
    """Read a PEFT adapter folder -> (params {"q_proj": {"a": [L,in,r], "b": [L,r,out]}, ...}, LoraConfig).

    config: an optional LlavaConfig to check names, layer count and shapes against.  Layers excluded by
    `layers_to_transform` get zero a/b.
    """
    cfg_path = os.path.join(path, ADAPTER_CONFIG)
    if not os.path.exists(cfg_path):
        raise AdapterFormatError(f"{path}: no {ADAPTER_CONFIG} (is this a PEFT adapter folder?)")
    try:
        with open(cfg_path) as fh:
            d = json.load(fh)
    except json.JSONDecodeError as e:
        raise AdapterFormatError(f"{cfg_path}: not valid JSON ({e})") from None
    _check_peft_config(d, cfg_path)
    where = os.path.join(path, ADAPTER_WEIGHTS)
    found = _group(_read_weights(path), where)
    L = config.text.num_hidden_layers if config is not None else 1 + max(
        max([*s["A"], *s["B"]]) for s in found.values())
    only = d.get("layers_to_transform")
    only = set([only] if isinstance(only, int) else only) if only is not None else None
    r = int(d["r"])
    params = {}
    for name in [t for t in TARGETS if t in found]:
        A, B = found[name]["A"], found[name]["B"]
        extra = sorted(i for i in {*A, *B} if i >= L)
        if extra:
            raise AdapterFormatError(f"{where}: {name} has layers {extra} but the model has {L}")
        a_list, b_list, din, dout = [], [], None, None
        for i in range(L):
            if i in A and i in B:
                a_i, b_i = A[i], B[i]
                if a_i.ndim != 2 or b_i.ndim != 2 or a_i.shape[0] != r or b_i.shape[1] != r:
                    raise AdapterFormatError(f"{where}: layer {i} {name}: lora_A {a_i.shape} / lora_B {b_i.shape} "
                                             f"are not [r={r}, in] / [out, r={r}] (r from {ADAPTER_CONFIG})")
                din, dout = a_i.shape[1], b_i.shape[0]
                a_list.append(np.asarray(a_i.T, dtype))
                b_list.append(np.asarray(b_i.T, dtype))
            elif (i in A) != (i in B) or only is None or i in only:
                raise AdapterFormatError(f"{where}: layer {i} {name}: lora_A/lora_B missing "
                                         f"(have A for {sorted(A)}, B for {sorted(B)}; the model has {L} layers)")
            else:
                a_list.append(None)
                b_list.append(None)
        a_list = [x if x is not None else np.zeros((din, r), dtype) for x in a_list]
        b_list = [x if x is not None else np.zeros((r, dout), dtype) for x in b_list]
        params[name] = {"a": np.stack(a_list), "b": np.stack(b_list)}
    if config is not None:
        try:
            check_lora(params, config)
        except ValueError as e:
            raise AdapterFormatError(f"{where}: {e}") from None
    lora_cfg = LoraConfig(r=r, alpha=float(d.get("lora_alpha", r)), dropout=float(d.get("lora_dropout") or 0.0),
                          targets=tuple(params))
    return params, lora_cfg


# -------------------------------------------------------------------------------- scalar heads / RM
def save_reward_head(path: str, head: dict) -> None:
    """{"w": [D], "b": []} -> safetensors in torch Linear(D, 1) layout: weight [1, D], bias [1].

    `path` is a folder (the file is PATH/reward_head.safetensors) or a file name ending in .safetensors."""
    if not path.endswith(".safetensors"):
        os.makedirs(path, exist_ok=True)
        path = os.path.join(path, HEAD_FILE)
    w = np.asarray(head["w"], np.float32)
    b = np.asarray(head["b"], np.float32)
    if w.ndim != 1 or b.size != 1:
        raise ValueError(f"reward head: w {w.shape} / b {b.shape} are not [D] / []")
    save_safetensors(path, {"weight": w.reshape(1, -1), "bias": b.reshape(1)}, {"format": "pt"})


def _is_safetensors(path: str) -> bool:
    try:
        with safe_open(path, framework="numpy"):
            return True
    except Exception:  # noqa: BLE001
        return False


def load_reward_head(path: str, hidden_size: int | None = None) -> dict:
    """A Linear(D, 1) head -> {"w": [D], "b": []} (float32).

    `path`: a .safetensors file (keys weight/bias, optionally prefixed) or a folder holding
    reward_head.safetensors.  A torch pickle (the release's `reward_head`) is refused with instructions."""
    if os.path.isdir(path):
        st, pkl = os.path.join(path, HEAD_FILE), os.path.join(path, "reward_head")
        if not os.path.exists(st) and os.path.isfile(pkl):
            path = pkl
        elif not os.path.exists(st):
            raise AdapterFormatError(f"{path}: no {HEAD_FILE}")
        else:
            path = st
    if not os.path.isfile(path):
        raise AdapterFormatError(f"{path}: no such reward head file")
    if not _is_safetensors(path):
        dst = HEAD_FILE if os.path.basename(path) == "reward_head" else os.path.basename(path) + ".safetensors"
        _refuse_pickle(path, dst, "not a safetensors file (the LLaVA-RLHF release stores the head as a torch pickle)")
    t = load_file(path)
    w = [t[k] for k in t if k.split(".")[-1] == "weight"]
    b = [t[k] for k in t if k.split(".")[-1] == "bias"]
    if len(w) != 1 or len(b) != 1 or len(t) != 2:
        raise AdapterFormatError(f"{path}: expected exactly a weight [1, D] and a bias [1], found {sorted(t)}")
    w, b = w[0], b[0]
    if w.ndim != 2 or w.shape[0] != 1 or b.shape not in ((1,), ()):
        raise AdapterFormatError(f"{path}: weight {w.shape} / bias {b.shape} is not a Linear(D, 1)")
    if hidden_size is not None and w.shape[1] != hidden_size:
        raise AdapterFormatError(f"{path}: head width {w.shape[1]} != model hidden size {hidden_size}")
    return {"w": np.asarray(w[0], np.float32), "b": np.asarray(b, np.float32).reshape(())}


def save_reward_model_adapter(path: str, params: dict, lora_cfg: LoraConfig, head: dict, *,
                              base_model_name_or_path: str | None = None) -> None:
    """The LLaVA-RLHF RM layout: PATH/adapter_model/ (PEFT) + PATH/reward_head.safetensors."""
    save_adapter(os.path.join(path, "adapter_model"), params, lora_cfg,
                 base_model_name_or_path=base_model_name_or_path)
    save_reward_head(os.path.join(path, HEAD_FILE), head)


def load_reward_model_adapter(path: str, config=None) -> tuple[dict, LoraConfig, dict]:
    """Read `rm_lora_adapter_model/` -> (adapter params, LoraConfig, head {"w": [D], "b": []}).

    The PEFT files may sit in PATH/adapter_model/ (release layout) or in PATH itself."""
    folder = os.path.join(path, "adapter_model")
    if not os.path.isdir(folder):
        if os.path.exists(os.path.join(path, ADAPTER_CONFIG)):
            folder = path
        else:
            raise AdapterFormatError(f"{path}: expected an adapter_model/ folder (LLaVA-RLHF RM layout)")
    params, lora_cfg = load_adapter(folder, config)
    if not any(os.path.exists(os.path.join(path, f)) for f in (HEAD_FILE, "reward_head")):
        raise AdapterFormatError(f"{path}: no {HEAD_FILE} (or reward_head) beside adapter_model/")
    head = load_reward_head(path, config.text.hidden_size if config is not None else None)
    return params, lora_cfg, head
