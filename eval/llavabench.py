r"""LLaVA-Bench (COCO, qa90): 90 questions over 30 COCO images, judged against text-only GPT-4 answers.

Generates with the paper's settings (T=0.2, 1024 new tokens, no suffix, padded images) into OUT/answers.jsonl
(resumable), asks the judge to score both answers from captions and boxes (replies cached by request), and
prints the relative score (model / GPT-4, %) per category and overall. --judge-replies FILE (this tool's
judge.jsonl or LLaVA's review file) or the cache without --judge-url re-scores offline.

Example:
  OPENAI_API_KEY=... python eval/llavabench.py --model runs/rlhf --out evals/rlhf/llavabench \
      --questions llava/qa90_questions.jsonl --references llava/qa90_gpt4_answer.jsonl \
      --context table/caps_boxes_coco2014_val_80.jsonl --images coco/val2014 \
      --judge-url https://api.openai.com/v1 --judge-model gpt-4o
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxlava.eval.llavabench import main  # noqa: E402
from jaxlava.hostenv import reexec_with_hugepages  # noqa: E402

if __name__ == "__main__":
    reexec_with_hugepages()
    sys.exit(main(sys.argv[1:], description=__doc__))
