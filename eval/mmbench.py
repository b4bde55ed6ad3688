r"""MMBench (dev) with CircularEval: multiple-choice questions, each asked once per rotation of its options.

Generates with the paper's settings (T=0.2, 64 new tokens, options prompt + short-answer suffix, square images)
into OUT/answers.jsonl (resumable), matches answers to letters by the OpenCompass rules (--matcher vlmevalkit for
VLMEvalKit's), sends the rest to an LLM matcher when a judge is given, and prints the accuracy overall and per
split, l2-category and category. OUT/predictions.tsv has the official submission columns.

Example:
  python eval/mmbench.py --model runs/sft --out evals/sft/mmbench --tsv mmbench/mmbench_dev_20230712.tsv
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxlava.eval.mmbench import main  # noqa: E402
from jaxlava.hostenv import reexec_with_hugepages  # noqa: E402

if __name__ == "__main__":
    reexec_with_hugepages()
    sys.exit(main(sys.argv[1:], description=__doc__))
