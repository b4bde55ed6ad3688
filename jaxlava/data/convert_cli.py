"""Command line of the dataset converters (public release formats -> jaxlava ArrayRecord datasets).

    python -m jaxlava.data.convert_cli FORMAT --input FILE [FILE ...] [--image-dir DIR] [--facts image_to_caption.json]
        [--tokenizer DIR --max-tokens N] --out OUT_DIR [--split train] [--strict]

Bad records are skipped and named (file, record index, reason) in OUT_DIR/report.json; `--strict` makes the first
bad record an error (exit code 2).  A malformed input file is always an error (exit code 2).  See docs/data.md.
"""
from __future__ import annotations

import argparse
import sys

FORMATS = {
    "llava": ("LLaVA-Instruct JSON list of {id, image, conversations} -> conversation records",
              "LLaVA-format JSON file(s)"),
    "vqav2": ("VQA-v2 questions + annotations -> multi-round short-answer QA conversation records",
              "the VQA-v2 questions JSON and annotations JSON (told apart by their top-level key)"),
    "aokvqa": ("A-OKVQA JSON list -> multiple-choice (mc) / chain-of-thought (cot) conversations, or (ppo) "
               "ppo_prompt records", "A-OKVQA JSON file(s), e.g. aokvqa_v1p0_train.json"),
    "aokvqa-ppo": ("A-OKVQA JSON list -> ppo_prompt records (= aokvqa --variant ppo)", "A-OKVQA JSON file(s)"),
    "flickr30k": ("Flickr30k Entities -> spotting-captioning conversations (phrases followed by their boxes)",
                  "Sentences/<id>.txt file(s) or the Sentences folder (annotations: --annotations-dir, default "
                  "../Annotations next to them; images: --image-dir/<id>.jpg)"),
    "preference": ("LLaVA-Human-Preference-10K JSON list + --facts -> preference records",
                   "the preference JSON file(s)"),
    "ppo-prompts": ("LLaVA-RLHF PPO prompt JSON list + --facts -> ppo_prompt records", "the PPO prompt JSON file(s)"),
}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="convert.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="format", required=True, metavar="FORMAT")
    for name, (help_, input_help) in FORMATS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("--input", nargs="+", required=True, metavar="FILE", help=input_help)
        p.add_argument("--out", required=True, metavar="OUT_DIR",
                       help="output folder: OUT_DIR/<kind>/<split>/ (ArrayRecord) and OUT_DIR/report.json")
        p.add_argument("--image-dir", metavar="DIR", help="folder the images are read from")
        p.add_argument("--split", default="train", help="split name to write (default: train)")
        p.add_argument("--strict", action="store_true", help="the first bad record is an error (exit code 2)")
        p.add_argument("--tokenizer", metavar="DIR", help="HF tokenizer folder for the --max-tokens check")
        p.add_argument("--max-tokens", type=int, metavar="N",
                       help="skip samples longer than N tokens (v1 template; needs --tokenizer)")
        p.add_argument("--image-tokens", type=int, default=1, metavar="K",
                       help="tokens the image counts for in --max-tokens (default 1; 256 for CLIP-L/14 at 224)")
        p.add_argument("--source", help="value of the records' 'source' field (default: the format name)")
        p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
        if name in ("preference", "ppo-prompts"):
            p.add_argument("--facts", metavar="JSON",
                           help="image_to_caption.json: {image file name (\"aok_\"+name for A-OKVQA prompts): "
                                "[caption, ...]}; records whose image has none get facts [] (counted)")
        if name in ("vqav2", "aokvqa"):
            p.add_argument("--max-turns", type=int, default=8, metavar="N",
                           help="at most N question-answer rounds per conversation (default 8)")
        if name == "aokvqa":
            p.add_argument("--variant", choices=["mc", "cot", "ppo"], default="mc",
                           help="mc: answer 'X. choice'; cot: rationale then 'So the correct option is X. choice'; "
                                "ppo: ppo_prompt records (caption_type 2..5 = A..D)")
        if name == "flickr30k":
            p.add_argument("--annotations-dir", metavar="DIR", help="folder of the Entities <id>.xml files")
            p.add_argument("--per-image", type=int, default=1, metavar="N",
                           help="sentences converted per image (those with at least one box; default 1)")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from jaxlava.data.convert_common import ConversionError, load_length_check
    from jaxlava.data.convert_sources import Options, convert
    opts = Options(image_dir=args.image_dir, facts=getattr(args, "facts", None),
                   max_turns=getattr(args, "max_turns", 8), variant=getattr(args, "variant", "mc"),
                   annotations_dir=getattr(args, "annotations_dir", None), per_image=getattr(args, "per_image", 1),
                   source=args.source)
    try:
        lc = load_length_check(args.tokenizer, args.max_tokens, args.image_tokens)
        convert(args.format, args.input, args.out, opts=opts, split=args.split, strict=args.strict,
                length_check=lc, quiet=args.quiet)
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
