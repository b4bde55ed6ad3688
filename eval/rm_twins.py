r"""What a shapes-world reward model reads: its held-out accuracy by kind of twin pair (an object left out, an
absent one added, a rename that a new colour word, a new shape word or only binding a colour to its shape
decides), with each pair's own facts and with another pair's. Rules: jaxlava/training/rm_twins.py.

Example (the facts reward model of `train/reproduce.py`, seed 0):
  python eval/rm_twins.py --run runs/reproduce/seed0/rm_facts --out evals/rm_twins_seed0.json
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxlava.hostenv import reexec_with_hugepages  # noqa: E402
from jaxlava.training.rm_twins import main  # noqa: E402

if __name__ == "__main__":
    reexec_with_hugepages()
    main(sys.argv[1:], description=__doc__)
