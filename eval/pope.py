r"""POPE: yes/no object-existence questions on COCO val2014, scored per split (random, popular, adversarial).

Generates with the paper's settings (T=0.2, 64 new tokens, short-answer suffix, padded images), appends each batch
to OUT/answers.jsonl (a cut run resumes where it stopped), parses the answers with the official rule and prints
accuracy, precision, recall, F1 and yes-ratio per split and their mean; OUT/results.json holds the numbers.

Example:
  python eval/pope.py --model runs/sft --out evals/sft/pope --images coco/val2014 \
      --questions pope/coco_pope_random.jsonl pope/coco_pope_popular.jsonl pope/coco_pope_adversarial.jsonl
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxlava.eval.pope import main  # noqa: E402
from jaxlava.hostenv import reexec_with_hugepages  # noqa: E402

if __name__ == "__main__":
    reexec_with_hugepages()
    sys.exit(main(sys.argv[1:], description=__doc__))
