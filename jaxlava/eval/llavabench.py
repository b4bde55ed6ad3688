"""LLaVA-Bench (COCO, 90 questions, judged against text-only GPT-4 answers): review parsing and relative scores
(spec A4), and `run`.

Review parsing, as LLaVA's eval_gpt_review_visual.py: take the first line, replace ',' by a space, split on
single spaces; exactly two tokens that read as numbers give (reference score, model score), anything else gives
(-1, -1). So "8, 9" (two spaces after the replacement) is a -1 pair too. The -1 pairs are kept in the means, as
the official summary does.

Relative score, as summarize_gpt_review.py: per category and for "all", the mean of each column rounded to 3
decimals, then round(model mean / reference mean * 100, 1). Scores above 100 are possible.
"""
from __future__ import annotations

import dataclasses

from jaxlava.eval.judge import JudgeOptions
from jaxlava.eval.runner import Defaults, EvalConfig, EvalError

CATEGORIES = ("conv", "detail", "complex")
DEFAULTS = Defaults(temperature=0.2, max_new_tokens=1024, pad_to_square=True)  # eval_llava_bench.sh, no suffix
JUDGE_MODEL = "gpt-4-0314"  # the official judge (retired)
JUDGE_PARAMS = {"temperature": 0.2, "max_tokens": 1024}


def parse_review(text: str | None) -> tuple[float, float]:
    """The judge's (Assistant 1, Assistant 2) scores from the first line of its review; (-1, -1) if unreadable."""
    try:
        pair = text.split("\n")[0].replace(",", " ").split(" ")
        if len(pair) == 2:
            return float(pair[0]), float(pair[1])
    except (AttributeError, ValueError):
        pass
    return -1.0, -1.0


def relative_scores(reviews: list[dict]) -> dict[str, dict]:
    """reviews with `category` and `tuple` (reference score, model score) -> per category and "all":
    {"relative", "reference", "model"} (means rounded to 3 decimals; relative in percent, 1 decimal)."""
    groups: dict[str, list] = {}
    for r in reviews:
        if r.get("category") is not None:
            groups.setdefault(str(r["category"]), []).append(r["tuple"])
        groups.setdefault("all", []).append(r["tuple"])
    out = {}
    for k in sorted(groups):
        v = groups[k]
        ref = round(sum(t[0] for t in v) / len(v), 3)
        mod = round(sum(t[1] for t in v) / len(v), 3)
        out[k] = {"relative": round(mod / ref * 100, 1) if ref else None, "reference": ref, "model": mod,
                  "n": len(v)}
    return out


def context_text(ctx: dict) -> str:
    """The judge's picture of the image: the captions, a blank line, then one "category: [x1, y1, x2, y2]" per box."""
    caps = "\n".join(ctx["captions"])
    boxes = "\n".join(f"{inst['category']}: {inst['bbox']}" for inst in ctx["instances"])
    return f"{caps}\n\n{boxes}"


def table(scores: dict[str, dict]) -> str:
    from jaxlava.eval.runner import markdown_table
    order = ["all"] + [k for k in CATEGORIES if k in scores] + sorted(k for k in scores
                                                                      if k != "all" and k not in CATEGORIES)
    rows = [[k, "n/a" if scores[k]["relative"] is None else f"{scores[k]['relative']:.1f}",
             f"{scores[k]['model']:.3f}", f"{scores[k]['reference']:.3f}", scores[k]["n"]] for k in order]
    return markdown_table(["Category", "Relative score (%)", "Model mean", "GPT-4 reference mean", "Reviews"], rows)


# ----------------------------------------------------------------------------------------------- running
@dataclasses.dataclass(kw_only=True)
class LlavaBenchConfig(JudgeOptions, EvalConfig):
    """LLaVA-Bench (COCO, qa90): 90 questions (conversation, detail, complex reasoning) over 30 COCO images; a
    judge model scores the answer against a text-only GPT-4 answer that saw captions and boxes (LLaVA-RLHF
    setup: T=0.2, 1024 new tokens, no suffix, images padded). Prints the relative score per category and
    overall, and writes OUT/results.json and OUT/reviews.jsonl (the official review format)."""
    questions: str
    """qa90_questions.jsonl (question_id, image, text, category)"""
    references: str
    """qa90_gpt4_answer.jsonl: GPT-4's answers (question_id, text), the judge's Assistant 1"""
    context: str
    """caps_boxes_coco2014_val_80.jsonl: captions and normalized boxes per image"""
    images: str
    """folder of the COCO images named as in the questions (COCO_val2014_ prefixed names are found too)"""
    rules: str | None = None
    """LLaVA's table/rule.json ({category: {role, prompt}}) to use instead of jaxlava's paraphrased rules; the
    official text is needed to compare with published scores"""


def load_inputs(cfg: LlavaBenchConfig) -> tuple[list[dict], dict, dict, dict]:
    from jaxlava.eval import prompts
    from jaxlava.eval.runner import find_image, read_json, read_jsonl
    questions = read_jsonl(cfg.questions, "LLaVA-Bench question file", ("question_id", "image", "text", "category"))
    refs = {str(r["question_id"]): r["text"]
            for r in read_jsonl(cfg.references, "GPT-4 answer file", ("question_id", "text"))}
    contexts = {c["image"]: c for c in read_jsonl(cfg.context, "caption and box file",
                                                  ("image", "captions", "instances"))}
    if cfg.rules:
        rules = {k: (v.get("role", "Assistant"), v["prompt"]) for k, v in read_json(cfg.rules, "rule file").items()}
    else:
        rules = dict(prompts.LLAVABENCH_RULES)
    for q in questions:
        qid = q["question_id"]
        if str(qid) not in refs:
            raise EvalError(f"GPT-4 answer file {cfg.references} has no answer for question {qid}")
        if q["image"] not in contexts:
            raise EvalError(f"caption and box file {cfg.context} has no entry for image {q['image']} (question {qid})")
        if q["category"] not in rules:
            raise EvalError(f"no judge rule for category {q['category']!r} (question {qid}); rules: {sorted(rules)}")
        q["_image"] = find_image(cfg.images, [q["image"], "COCO_val2014_" + q["image"]], f"question {qid}")
    return questions, refs, contexts, rules


def run(cfg: LlavaBenchConfig) -> dict | None:
    import json
    import os

    from jaxlava.eval import judge, prompts
    from jaxlava.eval.runner import Item, finish, generate_answers, stopped_early
    from jaxlava.fileio import atomic_open
    questions, refs, contexts, rules = load_inputs(cfg)
    items = [Item(str(q["question_id"]), q["text"], q["_image"], {"category": q["category"]}) for q in questions]
    answers = generate_answers(cfg, items, DEFAULTS)
    if stopped_early(cfg, answers, len(items)):
        return None
    model = judge.judge_model(cfg, JUDGE_MODEL)
    requests = {}
    for q in questions:
        qid = str(q["question_id"])
        role, rule = rules[q["category"]]
        user = prompts.llavabench_user(context_text(contexts[q["image"]]), q["text"], refs[qid], answers.texts[qid],
                                       role, rule)
        requests[qid] = judge.make_body(model, [{"role": "system", "content": prompts.LLAVABENCH_SYSTEM},
                                                {"role": "user", "content": user}], **JUDGE_PARAMS)
    replies, stats = judge.collect(cfg, requests, cfg.out, desc="LLaVA-Bench judge")
    reviews = [{"id": n + 1, "question_id": q["question_id"], "category": q["category"],
                "content": replies[str(q["question_id"])], "tuple": list(parse_review(replies[str(q["question_id"])]))}
               for n, q in enumerate(questions)]
    with atomic_open(os.path.join(cfg.out, "reviews.jsonl")) as fh:
        fh.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in reviews))
    results = {"benchmark": "llavabench", "scores": relative_scores(reviews),
               "unparseable": sum(r["tuple"] == [-1.0, -1.0] for r in reviews),
               "generation": answers.stats(), "judge": dict(stats, model=model)}
    return finish(cfg.out, results, table(results["scores"]),
                  extra=lambda: print(f"\n{results['unparseable']} reviews without two scores on the first line "
                                      f"(kept as -1, -1, as the official summary does)"))


def main(argv: list[str] | None = None, description: str | None = None) -> int:
    """The command line of eval/llavabench.py."""
    from jaxlava.eval.runner import cli_main
    return cli_main(LlavaBenchConfig, run, argv, description=description)
