"""Gather the results.json of several evaluation runs into OUT/report.md and PNG bar charts.

Give results.json files or folders (searched recursively). Runs are labelled by their folders (or --names, in
sorted folder order); each benchmark gets a table and a chart broken down by split, question type or category.

Example:
  python eval/report.py --runs evals/sft evals/rlhf --out evals/report
"""
import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclasses.dataclass
class ReportConfig:
    runs: list[str]
    """results.json files, or folders to search for them"""
    out: str = "evals/report"
    """folder for report.md and the PNG charts"""
    names: list[str] | None = None
    """labels for the runs, in the sorted order of their folders (default: the folders)"""


def main(argv: list[str] | None = None) -> int:
    import tyro

    from jaxlava.eval.report import report
    cfg = tyro.cli(ReportConfig, args=sys.argv[1:] if argv is None else argv, description=__doc__)
    try:
        print(report(cfg.runs, cfg.out, cfg.names))
    except (FileNotFoundError, ValueError, KeyError) as e:
        raise SystemExit(f"error: {e}") from None
    print(f"\nwritten to {os.path.join(cfg.out, 'report.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
