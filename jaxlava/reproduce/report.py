"""The reproduction's numbers and verdict: per seed and over seeds (mean, std, min, max), the acceptance checks,
OUT/results.json, OUT/results.md and two plots (OUT/systems.png, OUT/ppo_hallucination.png).

Everything is read back from the stage folders (the shapes judges' results.json, the trainers' metrics.jsonl,
the stage.json each finished stage leaves), so a report can be rebuilt from a finished OUT at any time.
"""
from __future__ import annotations

import json
import math
import os
import re

from jaxlava.eval.pope import SPLITS
from jaxlava.fileio import write_json, write_text
from jaxlava.reproduce.uncertainty import seed_intervals
from jaxlava.training.metrics import read_metrics

# the stage folders of one seed (OUT/seed<S>/...)
SFT, RLINIT = "sft", "rlinit"
RM = {"facts": "rm_facts", "nofacts": "rm_nofacts"}
PPO = {"facts": "ppo_facts", "nofacts": "ppo_nofacts"}
PAIRS = "rm_pairs"  # on-policy preference pairs for both reward models (jaxlava/training/rm_pairs.py)
AUDIT, AUDIT_FILE = "rm_audit", "audit.json"  # the on-policy reward-model audit (jaxlava/training/rm_audit.py)
# the judged systems: key, label, the PPO run behind it (None: the SFT model)
SYSTEMS = (("sft", "SFT", None), ("rlhf_nofacts", "RLHF (no facts)", "nofacts"), ("fact_rlhf", "Fact-RLHF", "facts"))
MARKER = "stage.json"  # written into a stage folder when the stage has finished
GROUND = "ground"  # OUT/seed<S>/ground: the grounding stage's run
GROUND_MORE = "ground_more"  # OUT/seed<S>/ground_more<i>: grounding phase i + 1 (--ground-more, --ground-bar)
SFT_BAR = {"pope_random_accuracy": 0.75, "recall": 0.70}  # the bar for the SFT model before RLHF
RESULTS, TABLE = "results.json", "results.md"
SYSTEMS_PLOT, CURVE_PLOT = "systems.png", "ppo_hallucination.png"
CHAIR_DROP, RECALL_FALL = 0.30, 0.05  # the acceptance thresholds (relative to SFT)
PAPER = {  # the paper's published numbers (Sun et al. 2023, 7B policy), beside our rows
    "sft": "LLaVA-SFT+ 7B: MMHal 1.76 (hallucination rate 0.67); POPE mean F1 82.7, yes 47.1 %",
    "rlhf_nofacts": "vanilla RLHF (7B policy, 13B RM without facts): MMHal 1.8",
    "fact_rlhf": "Fact-RLHF: MMHal 2.1 in the ablation (LLaVA-RLHF 7B: 2.05); POPE mean F1 81.5, yes 41.8 %",
}
RM_ROWS = (("facts", "RM with facts (each pair's own)", "high: the facts expose the hallucinated response"),
           ("other_facts", "RM with facts, another pair's", "falls toward chance (the RM reads the facts)"),
           ("no_facts", "RM without facts", "lower than with facts"))
# logged only by reward models trained with image dropout (--rm-image-dropout): every held-out image blanked
BLANK_RM_ROWS = (("facts_blank_image", "RM with facts, blank image", "the facts alone (ours; not in the paper)"),
                 ("no_facts_blank_image", "RM without facts, blank image", "near chance: nothing left to judge by"))
# the audit stage (--audit-prompts): the share of dominant hallucination pairs of the RL-init policy's own samples
# each reward model ranks right (fewer absent objects and no fewer present ones wins; 50 % is no signal)
AUDIT_RM_ROWS = (("audit_facts", "RM with facts, on the policy's samples", "ours: the signal PPO gets (50 % = none)"),
                 ("audit_other_facts", "RM with facts, another prompt's, on the policy's samples",
                  "ours: lower if it reads the facts"),
                 ("audit_no_facts", "RM without facts, on the policy's samples", "ours: lower than with facts"),
                 # the share of the score's variance left within each prompt's samples (rm_audit.within_prompt_share)
                 ("audit_facts_within", "RM with facts, score variance within prompts",
                  "ours: the part that ranks responses to one image; the rest ranks images (decisions 38)"),
                 ("audit_no_facts_within", "RM without facts, score variance within prompts", "ours"))


def member_rows(keys) -> tuple:
    """RM_ROWS for the further --rm-ensemble members whose numbers are among `keys` (facts_e1 ...)."""
    ks = sorted({int(k.rsplit("_e", 1)[1]) for k in keys if re.fullmatch(r"(other_)?(no_)?facts_e\d+", k)})
    return tuple((f"{key}_e{k}", f"{label}: ensemble member {k + 1}", "ours (--rm-ensemble): PPO scores with the mean")
                 for k in ks for key, label, _ in RM_ROWS)


def ground_phase(i: int) -> str:
    """The stage of grounding phase i + 1 (phase 0: the grounding stage itself)."""
    return f"{GROUND_MORE}{i}" if i else GROUND


def ground_losses(seed_folder: str) -> list[float | None]:
    """The held-out loss at the end of each finished grounding phase, in order (the grounding stage, then
    ground_more<i>; [] without one; None where a phase recorded none)."""
    losses = []
    while os.path.exists(marker := os.path.join(seed_folder, ground_phase(len(losses)), MARKER)):
        with open(marker) as f:
            losses.append(json.load(f)["result"].get("eval_loss"))
    return losses


def sft_bar(seed_folder: str, sft: dict) -> dict:
    """The SFT model against the issue's bar (`sft`: its judge numbers), with its grounding phases' losses."""
    got = {k: sft.get(k) for k in SFT_BAR}
    return {"ground_losses": ground_losses(seed_folder), **got,
            "meets": all(got[k] is not None and got[k] >= bar for k, bar in SFT_BAR.items())}


def seed_dir(out: str, seed: int) -> str:
    return os.path.join(out, f"seed{seed}")


def repeat_suffix(repeat: int) -> str:
    """The folder suffix of PPO repeat r (`--ppo-repeats`): none for the first, so that one run keeps its layout."""
    return f"_r{repeat}" if repeat else ""


def judge_dir(out: str, seed: int, system: str, repeat: int = 0) -> str:
    return os.path.join(seed_dir(out, seed), f"judge_{system}{repeat_suffix(repeat)}")


def ppo_dir(out: str, seed: int, which: str, repeat: int = 0) -> str:
    return os.path.join(seed_dir(out, seed), PPO[which] + repeat_suffix(repeat))


def _last(rows: list[dict], key: str) -> float | None:
    return next((float(r[key]) for r in reversed(rows) if key in r), None)


def system_numbers(results: dict) -> dict:
    """The shapes judges' results.json -> flat numbers: CHAIR-i/-s, recall, rating, POPE per split and mean."""
    d, pope = results.get("descriptions", {}), results["pope"]
    out = {"chair_i": d.get("chair_i"), "chair_s": d.get("chair_s"), "recall": d.get("recall"),
           "repeats": d.get("repeats"), "empty": d.get("empty"),
           **{f"habit_{k}": d["habit"][k] for k in ("rate", "share", "chair_i_other")
                                           if "habit" in d},
           **{f"recall_{k}_objects": g["recall"] for k, g in d.get("recall_by_objects", {}).items()},
           "rating": results.get("rating", {}).get("average"),
           "rating_hallucination_rate": results.get("rating", {}).get("hallucination_rate")}
    for split in SPLITS:
        m = pope["splits"].get(split, {})
        out.update({f"pope_{split}_{k}": m.get(k) for k in ("f1", "accuracy", "yes_ratio")})
    out.update({f"pope_mean_{k}": pope["overall"].get(k) for k in ("f1", "accuracy", "yes_ratio")})
    return out


def ppo_numbers(run_dir: str) -> dict:
    """PPO's last logged KL and response length (training rollouts) and its last held-out evaluation."""
    rows = read_metrics(run_dir)
    keys = ("kl", "response_length", "score", "eval_kl", "eval_response_length", "eval_score", "eval_chair_i",
            "eval_chair_s", "eval_recall")
    return {k: _last(rows, k) for k in keys}


def rm_numbers(out: str, seed: int) -> dict:
    out_dir = seed_dir(out, seed)
    facts, none = (read_metrics(os.path.join(out_dir, RM[k])) for k in ("facts", "nofacts"))
    out = {"facts": _last(facts, "eval_accuracy"), "other_facts": _last(facts, "eval_accuracy_other_facts"),
           "no_facts": _last(none, "eval_accuracy")}
    k = 1  # the further members of --rm-ensemble, each kind's k-th in <folder>_e<k>
    while all(os.path.isdir(os.path.join(out_dir, f"{RM[w]}_e{k}")) for w in RM):
        f, n = (read_metrics(os.path.join(out_dir, f"{RM[w]}_e{k}")) for w in ("facts", "nofacts"))
        out |= {f"facts_e{k}": _last(f, "eval_accuracy"), f"other_facts_e{k}": _last(f, "eval_accuracy_other_facts"),
                f"no_facts_e{k}": _last(n, "eval_accuracy")}
        k += 1
    blank = {"facts_blank_image": _last(facts, "eval_accuracy_blank_image"),
             "no_facts_blank_image": _last(none, "eval_accuracy_blank_image")}
    return out | {k: v for k, v in {**blank, **audit_numbers(out_dir)}.items() if v is not None}


def audit_numbers(seed_folder: str) -> dict:
    """The audit stage's dominant-pair accuracies and within-prompt variance shares ({} when the stage did not run;
    a share is None in audits made before it was recorded)."""
    marker = os.path.join(seed_folder, AUDIT, MARKER)
    if not os.path.exists(marker):
        return {}
    with open(marker) as f:
        models = json.load(f)["result"]["reward_models"]

    def model(which: str) -> dict:
        return next((r for path, r in models.items() if os.path.basename(os.path.dirname(path)) == RM[which]), {})

    def of(which: str, variant: str):
        return model(which).get(variant, {}).get("dominant", {}).get("accuracy")
    return {"audit_facts": of("facts", "own"), "audit_other_facts": of("facts", "other"),
            "audit_no_facts": of("nofacts", "own"), "audit_facts_within": model("facts").get("within_prompt_share"),
            "audit_no_facts_within": model("nofacts").get("within_prompt_share")}


def judged(out: str, seed: int, system: str, repeat: int = 0) -> dict:
    with open(os.path.join(judge_dir(out, seed, system, repeat), "results.json")) as f:
        return system_numbers(json.load(f))


def mean_of(trees: list[dict]) -> dict:
    """Trees of numbers with the same keys -> the tree of their means (None entries left out)."""
    return means(summarize(dict(enumerate(trees))))


def rlhf_runs(out: str, seed: int, repeats: int = 1) -> list[dict]:
    """Both RLHF systems' judge numbers, per PPO repeat of one seed."""
    return [{key: judged(out, seed, key, r) for key, _, run in SYSTEMS if run} for r in range(repeats)]


def seed_numbers(out: str, seed: int, rlhf: list[dict]) -> dict:
    """Every number of one seed: {"systems": {system: ...}, "rm": ..., "ppo": {"facts"|"nofacts": ...}}.  `rlhf`
    (`rlhf_runs`) holds one entry per PPO run of each reward model; the RLHF systems' and PPO's numbers are the
    means over them."""
    repeats = len(rlhf)
    systems = {"sft": judged(out, seed, "sft")} | mean_of(rlhf)
    ppo = {k: mean_of([ppo_numbers(ppo_dir(out, seed, k, r)) for r in range(repeats)]) for k in PPO}
    return {"systems": systems, "rm": rm_numbers(out, seed), "ppo": ppo}


def ppo_seed_of(run_dir: str) -> int | None:
    """The seed a finished PPO stage ran with (its stage.json), None where it did not finish."""
    marker = os.path.join(run_dir, MARKER)
    if not os.path.exists(marker):
        return None
    with open(marker) as f:
        return json.load(f)["settings"].get("seed")


def repeat_checks(out: str, seed: int, rlhf: list[dict], sft: dict) -> list[dict]:
    """Each PPO repeat of one seed on its own (`rlhf`: `rlhf_runs`): its PPO seed, both RLHF systems' CHAIR-i and
    recall, its checks."""
    rows = []
    for r, run in enumerate(rlhf):
        s = {key: {k: numbers[k] for k in ("chair_i", "recall")} for key, numbers in run.items()}
        rows.append({"repeat": r, "ppo_seed": ppo_seed_of(ppo_dir(out, seed, "facts", r)), "systems": s,
                     "checks": acceptance(sft, s["rlhf_nofacts"], s["fact_rlhf"])})
    return rows


def summarize(per_seed: dict) -> dict:
    """The per-seed trees (seed -> tree of numbers) -> one tree whose leaves are {mean, std, min, max, n}
    (std: sample standard deviation, 0 for one seed; None entries are left out)."""
    trees = list(per_seed.values())
    if isinstance(trees[0], dict):
        return {k: summarize({s: t[k] for s, t in per_seed.items() if k in t}) for k in trees[0]}
    xs = [float(x) for x in trees if x is not None]
    if not xs:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    mean = sum(xs) / len(xs)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return {"mean": mean, "std": std, "min": min(xs), "max": max(xs), "n": len(xs)}


def means(summary: dict) -> dict:
    """A summary tree -> the tree of its means."""
    if "mean" in summary and "n" in summary:
        return summary["mean"]
    return {k: means(v) for k, v in summary.items()}


# ----------------------------------------------------------------------------------------------- acceptance
def acceptance(sft: dict, nofacts: dict, fact: dict) -> list[dict]:
    """The three checks of the claim on one set of numbers (each {"chair_i", "recall"}):
    1. Fact-RLHF lowers CHAIR-i by >= 30% relative to SFT;
    2. Fact-RLHF's object recall falls by at most 5% relative to SFT's;
    3. Fact-RLHF's CHAIR-i is below the no-facts RLHF's.
    An SFT CHAIR-i of 0 leaves nothing to lower (check 1 fails); an SFT recall of 0 cannot fall (check 2 passes);
    a missing number fails every check."""
    eps = 1e-12
    texts = (f"Fact-RLHF lowers CHAIR-i by >= {CHAIR_DROP:.0%} relative to SFT",
             f"object recall falls by at most {RECALL_FALL:.0%} relative to SFT",
             "Fact-RLHF CHAIR-i < RLHF (no facts) CHAIR-i")
    names = ("chair_i_drop", "recall_kept", "facts_beat_no_facts")
    if any(n.get(k) is None for n in (sft, nofacts, fact) for k in ("chair_i", "recall")):
        return [{"check": c, "text": t, "value": None, "pass": False} for c, t in zip(names, texts)]
    drop = (sft["chair_i"] - fact["chair_i"]) / sft["chair_i"] if sft["chair_i"] > 0 else 0.0
    fall = (sft["recall"] - fact["recall"]) / sft["recall"] if sft["recall"] > 0 else 0.0
    values = (drop, fall, fact["chair_i"] - nofacts["chair_i"])
    passed = (drop >= CHAIR_DROP - eps, fall <= RECALL_FALL + eps, fact["chair_i"] < nofacts["chair_i"])
    return [{"check": c, "text": t, "value": v, "pass": bool(p)} for c, t, v, p in zip(names, texts, values, passed)]


def all_checks(per_seed: dict, overall: dict, intervals: dict | None = None) -> dict:
    """{"per_seed": {seed: checks}, "overall": checks on the means over seeds, "passed": every overall check}.
    `intervals` ({seed: `uncertainty.bootstrap_checks` or None}) adds each per-seed check's sampling interval."""
    def on(systems):
        return acceptance(systems["sft"], systems["rlhf_nofacts"], systems["fact_rlhf"])
    out = {"per_seed": {s: on(n["systems"]) for s, n in per_seed.items()}, "overall": on(overall["systems"])}
    for s, checks in out["per_seed"].items():
        for c, iv in zip(checks, (intervals or {}).get(s) or ()):
            c["interval"] = {k: iv[k] for k in ("se", "low", "high")}
    out["passed"] = all(c["pass"] for c in out["overall"])
    return out


# ----------------------------------------------------------------------------------------------- curves
def ppo_curve(out: str, seed: int, which: str, repeat: int = 0) -> list[tuple[int, float]]:
    """(PPO step, held-out CHAIR-i): step 0 from the run's before-PPO evaluation (its stage.json), then every
    logged evaluation (metrics.jsonl)."""
    run = ppo_dir(out, seed, which, repeat)
    points = []
    marker = os.path.join(run, MARKER)
    if os.path.exists(marker):
        with open(marker) as f:
            before = ((json.load(f).get("result") or {}).get("before") or {}).get("chair_i")
        if before is not None:
            points.append((0, float(before)))
    points += [(int(r["step"]), float(r["eval_chair_i"])) for r in read_metrics(run) if "eval_chair_i" in r]
    return points


# ----------------------------------------------------------------------------------------------- writing
def _cell(s: dict | None, pct: bool = True, digits: int = 1) -> str:
    if not s or s.get("mean") is None:
        return "–"
    k = 100 if pct else 1
    text = f"{k * s['mean']:.{digits}f}"
    return text + (f" ± {k * s['std']:.{digits}f}" if s["n"] > 1 else "")


def _table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def markdown(results: dict) -> str:
    """results.md: the systems beside the paper's claims, the RM accuracies, the acceptance checks, wall times."""
    summ, seeds = results["summary"], results["seeds"]
    pope = [f"POPE F1 {s[:3]}" for s in SPLITS] + [f"yes {s[:3]}" for s in SPLITS]
    head = ["system", "CHAIR-i %", "CHAIR-s %", "recall %", "repeats %", "no object %", "partner named %", *pope,
            "rating (0-6)", "KL", "length", "paper's claim"]
    rows = []
    for key, label, run in SYSTEMS:
        n = summ["systems"][key]
        ppo = summ["ppo"][run] if run else {}
        rows.append([label, _cell(n["chair_i"]), _cell(n["chair_s"]), _cell(n["recall"]), _cell(n.get("repeats")),
                     _cell(n.get("empty")), _cell(n.get("habit_rate")),
                     *[_cell(n[f"pope_{s}_f1"]) for s in SPLITS], *[_cell(n[f"pope_{s}_yes_ratio"]) for s in SPLITS],
                     _cell(n["rating"], pct=False, digits=2), _cell(ppo.get("kl"), pct=False, digits=2),
                     _cell(ppo.get("response_length"), pct=False), PAPER[key]])
    rm = [[label, _cell(summ["rm"][k]), claim] for k, label, claim in
          RM_ROWS + member_rows(summ["rm"]) + BLANK_RM_ROWS + AUDIT_RM_ROWS if k in summ["rm"]]
    names = list(results["checks"]["per_seed"])
    checks = []
    for i, c in enumerate(results["checks"]["overall"]):
        per = [results["checks"]["per_seed"][s][i] for s in names]
        checks.append([c["text"], *[_verdict(x) for x in per], _verdict(c)])
    overall = "PASS" if results["checks"]["passed"] else "FAIL"
    sec = results["seconds"]
    parts = [
        f"# Shapes-world reproduction: Fact-RLHF vs SFT vs RLHF without facts (recipe `{results['recipe']}`, "
        f"seeds {', '.join(seeds)})",
        "Object hallucination of descriptions of held-out images (CHAIR-i: hallucinated mentions / mentions; "
        "CHAIR-s: descriptions with a hallucination; recall: present objects named; no object: descriptions "
        "naming none), POPE on the world's probes, "
        "MMHal-style rating; all exact from the ground truth (jaxlava/eval/shapes.py). KL and length: PPO's last "
        "training rollouts. Mean ± sample std over seeds"
        + (" (each seed's RLHF rows: the mean over its PPO repeats, below)." if results.get("repeats") else "."),
        _table(head, rows),
        "## Reward-model accuracy (held-out preference pairs, %; \"on the policy's samples\": the audit before "
        "PPO, eval/rm_audit.py)",
        _table(["reward model", "accuracy %", "paper's claim"], rm),
        f"## Acceptance checks: {overall}",
        "Per seed, and on the means over seeds (overall); the number is the relative CHAIR-i drop, the relative "
        "recall fall and the CHAIR-i difference (Fact-RLHF − no facts). In brackets, per seed: the 95 % interval "
        "of a paired bootstrap over the judged images (jaxlava/reproduce/uncertainty.py), the spread that the "
        "judge set's size alone allows; an interval across the threshold means this many images do not decide "
        "the check.",
        _table(["check", *[f"seed {s}" for s in names], "overall"], checks),
        *_repeats_section(results),
        *_sft_bar_section(results),
        "## Wall time",
        _table(["seed", *results["stage_names"], "all"],
               [[s, *[f"{sec['stages'][s].get(st, 0):.0f} s" for st in results["stage_names"]],
                 f"{sum(sec['stages'][s].values()):.0f} s"] for s in sec["stages"]])
        + f"\n\nworld {sec['world']:.0f} s; every stage together {sec['all_stages']:.0f} s; "
          f"this command {sec['this_command']:.0f} s.",
    ]
    return "\n\n".join(parts) + "\n"


def _sft_bar_section(results: dict) -> list[str]:
    """results.md's table of each seed's SFT model against the issue's bar, with its grounding phases' losses."""
    bars = results.get("sft_bar") or {}
    if not bars:
        return []
    rows = [[s, " → ".join("–" if x is None else f"{x:.4f}" for x in b["ground_losses"]) or "no grounding stage",
             *("–" if b[k] is None else f"{100 * b[k]:.1f}" for k in SFT_BAR),
             "meets it" if b["meets"] else "**misses it**"] for s, b in bars.items()]
    pope, recall = (100 * SFT_BAR[k] for k in ("pope_random_accuracy", "recall"))
    return [f"## The SFT model before RLHF (the bar: POPE random accuracy ≥ {pope:.0f} %, recall ≥ {recall:.0f} %)",
            "With the grounding stage's held-out loss at the end of each phase that ran (--ground-bar, "
            "--ground-more: a further phase runs while the last ended above the bar).",
            _table(["seed", "grounding held-out loss", "POPE random accuracy %", "recall %", "SFT bar"], rows)]


def _repeats_section(results: dict) -> list[str]:
    """results.md's table of each PPO repeat on its own (none without repeats)."""
    reps = results.get("repeats") or {}
    if not reps:
        return []
    n = len(next(iter(reps.values())))
    pair = lambda x: f"{100 * x['chair_i']:.2f} / {100 * x['recall']:.1f}"  # noqa: E731
    rows = [[s, str(r["ppo_seed"]), pair(r["systems"]["rlhf_nofacts"]), pair(r["systems"]["fact_rlhf"]),
             *[_verdict(c) for c in r["checks"]]] for s, runs in reps.items() for r in runs]
    return [f"## PPO repeats ({n} per reward model and seed)",
            "The RLHF rows, PPO's numbers and each seed's checks above are the means over these runs: every stage "
            "before PPO is shared, and only PPO's seed (its rollout sampling, minibatch order and value head) "
            "differs. Each run on its own, CHAIR-i % / recall %:",
            _table(["seed", "PPO seed", "RLHF (no facts)", "Fact-RLHF", "CHAIR-i drop", "recall fall",
                    "facts − no facts"], rows)]


def systems_table(results: dict) -> str:
    """The three systems in one short table (the end of `make demo`): hallucination, recall, POPE, rating."""
    summ = results["summary"]["systems"]
    head = ["system", "CHAIR-i %", "CHAIR-s %", "recall %", "POPE F1 random", "POPE yes random", "rating (0-6)"]
    rows = [[label, _cell(summ[key]["chair_i"]), _cell(summ[key]["chair_s"]), _cell(summ[key]["recall"]),
             _cell(summ[key]["pope_random_f1"]), _cell(summ[key]["pope_random_yes_ratio"]),
             _cell(summ[key]["rating"], pct=False, digits=2)] for key, label, _ in SYSTEMS]
    return _table(head, rows)


def _verdict(c: dict) -> str:
    v = c["value"]
    if v is None:
        return "FAIL (no numbers)"
    pt = c["check"] == "facts_beat_no_facts"
    fmt = (lambda x: f"{100 * x:+.2f} pt") if pt else (lambda x: f"{100 * x:+.1f}%")
    iv = c.get("interval")
    shown = fmt(v) + (f" [{fmt(iv['low'])}, {fmt(iv['high'])}]" if iv else "")
    return f"{'pass' if c['pass'] else 'FAIL'} ({shown})"


def plot_systems(summary: dict, path: str) -> None:
    """Grouped bars: CHAIR-i, CHAIR-s, recall and POPE F1 (mean over splits) of the three systems, ± std."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    metrics = (("chair_i", "CHAIR-i"), ("chair_s", "CHAIR-s"), ("recall", "recall"), ("pope_mean_f1", "POPE F1"))
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(SYSTEMS)
    for i, (key, label, _) in enumerate(SYSTEMS):
        vals = [summary["systems"][key][m] for m, _ in metrics]
        ax.bar([j + i * width for j in range(len(metrics))], [100 * (v["mean"] or 0) for v in vals], width,
               yerr=[100 * (v["std"] or 0) for v in vals], capsize=3, label=label)
    ax.set_xticks([j + width * (len(SYSTEMS) - 1) / 2 for j in range(len(metrics))], [m[1] for m in metrics])
    ax.set_ylabel("%")
    ax.set_title("Shapes world: SFT vs RLHF (no facts) vs Fact-RLHF")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_curves(curves: dict, path: str) -> bool:
    """Held-out CHAIR-i over PPO steps for both reward models (each seed thin, the mean over seeds thick).
    `curves`: {"facts"|"nofacts": {seed: [(step, chair_i), ...]}}.  False (nothing drawn) without points."""
    if not any(points for runs in curves.values() for points in runs.values()):
        return False
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    for (which, label), colour in zip((("facts", "Fact-RLHF (RM with facts)"), ("nofacts", "RLHF (RM without facts)")),
                                      ("tab:green", "tab:orange")):
        runs = curves.get(which, {})
        for points in runs.values():
            if points:
                ax.plot(*zip(*[(s, 100 * v) for s, v in points]), color=colour, alpha=0.3, linewidth=1)
        steps = sorted(set.intersection(*[{s for s, _ in p} for p in runs.values()])) if runs else []
        if steps:
            mean = [100 * sum(dict(p)[s] for p in runs.values()) / len(runs) for s in steps]
            ax.plot(steps, mean, color=colour, linewidth=2.5, marker="o", label=label)
    ax.set_xlabel("PPO step")
    ax.set_ylabel("held-out CHAIR-i (%)")
    ax.set_title("Object hallucination of greedy descriptions during PPO")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write_report(out: str, seeds: list[int], recipe: str, stage_names: list[str], seconds: dict,
                 repeats: int = 1) -> dict:
    """Collect, check and write results.json, results.md and the plots for the finished seeds (`repeats`: PPO
    runs per reward model and seed, `--ppo-repeats`)."""
    runs = {str(s): rlhf_runs(out, s, repeats) for s in seeds}
    per_seed = {str(s): seed_numbers(out, s, runs[str(s)]) for s in seeds}
    summary = summarize(per_seed)
    intervals = {str(s): seed_intervals({k: [judge_dir(out, s, k, r) for r in range(repeats if run else 1)]
                                         for k, _, run in SYSTEMS}, acceptance) for s in seeds}
    results = {"recipe": recipe, "seeds": per_seed, "summary": summary,
               "checks": all_checks(per_seed, means(summary), intervals), "stage_names": stage_names,
               "seconds": seconds,
               "sft_bar": {s: sft_bar(seed_dir(out, int(s)), n["systems"]["sft"]) for s, n in per_seed.items()}}
    if repeats > 1:
        results["repeats"] = {str(s): repeat_checks(out, s, runs[str(s)], per_seed[str(s)]["systems"]["sft"])
                              for s in seeds}
    # one curve per PPO run: "<seed>" for the first of a seed, "<seed>.r<r>" for its repeats
    curves = {w: {f"{s}{'.r' + str(r) if r else ''}": ppo_curve(out, s, w, r) for s in seeds for r in range(repeats)}
              for w in PPO}
    results["ppo_curves"] = {w: {s: [list(p) for p in pts] for s, pts in c.items()} for w, c in curves.items()}
    plot_systems(summary, os.path.join(out, SYSTEMS_PLOT))
    results["plots"] = [SYSTEMS_PLOT] + ([CURVE_PLOT] if plot_curves(curves, os.path.join(out, CURVE_PLOT)) else [])
    write_json(os.path.join(out, RESULTS), results, indent=1)
    write_text(os.path.join(out, TABLE), markdown(results))
    return results
