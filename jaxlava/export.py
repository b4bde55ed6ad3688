"""Export a finished run to Hugging Face: `python -m jaxlava.export --run RUN_DIR --out HF_DIR [--merge]`.

- SFT run: the trained model in the llava-hf layout (plus tokenizer / processor files).
- Reward-model run: without `--merge`, the base model (llava-hf layout) in HF_DIR and the adapter in
  HF_DIR/adapter (PEFT `adapter_model/` + `reward_head.safetensors`, loadable with
  `peft.PeftModel.from_pretrained`); with `--merge`, one llava-hf model with the LoRA folded into the
  decoder weights and `reward_head.safetensors` beside it.
- PPO run (and RL-init, `train/sft.py --lora`): the policy's base model in the llava-hf layout with the policy
  adapter in HF_DIR/adapter (PEFT), or with `--merge` one llava-hf model with the adapter folded in.

The export reads the run's final artefacts (RUN_DIR/hf for SFT, RUN_DIR/adapter otherwise), written when a
run reaches its last step; an unfinished run is resumed by re-running its trainer with the same --out.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Annotated

import tyro

from jaxlava.hf import from_pretrained, save_pretrained


class ExportError(RuntimeError):
    pass


def export(run: str, out: str, merge: bool = False) -> str:
    cfg_path = os.path.join(run, "config.json")
    if not os.path.exists(cfg_path):
        raise ExportError(f"{run}: no config.json; is this a jaxlava RUN_DIR?")
    with open(cfg_path) as fh:
        cfg = json.load(fh)
    stage = cfg.get("stage")
    if stage == "sft":
        src = os.path.join(run, "hf")
        if not os.path.exists(os.path.join(src, "config.json")):
            raise ExportError(f"{run}: the SFT run has not finished (no {src}); re-run train/sft.py --out {run}")
        save_pretrained(from_pretrained(src), out, copy_side_files_from=src)
        return "sft model"
    if stage == "rm":
        from jaxlava.lora import merge_lora
        from jaxlava.peft_io import load_reward_model_adapter, save_reward_head
        adapter = os.path.join(run, "adapter")
        if not os.path.isdir(adapter):
            raise ExportError(f"{run}: the RM run has not finished (no {adapter}); re-run train/rm.py --out {run}")
        base_dir = cfg.get("init")
        base = from_pretrained(base_dir)
        params, lora_cfg, head = load_reward_model_adapter(adapter, base.config)
        if merge:
            save_pretrained(merge_lora(base, params, lora_cfg), out, copy_side_files_from=base_dir)
            save_reward_head(out, head)
            return "merged reward model"
        save_pretrained(base, out, copy_side_files_from=base_dir)
        _copy_tree(adapter, os.path.join(out, "adapter"))
        return "base model + PEFT adapter"
    if stage in ("ppo", "rlinit"):
        from jaxlava.lora import merge_lora
        from jaxlava.peft_io import load_adapter
        adapter = os.path.join(run, "adapter")
        if not os.path.isdir(adapter):
            raise ExportError(f"{run}: the {stage} run has not finished (no {adapter}); re-run it with --out {run}")
        base_dir = cfg.get("init")
        base = from_pretrained(base_dir)
        params, lora_cfg = load_adapter(adapter, base.config)
        if merge:
            save_pretrained(merge_lora(base, params, lora_cfg), out, copy_side_files_from=base_dir)
            return f"merged {stage} policy"
        save_pretrained(base, out, copy_side_files_from=base_dir)
        _copy_tree(adapter, os.path.join(out, "adapter"))
        return f"base model + {stage} policy adapter (PEFT)"
    raise ExportError(f"{run}: stage {stage!r} cannot be exported (sft, rm, rlinit, ppo)")


def _copy_tree(src: str, dst: str) -> None:
    if os.path.exists(dst):
        shutil.rmtree(dst)
    shutil.copytree(src, dst)


@dataclasses.dataclass(kw_only=True)
class ExportArgs:
    """Which finished run to export, and where to."""
    run: Annotated[str, tyro.conf.arg(metavar="RUN_DIR")]
    """the RUN_DIR of a finished train/sft.py or train/rm.py run"""
    out: Annotated[str, tyro.conf.arg(metavar="HF_DIR")]
    """output folder (llava-hf layout)"""
    merge: bool = False
    """fold LoRA adapters into the base weights"""


def main(argv=None) -> int:
    args = tyro.cli(ExportArgs, args=argv, prog="python -m jaxlava.export", description=__doc__)
    try:
        what = export(args.run, args.out, args.merge)
    except ExportError as e:
        raise SystemExit(f"error: {e}") from None
    print(f"exported the {what} of {args.run} to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
