"""The claim's three checks on any three sets of shapes-judge folders (eval/checks.py).

The reproduction (`train/reproduce.py`) checks the systems it trained itself. Experiments outside it (a PPO run
with other settings on a reproduction's reward models, say) end in judge folders of their own; this puts any
three of them side by side: SFT, RLHF without facts and Fact-RLHF, each one judge folder or several (repeated PPO
runs, whose rates are averaged as the report averages a seed's repeats). The checks are `report.acceptance`, the
intervals the report's paired bootstrap over images (`uncertainty.bootstrap_checks`); every number is recomputed
from the judges' judgements.jsonl, so nothing here can disagree with the report on the same folders.
"""
from __future__ import annotations

import json
import os

import numpy as np

from jaxlava.eval.shapes import JUDGEMENTS
from jaxlava.reproduce import report
from jaxlava.reproduce.uncertainty import RESAMPLES, bootstrap_checks, image_counts

ROLES = tuple((key, label) for key, label, _ in report.SYSTEMS)  # (key, label): SFT, RLHF (no facts), Fact-RLHF


def _counts_of(folder: str) -> dict:
    path = os.path.join(folder, JUDGEMENTS)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no judgements (is {folder} a folder written by eval/shapes.py?)")
    return image_counts(path)


def _extras(folder: str) -> dict:
    """Repeats, no-object and partner-named shares from a judge's results.json (None where it has none)."""
    path = os.path.join(folder, report.RESULTS)
    if not os.path.isfile(path):
        return {"repeats": None, "empty": None, "partner_named": None}
    with open(path) as f:
        n = report.system_numbers(json.load(f))
    return {"repeats": n.get("repeats"), "empty": n.get("empty"), "partner_named": n.get("habit_rate")}


def _mean(values: list) -> float | None:
    return None if any(v is None for v in values) else float(np.mean(values))


def compare(sft: list[str], nofacts: list[str], facts: list[str], resamples: int = RESAMPLES) -> dict:
    """{"systems": {role: {"folders", "chair_i", "recall", "repeats", "empty", "partner_named"}}, "checks": the
    three `report.acceptance` checks, each with its "interval" ({"se", "low", "high"})}. A system's rates are the
    means of its folders' rates."""
    folders = dict(zip((r for r, _ in ROLES), (sft, nofacts, facts)))
    for role, dirs in folders.items():
        if not dirs:
            raise ValueError(f"no judge folder for {role}")
    counts = {role: [_counts_of(d) for d in dirs] for role, dirs in folders.items()}
    systems = {}
    for role, runs in counts.items():
        extras = [_extras(d) for d in folders[role]]
        systems[role] = {
            "folders": list(folders[role]),
            "chair_i": _mean([c["hallucinated"].sum() / max(c["mentioned"].sum(), 1) for c in runs]),
            "recall": _mean([c["recalled"].sum() / max(c["present"].sum(), 1) for c in runs]),
            **{k: _mean([e[k] for e in extras]) for k in ("repeats", "empty", "partner_named")}}
    checks = report.acceptance(*(systems[r] for r, _ in ROLES))
    intervals = bootstrap_checks(counts["sft"], counts["rlhf_nofacts"], counts["fact_rlhf"], report.acceptance,
                                 resamples=resamples)
    for c, iv in zip(checks, intervals):
        c["interval"] = {k: iv[k] for k in ("se", "low", "high")}
    return {"systems": systems, "checks": checks, "passed": all(c["pass"] for c in checks)}


def markdown(result: dict) -> str:
    """The systems (CHAIR-i, recall, repeats, no object named, partner named, in %) and the checks with their
    intervals."""
    def pct(x):
        return "–" if x is None else f"{100 * x:.2f}"
    rows = [[label, str(len(result["systems"][role]["folders"])),
             *(pct(result["systems"][role][k]) for k in ("chair_i", "recall", "repeats", "empty", "partner_named"))]
            for role, label in ROLES]
    head = ["system", "runs", "CHAIR-i %", "recall %", "repeats %", "no object %", "partner named %"]
    lines = [report._table(head, rows), ""]
    lines += [f"- {c['text']}: {report._verdict(c)}" for c in result["checks"]]
    verdict = "all three checks pass" if result["passed"] else "not every check passes"
    lines += ["", f"{''.join('P' if c['pass'] else 'F' for c in result['checks'])}: {verdict} (95 % paired "
              "bootstrap intervals over images)"]
    return "\n".join(lines)
