r"""MMHal-Bench: 96 hallucination-prone questions, each answer rated 0-6 by an LLM judge.

Generates greedily (1024 new tokens, no suffix, padded images) into OUT/answers.jsonl (resumable), asks the judge
(any OpenAI-compatible endpoint; replies are cached by request in OUT/judge_cache.jsonl), and prints the average
score, the hallucination rate and the score per question type. --judge-replies FILE (or the cache without
--judge-url) re-scores offline.

Example:
  OPENAI_API_KEY=... python eval/mmhal.py --model runs/rlhf --out evals/rlhf/mmhal \
      --questions mmhal/response_template.json --images mmhal/images \
      --judge-url https://api.openai.com/v1 --judge-model gpt-4o
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxlava.eval.mmhal import main  # noqa: E402
from jaxlava.hostenv import reexec_with_hugepages  # noqa: E402

if __name__ == "__main__":
    reexec_with_hugepages()
    sys.exit(main(sys.argv[1:], description=__doc__))
