"""The shapes-world reproduction of the paper's claim: Fact-RLHF hallucinates less than SFT and than RLHF with a
reward model that never sees the facts (`python train/reproduce.py`).

- `recipe.py`: the named recipes (`RECIPES`: stage steps and key hyper-parameters) and the command's config;
- `stages.py`: the stages per seed (world, SFT, RL-init, two reward models, two PPO runs, the shapes judges),
  each cached and resumable, and `main`;
- `report.py`: the numbers per seed and over seeds, the acceptance checks, results.json / results.md, the plots.
"""
