"""POPE (object hallucination, yes/no questions over COCO val2014): parsing and metrics (spec A1), and `run`.

Answer parsing, exactly as POPE's evaluate.py and LLaVA-RLHF's summarize_eval_pope.py do it:
1. keep the text before the first '.'; 2. delete every ','; 3. split on single spaces: "no" when a token is
exactly `No`, `not` or `no`, otherwise "yes". So "NO", "No!", "Not" and an empty answer all count as yes.

Metrics per split with "yes" as the positive class: accuracy, precision, recall, F1 and the yes-ratio (a
division by zero gives 0 instead of failing). The paper's Overall is the mean over the three splits (its table
shows the mean F1 and the mean yes-ratio). Answers are paired with labels by position in the split file.
"""
from __future__ import annotations

import dataclasses
import os

from jaxlava.eval.runner import Defaults, EvalConfig, EvalError

SPLITS = ("random", "popular", "adversarial")
SUFFIX = "\nAnswer the question using a single word or phrase."  # eval_pope.sh --test-prompt
DEFAULTS = Defaults(temperature=0.2, max_new_tokens=64, pad_to_square=True)  # model_vqa.py, --short_eval True
METRICS = ("accuracy", "precision", "recall", "f1", "yes_ratio")


def parse_answer(text: str) -> str:
    """A model answer -> "yes" | "no" (the official rule; see the module docstring)."""
    text = text or ""
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def _ratio(a: float, b: float) -> float:
    return a / b if b else 0.0


def metrics(predictions: list[str], labels: list[str]) -> dict[str, float]:
    """Accuracy, precision, recall, F1 and yes-ratio of "yes"/"no" predictions against "yes"/"no" labels."""
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions but {len(labels)} labels")
    pairs = [(p != "no", g != "no") for p, g in zip(predictions, labels)]  # as the official: not "no" is yes
    tp = sum(p and g for p, g in pairs)
    fp = sum(p and not g for p, g in pairs)
    tn = sum(not p and not g for p, g in pairs)
    fn = sum(not p and g for p, g in pairs)
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    return {"accuracy": _ratio(tp + tn, len(pairs)), "precision": precision, "recall": recall,
            "f1": _ratio(2 * precision * recall, precision + recall),
            "yes_ratio": _ratio(sum(p for p, _ in pairs), len(pairs))}


def overall(per_split: dict[str, dict[str, float]]) -> dict[str, float]:
    """The paper's Overall: the mean of each metric over the splits (it reports F1 and yes-ratio)."""
    return {k: sum(m[k] for m in per_split.values()) / len(per_split) for k in METRICS}


def split_name(path: str) -> str:
    """coco_pope_random.jsonl -> random; any other file name -> its stem."""
    stem = os.path.splitext(os.path.basename(path))[0]
    for s in SPLITS:
        if stem.endswith(s):
            return s
    return stem


def table(per_split: dict[str, dict[str, float]], total: dict[str, float] | None = None) -> str:
    from jaxlava.eval.runner import markdown_table
    rows = [[name] + [100 * m[k] for k in METRICS] for name, m in per_split.items()]
    if total is not None:
        rows.append(["Overall (mean)"] + [100 * total[k] for k in METRICS])
    return markdown_table(["Split", "Accuracy", "Precision", "Recall", "F1", "Yes-ratio"], rows)


def official_lines(per_split: dict[str, dict[str, float]]) -> str:
    """The official script's summary line per split: F1, Acc, P, R, yes to 3 decimals."""
    return "\n".join(f"{name}: " + ", ".join(f"{m[k]:.3f}" for k in ("f1", "accuracy", "precision", "recall",
                                                                     "yes_ratio"))
                     for name, m in per_split.items())


def score(questions: dict[str, list[dict]], answers: dict[str, str]) -> dict:
    """Per-split metrics for split -> question records (file order) and id ("split/question_id") -> answer."""
    per_split = {}
    for split, qs in questions.items():
        preds = [parse_answer(answers[f"{split}/{q['question_id']}"]) for q in qs]
        per_split[split] = dict(metrics(preds, [q["label"] for q in qs]), n=len(qs))
    return {"benchmark": "pope", "splits": per_split, "overall": overall(per_split)}


# ----------------------------------------------------------------------------------------------- running
@dataclasses.dataclass(kw_only=True)
class PopeConfig(EvalConfig):
    """POPE: yes/no object-existence questions on COCO val2014 (LLaVA-RLHF setup: T=0.2, 64 new tokens,
    "Answer the question using a single word or phrase.", images padded to square). Prints accuracy, precision,
    recall, F1 and yes-ratio per split and their mean, and writes OUT/results.json."""
    questions: list[str]
    """POPE split files in JSON lines (coco_pope_random.jsonl, coco_pope_popular.jsonl, coco_pope_adversarial.jsonl;
    the split name is read from the file name)"""
    images: str
    """folder of the COCO val2014 images (COCO_val2014_XXXXXXXXXXXX.jpg)"""


def load_questions(paths: list[str], image_dir: str) -> dict[str, list[dict]]:
    from jaxlava.eval.runner import find_image, read_jsonl, require
    require(image_dir, "COCO image folder")
    out: dict[str, list[dict]] = {}
    for path in paths:
        split = split_name(path)
        if split in out:
            raise EvalError(f"two question files for split {split!r}: {path}")
        qs = read_jsonl(path, f"POPE {split} file", keys=("question_id", "image", "text", "label"))
        for q in qs:
            q["image_path"] = find_image(image_dir, [q["image"]], f"POPE {split} question {q['question_id']}")
        out[split] = qs
    return out


def run(cfg: PopeConfig) -> dict | None:
    from jaxlava.eval.runner import Item, finish, generate_answers, stopped_early
    questions = load_questions(cfg.questions, cfg.images)
    items = [Item(f"{s}/{q['question_id']}", q["text"] + SUFFIX, q["image_path"],
                  {"split": s, "question_id": q["question_id"]}) for s, qs in questions.items() for q in qs]
    answers = generate_answers(cfg, items, DEFAULTS)
    if stopped_early(cfg, answers, len(items)):
        return None
    results = score(questions, answers.texts)
    results["generation"] = answers.stats()
    return finish(cfg.out, results, table(results["splits"], results["overall"]),
                  extra=lambda: print("\nF1, Acc, P, R, yes:\n" + official_lines(results["splits"])))


def main(argv: list[str] | None = None, description: str | None = None) -> int:
    """The command line of eval/pope.py."""
    from jaxlava.eval.runner import cli_main
    return cli_main(PopeConfig, run, argv, description=description)
