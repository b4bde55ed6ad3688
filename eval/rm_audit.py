r"""Does a reward model punish hallucination in the responses PPO will show it?  Samples several responses to each
held-out describe prompt of a shapes world from the policy PPO starts from (SFT base + RL-init adapter, PPO's
temperature), judges each exactly against the image's objects, and scores them with each reward model. Within a
prompt, two responses that name a different number of absent objects make a hallucination pair: the reward model
is right when it scores the one with fewer higher. Reward models with facts are also scored with another
prompt's facts (if they read the facts, that costs accuracy). Rules: jaxlava/training/rm_audit.py.

Example (the stages of `train/reproduce.py`, seed 0):
  python eval/rm_audit.py --init runs/reproduce/seed0/sft/hf --policy-adapter runs/reproduce/seed0/rlinit/adapter \
      --data runs/reproduce/world --reward-adapters runs/reproduce/seed0/rm_facts/adapter \
      runs/reproduce/seed0/rm_nofacts/adapter --out evals/rm_audit_seed0.json
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxlava.hostenv import reexec_with_hugepages  # noqa: E402
from jaxlava.training.rm_audit import main  # noqa: E402

if __name__ == "__main__":
    reexec_with_hugepages()
    main(sys.argv[1:], description=__doc__)
