"""Supervised fine-tuning (LLaVA SFT / SFT+): full fine-tune of the projector and language model,
vision tower frozen, loss on assistant tokens only (template `v1`).

With no flags it trains the small `shapes` model on the embedded shapes world (generated on first
use in runs/shapes_world) in a few minutes on a CPU.  A --data folder you name must exist (or add
--build-missing to generate a shapes world there).  `--preset llava-7b-224 --init HF_DIR --data DATA_DIR`
uses the paper's settings (lr 2e-5, cosine, warmup 3%, global batch 128, 3 epochs).  A RUN_DIR that
already holds checkpoints resumes exactly.

Examples:
  python train/sft.py
  python train/sft.py --steps 50 --out runs/sft_try --mesh
  python train/sft.py --preset llava-13b-336 --init ckpt/llava-13b --data data/sftplus --mesh fsdp=-1,tensor=4
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxlava.training.run_sft import main  # noqa: E402
from jaxlava.hostenv import reexec_with_hugepages  # noqa: E402

if __name__ == "__main__":
    reexec_with_hugepages()
    main(sys.argv[1:], description=__doc__)
