r"""Exact hallucination judges on the shapes world (no API, no judge model): POPE on the world's probes, object
hallucination in descriptions of held-out images (CHAIR-i, CHAIR-s, object recall) and an MMHal-style 0-6 rating
of each description, all computed from the images' ground truth (rules: jaxlava/eval/shapes.py, docs/evaluation.md).

Generates greedily into OUT/answers.jsonl (a cut run resumes where it stopped), prints the tables and writes
OUT/results.json, OUT/table.md and OUT/judgements.jsonl (each description's mentions, hallucinations, rating).
MODEL is an llava-hf folder (runs/sft/hf), a run folder with hf/ (+ adapter/), or a PPO / RL-init run folder
(its config.json names the base model as init; adapter/ holds the policy).

Example:
  python eval/shapes.py --model runs/sft/hf                      # writes evals/sft/shapes
  python eval/shapes.py --model runs/ppo --out evals/ppo/shapes --data runs/shapes_world
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxlava.eval.shapes import main  # noqa: E402
from jaxlava.hostenv import reexec_with_hugepages  # noqa: E402

if __name__ == "__main__":
    reexec_with_hugepages()
    sys.exit(main(sys.argv[1:], description=__doc__))
