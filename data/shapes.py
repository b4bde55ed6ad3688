r"""Generate the shapes world (jaxlava's embedded dataset): conversation / preference / ppo_prompt / probe datasets,
the world's tokenizer (DIR/tokenizer/) and DIR/world.json.

    python data/shapes.py --out DIR [--seed S] [--size small|default|large] [--image-size 64] [--noise-rate 0.2] ...
    python data/shapes.py --out runs/shapes_world_20k --n-pref 20000   # more preference pairs for long RM runs
    python data/shapes.py --out runs/twins --colours red blue green yellow --shapes circle square triangle \
        --max-objects 3 --pref-minimal-prob 1 --n-pref 6000           # a twin-pair world of docs/decisions.md 10
    python data/shapes.py --out runs/twins_shape --colours red blue green yellow --max-objects 3 \
        --pref-minimal-prob 1 --pref-twin-rename shape --n-pref 6000 \
        --sft-mix describe 0.25 yesno 0.15 count 0.1 attribute 0.05 mc 0.1 compare 0.35
        # the world on which the fact-augmented RM passes 0.9 (SFT 1500 steps first; tests/test_rm_quality.py)
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxlava.shapes.cli import main  # noqa: E402
from jaxlava.hostenv import reexec_with_hugepages  # noqa: E402

if __name__ == "__main__":
    reexec_with_hugepages()
    main(sys.argv[1:], description=__doc__)
