r"""The claim's three checks on three systems' shapes-judge folders (written by eval/shapes.py): Fact-RLHF lowers
CHAIR-i by at least 30 % of SFT's, its object recall falls by at most 5 % of SFT's, and it hallucinates less than
RLHF without facts; each with the 95 % paired bootstrap interval over the judged images that train/reproduce.py
reports. Give several folders to a system (repeated PPO runs) and its rates are their means.

Prints the table and the checks; --json writes them too. Every folder must have judged the same images.

Example (a PPO variant on a reproduction's reward models, judged into runs/x/judge_facts and judge_nofacts):
  python eval/checks.py --sft runs/reproduce/seed0/judge_sft --nofacts runs/x/judge_nofacts \
      --facts runs/x/judge_facts runs/x/judge_facts_seed100
"""
import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclasses.dataclass
class ChecksConfig:
    sft: list[str]
    """the SFT model's judge folder(s)"""
    nofacts: list[str]
    """judge folder(s) of RLHF without facts (PPO on the no-facts reward model)"""
    facts: list[str]
    """judge folder(s) of Fact-RLHF (PPO on the facts reward model)"""
    json: str | None = None
    """also write the systems and checks to this JSON file"""
    resamples: int = 2000
    """bootstrap resamples of the judged images"""


def main(argv: list[str] | None = None) -> int:
    from jaxlava.fileio import write_json
    from jaxlava.reproduce.compare import compare, markdown
    from jaxlava.training.cli import parse

    cfg = parse(ChecksConfig, sys.argv[1:] if argv is None else argv, description=__doc__)
    try:
        result = compare(cfg.sft, cfg.nofacts, cfg.facts, resamples=cfg.resamples)
    except (FileNotFoundError, ValueError, KeyError) as e:
        raise SystemExit(f"error: {e}") from None
    print(markdown(result))
    if cfg.json:
        write_json(cfg.json, result)
        print(f"\nwritten to {cfg.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
