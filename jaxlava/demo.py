"""`make demo`: the paper's claim in miniature on the embedded shapes world, one seed, end to end on a CPU.

It runs the shapes-world reproduction (`train/reproduce.py`) with its `demo` recipe and seed 0 in runs/demo:
the world, the grounding stage and SFT (with stage 0 of the vision tower), RL-init, the on-policy pairs, the
reading stage, the reward models with and without facts, PPO against each, and the exact shapes judges on SFT
and on both policies.  It then prints the three systems side by side and checks transformers' logits on the
exported SFT model.  The demo recipe is the default reproduction's (the reading recipe of docs/results.md) with
fewer steps than `python train/reproduce.py` (3 seeds); the recipe is printed at the start and the cut steps at
the end.  `--recipe demo-full` runs the demo of the earlier default, the full recipe.  Flags are
train/reproduce.py's (`python -m jaxlava.demo --sft-steps 400`); a rerun skips finished stages.
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np

DEFAULTS = {"--recipe": "demo", "--seeds": "0", "--out": "runs/demo"}


def interop_check(sft_run: str) -> None:
    """transformers' `LlavaForConditionalGeneration` on the exported SFT model: the largest logit difference."""
    import jaxlava
    try:
        import torch
        from transformers import LlavaForConditionalGeneration
    except ImportError:
        print("torch/transformers not installed: skipping the transformers comparison")
        return
    path = os.path.join(sft_run, "hf")
    model = jaxlava.from_pretrained(path)
    cfg = model.config
    rng = np.random.default_rng(0)
    ids = np.concatenate([[1], np.full(cfg.num_image_tokens, cfg.image_token_index), rng.integers(3, 200, 8)])[None]
    px = rng.standard_normal((1, 3, cfg.vision.image_size, cfg.vision.image_size)).astype(np.float32)
    ours = np.asarray(model(ids, px, np.ones_like(ids)))
    hf = LlavaForConditionalGeneration.from_pretrained(path).eval()
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids), pixel_values=torch.tensor(px)).logits.numpy()
    print(f"\ntransformers LlavaForConditionalGeneration on {path}: max |logit diff| = {np.abs(ref - ours).max():.2e}")


def demo_argv(argv: list[str]) -> list[str]:
    """train/reproduce.py's arguments: the demo's defaults for every flag the user did not give."""
    given = {a.split("=")[0] for a in argv if a.startswith("--")}
    return [x for flag, value in DEFAULTS.items() if flag not in given for x in (flag, value)] + list(argv)


def fewer_steps_note(cfg) -> str:
    """What the demo cut, against the default recipe (empty when it ran the default recipe's steps)."""
    from jaxlava.reproduce.recipe import DEFAULT_RECIPE, RECIPES
    ref = RECIPES[DEFAULT_RECIPE]
    cut = [f"{name} {getattr(cfg, f)} (reproduction: {getattr(ref, f)})" for name, f in
           (("vision stage 0", "vision_pretrain_steps"), ("grounding", "ground_steps"), ("SFT", "sft_steps"),
            ("RL-init", "rlinit_steps"), ("reading stage", "rm_read_steps"), ("reward models", "rm_steps"),
            ("PPO", "ppo_steps"), ("PPO runs per reward model", "ppo_repeats"))
           if getattr(cfg, f) < getattr(ref, f)]
    if len(cfg.ground_more) < len(ref.ground_more):
        cut.append(f"further grounding phases {len(cfg.ground_more)} (reproduction: up to {len(ref.ground_more)}, "
                   f"while the held-out loss is above {ref.ground_bar})")
    if len(cfg.sft_more) < len(ref.sft_more):
        cut.append(f"further SFT phases {len(cfg.sft_more)} (reproduction: {len(ref.sft_more)})")
    if ref.audit_edit_twins and not cfg.audit_edit_twins:
        cut.append("the audit without edit twins (reproduction: with them)")
    if not cut:
        return ""
    held = "" if cfg.rm_eval_pairs is None else (f"; the reward models' held-out accuracy is on the first "
                                                 f"{cfg.rm_eval_pairs} test pairs")
    return ("\nThis demo trains fewer steps than the full reproduction (" + ", ".join(cut) + held + "), so its "
            f"numbers are not docs/results.md's: `python train/reproduce.py` runs the {DEFAULT_RECIPE} recipe "
            "(3 to 5 hours per seed on 2 cores).")


def main(argv: list[str] | None = None) -> int:
    from jaxlava.reproduce import report
    from jaxlava.reproduce.recipe import parse_config
    from jaxlava.reproduce.stages import StageMismatch, run
    t0 = time.time()
    cfg = parse_config(demo_argv(sys.argv[1:] if argv is None else argv), description=__doc__)
    try:
        results = run(cfg)
    except StageMismatch as e:
        raise SystemExit(f"error: {e}") from None
    interop_check(os.path.join(report.seed_dir(cfg.out, cfg.seeds[0]), report.SFT))
    print(f"\n== the three systems (recipe {cfg.recipe}, seed {', '.join(map(str, cfg.seeds))}; the paper's "
          f"numbers and the acceptance checks are in {os.path.join(cfg.out, report.TABLE)}) ==\n")
    print(report.systems_table(results))
    print(fewer_steps_note(cfg))
    print(f"\ndemo finished in {time.time() - t0:.0f} s; outputs in {cfg.out}")
    return 0


if __name__ == "__main__":
    from jaxlava.hostenv import reexec_with_hugepages
    reexec_with_hugepages()
    raise SystemExit(main())
