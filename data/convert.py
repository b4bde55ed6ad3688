"""Convert public LLaVA-RLHF data releases to jaxlava's ArrayRecord datasets.

    python data/convert.py FORMAT --input FILE [FILE ...] [--image-dir DIR] [--facts image_to_caption.json] --out OUT_DIR

FORMAT: llava | vqav2 | aokvqa | aokvqa-ppo | flickr30k | preference | ppo-prompts.  Bad records are skipped,
counted and named in OUT_DIR/report.json (`--strict`: the first bad record is an error).  See docs/data.md.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxlava.data.convert_cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
