r"""Preference pairs the way LLaVA-RLHF collected them, in a shapes world: the policy PPO will start from (the SFT
base with its RL-init adapter) describes each describe prompt of the world's ppo_prompt train split several times;
the exact judges count the absent and present objects each response names; within a prompt, the response with
fewer absent objects wins, and with as many, the one with more present objects (the paper's annotators' rule).
The pairs are written as a preference/train split that train/rm.py reads after the world's own with --extra-data.
Rules: jaxlava/training/rm_pairs.py.

Example (the stages of `train/reproduce.py`, seed 0):
  python data/onpolicy_pairs.py --init runs/reproduce/seed0/sft/hf \
      --policy-adapter runs/reproduce/seed0/rlinit/adapter --data runs/reproduce/world --out runs/pairs_seed0
  python train/rm.py --init runs/reproduce/seed0/sft/hf --data runs/reproduce/world --extra-data runs/pairs_seed0
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxlava.hostenv import reexec_with_hugepages  # noqa: E402
from jaxlava.training.rm_pairs import main  # noqa: E402

if __name__ == "__main__":
    reexec_with_hugepages()
    main(sys.argv[1:], description=__doc__)
