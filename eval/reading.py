r"""Does a shapes-world model read? The world's text-only reading exercise (a description, two captions, "which
objects do the captions not support, and which does it leave out?") on fresh scenes, answered greedily and scored
exactly, with the unsupported objects sorted by what noticing them takes: a new colour, a new shape, both, or only
the binding of a colour to a shape. With --exercise factcheck: the reward models' reading-stage exercise instead (a
yes/no verdict after each object a description names, against the facts; right verdicts per kind of object). And
with --exercise checklist: the grounding stage's exercise (a verdict after each object asked about, on the scene's
own picture), which tells a grounding stage that has learnt to look objects up from one still on its plateau.
Rules: jaxlava/eval/shapes_reading.py, docs/evaluation.md.

Example (the SFT model of `train/reproduce.py`, seed 0, on its own world):
  python eval/reading.py --model runs/reproduce/seed0/sft/hf --data runs/reproduce/world
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxlava.eval.shapes_reading import main  # noqa: E402
from jaxlava.hostenv import reexec_with_hugepages  # noqa: E402

if __name__ == "__main__":
    reexec_with_hugepages()
    sys.exit(main(sys.argv[1:], description=__doc__))
