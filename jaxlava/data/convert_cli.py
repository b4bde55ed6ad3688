"""Command line of the dataset converters (public release formats -> jaxlava ArrayRecord datasets).

    python -m jaxlava.data.convert_cli FORMAT --input FILE [FILE ...] [--image-dir DIR] [--facts image_to_caption.json]
        [--tokenizer DIR --max-tokens N] --out OUT_DIR [--split train] [--strict]

Bad records are skipped and named (file, record index, reason) in OUT_DIR/report.json; `--strict` makes the first
bad record an error (exit code 2).  A malformed input file is always an error (exit code 2).  See docs/data.md.
"""
from __future__ import annotations

import dataclasses
import sys
from typing import Annotated, ClassVar, Literal, Union

import tyro
from tyro.conf import arg

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


@dataclasses.dataclass(kw_only=True)
class ConvertArgs:
    """The flags of every format (each format's subclass names its --input files)."""
    FORMAT: ClassVar[str] = ""
    input: Annotated[tuple[str, ...], arg(metavar="FILE")]
    out: Annotated[str, arg(metavar="OUT_DIR")]
    """output folder: OUT_DIR/<kind>/<split>/ (ArrayRecord) and OUT_DIR/report.json"""
    image_dir: Annotated[str | None, arg(metavar="DIR")] = None
    """folder the images are read from"""
    split: str = "train"
    """split name to write"""
    strict: bool = False
    """the first bad record is an error (exit code 2)"""
    tokenizer: Annotated[str | None, arg(metavar="DIR")] = None
    """HF tokenizer folder for the --max-tokens check"""
    max_tokens: Annotated[int | None, arg(metavar="N")] = None
    """skip samples longer than N tokens (v1 template; needs --tokenizer)"""
    image_tokens: Annotated[int, arg(metavar="K")] = 1
    """tokens the image counts for in --max-tokens (1; 256 for CLIP-L/14 at 224)"""
    source: Annotated[str | None, arg(metavar="NAME")] = None
    """value of the records' 'source' field (None: the format name)"""
    quiet: bool = False
    """no progress bar or summary"""


@dataclasses.dataclass(kw_only=True)
class _WithFacts(ConvertArgs):
    facts: Annotated[str | None, arg(
        metavar="JSON", help='image_to_caption.json: {image file name ("aok_"+name for A-OKVQA prompts): '
                             '[caption, ...]}; records whose image has none get facts [] (counted)')] = None


@dataclasses.dataclass(kw_only=True)
class _WithTurns(ConvertArgs):
    max_turns: Annotated[int, arg(metavar="N")] = 8
    """at most N question-answer rounds per conversation"""


@dataclasses.dataclass(kw_only=True)
class _Aokvqa(_WithTurns):
    variant: Annotated[Literal["mc", "cot", "ppo"], arg(
        help="mc: answer 'X. choice'; cot: rationale then 'So the correct option is X. choice'; "
             "ppo: ppo_prompt records (caption_type 2..5 = A..D)")] = "mc"


@dataclasses.dataclass(kw_only=True)
class _Flickr30k(ConvertArgs):
    annotations_dir: Annotated[str | None, arg(metavar="DIR")] = None
    """folder of the Entities <id>.xml files"""
    per_image: Annotated[int, arg(metavar="N")] = 1
    """sentences converted per image (those with at least one box)"""


_BASES = {"preference": _WithFacts, "ppo-prompts": _WithFacts, "vqav2": _WithTurns, "aokvqa": _Aokvqa,
          "flickr30k": _Flickr30k}


def _command(name: str, help_: str, input_help: str):
    """FORMAT's subcommand: its flag set, with FORMAT's help on --input."""
    cls = dataclasses.make_dataclass(
        f"Convert_{name.replace('-', '_')}",
        [("input", Annotated[tuple[str, ...], arg(metavar="FILE", help=input_help + " (one or more)")])],
        bases=(_BASES.get(name, ConvertArgs),), namespace={"FORMAT": name}, kw_only=True)
    return Annotated[cls, tyro.conf.subcommand(name, description=help_)]


Command = Union[tuple(_command(name, *helps) for name, helps in FORMATS.items())]  # type: ignore[valid-type]


def parse_args(argv: list[str] | None = None) -> ConvertArgs:
    args = tyro.cli(Command, args=argv, prog="convert.py", description=__doc__)
    if not args.input:
        print("convert.py: error: --input needs at least one FILE", file=sys.stderr)
        raise SystemExit(2)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from jaxlava.data.convert_common import ConversionError, load_length_check
    from jaxlava.data.convert_sources import Options, convert
    opts = Options(image_dir=args.image_dir, facts=getattr(args, "facts", None),
                   max_turns=getattr(args, "max_turns", 8), variant=getattr(args, "variant", "mc"),
                   annotations_dir=getattr(args, "annotations_dir", None), per_image=getattr(args, "per_image", 1),
                   source=args.source)
    try:
        lc = load_length_check(args.tokenizer, args.max_tokens, args.image_tokens)
        convert(args.FORMAT, list(args.input), args.out, opts=opts, split=args.split, strict=args.strict,
                length_check=lc, quiet=args.quiet)
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
