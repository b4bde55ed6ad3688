"""Gather the results.json of several evaluation runs into one markdown report with PNG bar charts.

Inputs are results.json files or folders (searched recursively). Each result is labelled by its folder, less a
last component named after the benchmark (evals/sft/pope/results.json -> evals/sft) and less the prefix that all
labels share. The report has a summary table (the headline numbers of every benchmark, one row per run) and
one table per benchmark broken down by split, question type or category. Each benchmark gets a PNG
(OUT/<benchmark>.png) with two bar charts: its headline numbers and the breakdown, one bar per run.
"""
from __future__ import annotations

import json
import os

BENCHMARKS = ("pope", "mmhal", "mmbench", "llavabench", "shapes")
TITLES = {"pope": "POPE", "mmhal": "MMHal-Bench", "mmbench": "MMBench", "llavabench": "LLaVA-Bench",
          "shapes": "Shapes world"}
BREAKDOWN_TITLES = {"pope": "F1 per split (%)", "mmhal": "score per question type (0-6)",
                    "mmbench": "accuracy per l2-category (%)", "llavabench": "relative score per category (%)",
                    "shapes": "POPE F1 per split (%)"}


def headline(res: dict) -> dict[str, float]:
    """The numbers a paper table shows for one benchmark result."""
    b = res.get("benchmark")
    if b == "pope":
        return {"POPE F1 (mean %)": 100 * res["overall"]["f1"], "POPE yes (mean %)": 100 * res["overall"]["yes_ratio"]}
    if b == "mmhal":
        return {"MMHal score": res["average"], "MMHal hallucination rate": res["hallucination_rate"]}
    if b == "mmbench":
        return {"MMBench (%)": 100 * res["overall"]}
    if b == "llavabench":
        return {"LLaVA-Bench (%)": res["scores"]["all"]["relative"]}
    if b == "shapes":
        out = {"shapes POPE F1 (%)": 100 * res["pope"]["overall"]["f1"],
               "shapes POPE yes (%)": 100 * res["pope"]["overall"]["yes_ratio"]}
        if "descriptions" in res:
            d = res["descriptions"]
            out.update({"CHAIR-i (%)": 100 * d["chair_i"], "CHAIR-s (%)": 100 * d["chair_s"],
                        "object recall (%)": 100 * d["recall"], "rating (0-6)": res["rating"]["average"]})
        return out
    raise ValueError(f"unknown benchmark {b!r} in a results.json")


def breakdown(res: dict) -> dict[str, float]:
    b = res["benchmark"]
    if b == "pope":
        return {k: 100 * v["f1"] for k, v in res["splits"].items()}
    if b == "mmhal":
        return dict(res["by_type"])
    if b == "mmbench":
        return {k: 100 * v for k, v in res["by_l2"].items()}
    if b == "shapes":
        return {k: 100 * v["f1"] for k, v in res["pope"]["splits"].items()}
    return {k: v["relative"] for k, v in res["scores"].items() if k != "all"}


def find_results(paths: list[str]) -> list[str]:
    found = []
    for p in paths:
        if os.path.isfile(p):
            found.append(p)
        elif os.path.isdir(p):
            for root, _, files in sorted(os.walk(p)):
                if "results.json" in files:
                    found.append(os.path.join(root, "results.json"))
        else:
            raise FileNotFoundError(f"no results.json or folder at {p}")
    if not found:
        raise FileNotFoundError(f"no results.json under {', '.join(paths)}")
    return found


def load_runs(paths: list[str], names: list[str] | None = None) -> list[tuple[str, dict]]:
    """[(label, results)] for the results.json files found under `paths`."""
    files = find_results(paths)
    runs = []
    for f in files:
        with open(f, encoding="utf-8") as fh:
            res = json.load(fh)
        folder = os.path.dirname(os.path.abspath(f))
        if os.path.basename(folder) in BENCHMARKS:
            folder = os.path.dirname(folder)
        runs.append((folder, res))
    if names:
        labels = sorted({r[0] for r in runs})
        if len(names) != len(labels):
            raise ValueError(f"{len(names)} --names for {len(labels)} runs ({', '.join(labels)})")
        rename = dict(zip(labels, names))
        return [(rename[f], r) for f, r in runs]
    prefix = os.path.commonpath([r[0] for r in runs]) if len(runs) > 1 else os.path.dirname(runs[0][0])
    return [(os.path.relpath(f, prefix) if f != prefix else os.path.basename(f), r) for f, r in runs]


def _table(row_names: list[str], columns: list[str], values: dict[tuple[str, str], float]) -> str:
    def cell(v):
        return "" if v is None else f"{v:.2f}" if abs(v) < 10 else f"{v:.1f}"
    lines = ["| Run | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    lines += [f"| {r} | " + " | ".join(cell(values.get((r, c))) for c in columns) + " |" for r in row_names]
    return "\n".join(lines)


def _bars(ax, title: str, row_names: list[str], columns: list[str], values: dict) -> None:
    import numpy as np
    x = np.arange(len(columns))
    width = 0.8 / max(len(row_names), 1)
    for i, r in enumerate(row_names):
        ys = [values.get((r, c)) for c in columns]
        ax.bar(x + (i - (len(row_names) - 1) / 2) * width, [np.nan if y is None else y for y in ys], width, label=r)
    tilt = len(columns) > 4
    ax.set_xticks(x, columns, rotation=30 if tilt else 0, ha="right" if tilt else "center", fontsize="small")
    ax.set_title(title, fontsize="medium")
    ax.grid(axis="y", alpha=0.3)


def _chart(path: str, panels: list[tuple[str, list[str], list[str], dict]]) -> None:
    """One PNG with a bar chart per panel (title, runs, columns, values); runs share colours and one legend."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    widths = [max(2.5, 0.5 * len(cols) * max(1, len(rows)) ** 0.5 + 1.5) for _, rows, cols, _ in panels]
    fig, axes = plt.subplots(1, len(panels), figsize=(sum(widths), 3.8), squeeze=False,
                             gridspec_kw={"width_ratios": widths})
    for ax, (title, rows, cols, vals) in zip(axes[0], panels):
        _bars(ax, title, rows, cols, vals)
    if len(panels[0][1]) > 1:
        axes[0][-1].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _grid(runs: list, measure) -> tuple[list, list, dict]:
    """(row labels, columns, {(label, column): value}) of `measure(results)` over the runs, in first-seen order."""
    values, columns = {}, []
    for label, res in runs:
        for k, v in measure(res).items():
            values[(label, k)] = v
            columns.append(k)
    return list(dict.fromkeys(label for label, _ in runs)), list(dict.fromkeys(columns)), values


def report(paths: list[str], out: str, names: list[str] | None = None) -> str:
    """Write OUT/report.md and the PNG charts; returns the markdown."""
    runs = load_runs(paths, names)
    os.makedirs(out, exist_ok=True)
    row_names, columns, values = _grid(runs, headline)
    md = ["# Evaluation report", "", "## Summary", "", _table(row_names, columns, values), ""]
    for bench in BENCHMARKS:
        mine = [(label, res) for label, res in runs if res.get("benchmark") == bench]
        if not mine:
            continue
        rows, cols, vals = _grid(mine, breakdown)
        png = f"{bench}.png"
        heads = list(headline(mine[0][1]))
        head_vals = {k: v for k, v in values.items() if k[1] in heads}
        _chart(os.path.join(out, png), [(TITLES[bench], rows, heads, head_vals),
                                        (BREAKDOWN_TITLES[bench], rows, cols, vals)])
        md += [f"## {TITLES[bench]}: {BREAKDOWN_TITLES[bench]}", "", _table(rows, cols, vals), "", f"![{bench}]({png})",
               ""]
    text = "\n".join(md)
    from jaxlava.fileio import write_text
    write_text(os.path.join(out, "report.md"), text)
    return text
