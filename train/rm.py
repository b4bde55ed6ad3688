"""Fact-augmented reward model (LLaVA-RLHF §3): the SFT model + LoRA + a scalar head read at the last token.

Each preference pair is scored twice (output_1, output_2), each time as the conversation with the candidate
answer followed by the reward prompt, whose Accurate criterion lists the image's facts (shuffled at each
use).  Loss: BCE on the score difference + 1e-3 * |mean(r0 + r1)|.  `--no-facts` trains the ablation
without facts.  Held-out accuracy is logged as `eval_accuracy` in metrics.jsonl, and, with facts, as
`eval_accuracy_other_facts` with every held-out pair given another pair's facts: if the two are close, the
model does not use the facts (docs/decisions.md 10).

With no flags it trains on the shapes world, starting from runs/sft/hf (training SFT first if that
model is missing).  A --init or --data path you name must exist (or add --build-missing).  The adapter
is written in PEFT format with the head beside it (RUN_DIR/adapter).

Examples:
  python train/rm.py
  python train/rm.py --no-facts --out runs/rm_nofacts
  python train/rm.py --preset llava-13b-336 --init runs/sft13b/hf --data data/preference --mesh
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxlava.training.run_rm import main  # noqa: E402
from jaxlava.hostenv import reexec_with_hugepages  # noqa: E402

if __name__ == "__main__":
    reexec_with_hugepages()
    main(sys.argv[1:], description=__doc__)
