"""MMHal-Bench (96 adversarial questions, judged 0-6 by an LLM): rating parsing and scores (spec A2), and `run`.

Rating parsing, as the official eval_gpt4.py: for s in 0..6, look for "rating: s" in the lowercased reply. One
match gives s; no match or several give 0 (and the reply is counted as unparseable).

Scores: the average rating; the hallucination rate, the share of ratings below 3 (0-2 mean "with
hallucination"); and the average per question type, grouped by the `question_type` field (the official script
groups by position, i % 8, which is the same grouping for the unchanged file).
"""
from __future__ import annotations

import dataclasses

from jaxlava.eval.judge import JudgeOptions
from jaxlava.eval.runner import Defaults, EvalConfig, EvalError

TYPES = ("attribute", "adversarial", "comparison", "counting", "relation", "environment", "holistic", "other")
DEFAULTS = Defaults(temperature=0.0, max_new_tokens=1024, pad_to_square=True)  # eval_mmhal.sh: greedy, no suffix
JUDGE_MODEL = "gpt-4-0314"  # the official judge (retired)
JUDGE_PARAMS = {"temperature": 0.0}  # one user message, no system message, no max_tokens
OFFICIAL_COUNT = 96


def ratings_found(reply: str | None) -> list[int]:
    low = (reply or "").lower()
    return [s for s in range(7) if f"rating: {s}" in low]


def parse_rating(reply: str | None) -> int:
    """The judge's 0-6 rating; 0 when the reply has no rating or several different ones."""
    found = ratings_found(reply)
    return found[0] if len(found) == 1 else 0


def summarize(records: list[dict]) -> dict:
    """records with `question_type` and `score` -> average, hallucination rate (score < 3), per-type averages."""
    if not records:
        raise ValueError("no MMHal-Bench records to summarize")
    scores = [r["score"] for r in records]
    groups: dict[str, list[float]] = {}
    for r in records:
        groups.setdefault(str(r["question_type"]), []).append(r["score"])
    order = [t for t in TYPES if t in groups] + sorted(t for t in groups if t not in TYPES)
    return {"average": sum(scores) / len(scores),
            "hallucination_rate": sum(s < 3 for s in scores) / len(scores),
            "by_type": {t: sum(groups[t]) / len(groups[t]) for t in order}}


def table(summary: dict) -> str:
    from jaxlava.eval.runner import markdown_table
    types = list(summary["by_type"])
    head = markdown_table(["Average score (0-6)", "Hallucination rate"],
                          [[f"{summary['average']:.2f}", f"{summary['hallucination_rate']:.2f}"]])
    per_type = markdown_table(["Type"] + types, [["Score"] + [f"{summary['by_type'][t]:.2f}" for t in types]])
    return head + "\n\n" + per_type


def image_contents(record: dict) -> str:
    content = record.get("image_content") or []
    return ", ".join(content) if isinstance(content, list) else str(content)


def judge_request(record: dict, answer: str, model: str, template: str | None = None) -> dict:
    from jaxlava.eval import prompts
    from jaxlava.eval.judge import make_body
    text = prompts.mmhal_prompt(image_contents(record), record["question"], record["gt_answer"], answer, template)
    return make_body(model, [{"role": "user", "content": text}], **JUDGE_PARAMS)


def score(records: list[dict], replies: list[str | None]) -> dict:
    """Official-format records + the judge's replies (in the same order) -> results."""
    rows = [{"question_type": r.get("question_type", "unknown"), "score": parse_rating(rep)}
            for r, rep in zip(records, replies)]
    results = {"benchmark": "mmhal", **summarize(rows), "count": len(rows),
               "unparseable": sum(len(ratings_found(rep)) != 1 for rep in replies)}
    results["scores"] = [row["score"] for row in rows]
    return results


# ----------------------------------------------------------------------------------------------- running
@dataclasses.dataclass(kw_only=True)
class MMHalConfig(JudgeOptions, EvalConfig):
    """MMHal-Bench: 96 questions built to provoke hallucination; an LLM judge rates each answer 0-6 (LLaVA-RLHF
    setup: greedy, 1024 new tokens, no suffix, images padded). Prints the average score, the hallucination rate
    and the score per question type, and writes OUT/results.json, OUT/response.json (the official response
    format) and OUT/judge.jsonl (the judge's replies, for offline re-scoring with --judge-replies)."""
    questions: str
    """MMHal-Bench JSON list (response_template.json) with question_type, image_src, image_content, question,
    gt_answer"""
    images: str | None = None
    """folder of the MMHal-Bench images (looked up by the record's image_path, then the file name of image_src)"""
    judge_template: str | None = None
    """file with a judge prompt to use instead of jaxlava's paraphrase (four {} slots: image contents, question,
    human answer, model answer); the official text is needed to compare with published scores"""


def load_records(path: str, image_dir: str | None) -> list[dict]:
    import os

    from jaxlava.eval.runner import find_image, read_json
    records = read_json(path, "MMHal-Bench file")
    if not isinstance(records, list):
        raise EvalError(f"MMHal-Bench file {path} must hold a JSON list of records")
    for i, r in enumerate(records):
        missing = [k for k in ("question", "gt_answer") if k not in r]
        if missing:
            raise EvalError(f"MMHal-Bench file {path}, record {i}: no {', '.join(missing)}")
        names = [r.get("image_path"), os.path.basename(str(r.get("image_src") or "")), str(r.get("image_id") or "")]
        r["_image"] = find_image(image_dir, [n for n in names if n], f"MMHal-Bench record {i}")
    if len(records) != OFFICIAL_COUNT:
        print(f"note: {path} has {len(records)} records; the official benchmark has {OFFICIAL_COUNT}")
    return records


def run(cfg: MMHalConfig) -> dict | None:
    import os

    from jaxlava.eval import judge
    from jaxlava.eval.runner import (
        Item,
        finish,
        generate_answers,
        require,
        stopped_early,
    )
    from jaxlava.fileio import write_json
    records = load_records(cfg.questions, cfg.images)
    template = None
    if cfg.judge_template:
        with open(require(cfg.judge_template, "judge template file"), encoding="utf-8") as fh:
            template = fh.read()
    items = [Item(str(i), r["question"], r["_image"], {"question_type": r.get("question_type")})
             for i, r in enumerate(records)]
    answers = generate_answers(cfg, items, DEFAULTS)
    if stopped_early(cfg, answers, len(items)):
        return None
    texts = [answers.texts[str(i)] for i in range(len(records))]
    write_json(os.path.join(cfg.out, "response.json"),
               [dict({k: v for k, v in r.items() if k != "_image"}, model_answer=t) for r, t in zip(records, texts)])
    model = judge.judge_model(cfg, JUDGE_MODEL)
    requests = {str(i): judge_request(r, t, model, template) for i, (r, t) in enumerate(zip(records, texts))}
    replies, stats = judge.collect(cfg, requests, cfg.out, desc="MMHal judge")
    results = score(records, [replies[str(i)] for i in range(len(records))])
    results.update(generation=answers.stats(), judge=dict(stats, model=model))
    return finish(cfg.out, results, table(results),
                  extra=lambda: print(f"\n{results['unparseable']} judge replies without exactly one rating "
                                      f"(scored 0)"))


def main(argv: list[str] | None = None, description: str | None = None) -> int:
    """The command line of eval/mmhal.py."""
    from jaxlava.eval.runner import cli_main
    return cli_main(MMHalConfig, run, argv, description=description)
