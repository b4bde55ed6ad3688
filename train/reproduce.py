r"""Reproduce the paper's claim on the shapes world: Fact-RLHF (PPO against a reward model that reads the image's
facts) hallucinates less than SFT and than RLHF whose reward model never sees the facts, while keeping recall.

One shapes world is built in OUT/world (flags: --world flag=value ..., the data/shapes.py flags), then for each
seed (--seeds, default 0 1 2), in OUT/seed<S>/:
  ground/       the grounding stage (train/sft.py --split ground: the world's checklist conversations; stage 0 of
                the vision tower once per world), when the recipe has --ground-steps
  ground_more<i>/  grounding phase i + 1 (--ground-more STEPS:LR ...), from phase i's model, only when phase i
                ended with a held-out loss above --ground-bar (a seed slow to leave the stage's plateaus)
  sft/          SFT of the shapes model (train/sft.py), from the last grounding phase's model when there is one
  rlinit/       RL-init: a LoRA adapter trained by SFT on the frozen SFT model (train/sft.py --lora)
  rm_pairs/     preference pairs from the RL-init policy's own sampled descriptions, judged exactly
                (data/onpolicy_pairs.py), which both reward models add to the world's; with --rm-onpolicy-prompts
  rm_read/      the reading stage, with --rm-read-steps: the SFT model trained further on the world's fact-check
                conversations (--world n-factcheck=N: a verdict after each object a description names, against
                the facts); both reward models start from its model instead of the SFT model's (or, with
                --rm-base PATH, from a model trained elsewhere)
  rm_facts/     the reward model with the facts in its prompt (train/rm.py)
  rm_nofacts/   the reward model without them (train/rm.py --no-facts)
  rm_audit/     both reward models on the RL-init policy's own sampled descriptions, judged exactly
                (eval/rm_audit.py): which one ranks the hallucination pairs right; --audit-prompts 0 leaves it out
                (its prompts follow the ones rm_pairs used)
  ppo_facts/    PPO from RL-init against rm_facts (train/ppo.py; its held-out evaluation logs CHAIR-i)
  ppo_nofacts/  PPO against rm_nofacts (the reward prompt is built without facts, as that RM was trained)
  judge_sft/, judge_rlhf_nofacts/, judge_fact_rlhf/   the shapes judges (eval/shapes.py) on SFT and both policies
  ppo_facts_r<r>/, ppo_nofacts_r<r>/, judge_rlhf_nofacts_r<r>/, judge_fact_rlhf_r<r>/   with --ppo-repeats R, for
                r = 1 .. R-1: both PPO runs again with seed S + 100 r (plus --ppo-seed-offset) and their judges;
                each seed's RLHF numbers and checks are then the means over the R runs, and results.md lists each
                run's own checks (one PPO run alone moves the recall fall by several points, docs/decisions.md 31)

Every stage is cached: one that finished (its stage.json) is skipped by a rerun, one cut short (a time limit)
resumes from its checkpoints or answers when the same command is run again; a cached stage made with other
settings is an error that names them.

Outputs in OUT: results.json (every number per seed, mean / std / min / max over seeds, the acceptance checks,
wall time per stage), results.md (the three systems beside the paper's claims: CHAIR-i, CHAIR-s, recall,
POPE F1 and yes-ratio per split, the 0-6 rating, PPO's KL and length; the reward-model accuracies with facts,
another pair's facts and without, and on the policy's samples; the acceptance checks, per seed and on the means), systems.png (the three
systems' bars) and ppo_hallucination.png (held-out CHAIR-i over PPO steps for both reward models).

Acceptance checks: Fact-RLHF lowers CHAIR-i by >= 30% relative to SFT; its object recall falls by at most 5%
relative; its CHAIR-i is below the no-facts RLHF's.

--recipe picks the world and the stage steps and key hyper-parameters; each value is a flag of its own:
  reading  the default: the co-occurrence habit world with the habit in 90 % of the SFT descriptions, omission
         and addition twins as preference pairs, one tokenizer id per object, yes/no answers that name the
         object before the verdict ("red circle no."), a grounding stage of checklists and, in half of its
         conversations, POPE's single question (trained on, 2500 steps at a time, while its held-out loss ends
         above 0.01), checklist questions in 15 % of the SFT mix, SFT in three phases (2000 + 1500 + 1500
         steps), on-policy pairs with edit twins of the policy's samples, both reward models on a base trained
         3000 steps to check descriptions against the facts and list what they leave out, PPO with a per-prompt
         baseline over 128 rollouts a step and POPE's reading of yes/no answers, 10 steps, three PPO runs per
         reward model (docs/decisions.md 74): 3 to 5 hours per seed on 2 cores (seed 1 of run r12: 4.1 hours
         of stages, about 27 minutes of them paused, docs/decisions.md 76)
  reading-checklist  the default from docs/decisions.md 67 to 73: the same with plain yes/no answers, grounding
         on checklists only, no edit twins, 5 PPO steps: about 2.7 hours per seed on 2 cores
  demo   the reading recipe's world and stages with fewer steps (make demo, one seed)
  full   the default before docs/decisions.md 67: the habit world in 70 % of the descriptions with the twins,
         the grounding stage, 5 % checklist questions, one SFT phase and 10 PPO steps: 45 to 100 minutes per
         seed on 2 cores. The recipe before the twins: --world <the items it prints, less the last four>
         --ppo-steps 40 --ppo-eval-every 10
  demo-full  the full recipe's world and stages with fewer steps (make demo before decisions 67)
  plain  the generator's default world with the shapes stage presets (the recipe before the habit world)
  tiny   a smoke test of the pipeline on the small world
--world replaces the recipe's world flags as a whole (the recipe's are printed at the start).
Without JAX_PLATFORMS it runs on an accelerator when one is present.

Examples:
  python train/reproduce.py                                   # reading recipe, seeds 0 1 2, runs/reproduce
  python train/reproduce.py --recipe demo --seeds 0 --out runs/reproduce_demo
  python train/reproduce.py --recipe plain --world size=small pref-minimal-prob=1 --rm-steps 1000 --out runs/twins
  python train/reproduce.py --recipe tiny --out /tmp/repro_tiny  # the whole pipeline in a few minutes
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxlava.reproduce.stages import main  # noqa: E402
from jaxlava.hostenv import reexec_with_hugepages  # noqa: E402

if __name__ == "__main__":
    reexec_with_hugepages()
    main(sys.argv[1:], description=__doc__)
