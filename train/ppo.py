"""PPO with the fact-augmented reward model (LLaVA-RLHF §4): the policy (SFT base + a LoRA adapter from the
RL-init stage) samples responses to image prompts; the reward model scores each with the image's facts in its
prompt; rewards get a KL penalty against the reference policy, the no-stop penalty, a length term and a symbolic
correctness term; GAE (γ = λ = 1) and clipped policy and value losses update the policy adapter, the value
adapter and the value head.  Policy, reference, reward and value share one base model per distinct checkpoint.

With no flags it runs on the shapes world and builds what it lacks first (the world, SFT, the RL-init adapter,
the reward model), each cached under runs/; it prints the held-out reward-model score, KL and response length
of greedy responses before and after PPO.  A path you name must exist (or add --build-missing).

Outputs in RUN_DIR (runs/ppo): adapter/ (the policy, PEFT), value/ (value adapter + head), metrics.jsonl,
tb/, metrics.png, config.json, checkpoints/ (a rerun resumes exactly).  `python -m jaxlava.export --run RUN_DIR`
writes the policy as an HF model plus a PEFT adapter, or merged.

Examples:
  python train/ppo.py
  python train/ppo.py --steps 60 --out runs/ppo_long --mesh
  python train/ppo.py --preset llava-7b-224 --init ckpt/sft7b/hf --policy-adapter ckpt/rlinit7b/adapter \\
      --reward-adapter ckpt/rm13b/adapter --reward-base ckpt/sft13b/hf --data data/ppo_prompts --mesh
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxlava.training.run_ppo import main  # noqa: E402
from jaxlava.hostenv import reexec_with_hugepages  # noqa: E402

if __name__ == "__main__":
    reexec_with_hugepages()
    main(sys.argv[1:], description=__doc__)
