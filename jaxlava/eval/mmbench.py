"""MMBench (multiple choice, CircularEval): answer matching and scores (spec A3), and `run`.

Matching a free-form prediction to an option letter, `can_infer`, as OpenCompass's tools/eval_mmbench.py:
(a) split on whitespace; when exactly one of A-E is a bare token, that letter, unless "A" is a token of an
answer longer than 3 tokens (then it may be the article); (b) else the wrapped forms X. X, X: X) X). (X) (X). :X
:X, :X. :X) :X). in that order, each accepted when exactly one letter has it; (c) else the option whose
lowercased text is the only one found in the lowercased prediction. The tool checks the letters A-E whatever the
number of options, and matches the texts of options A-D.

The VLMEvalKit variant (`variant="vlmevalkit"`): `.()[],:;!*#{}` become spaces; known refusals give Z; a letter
of the given options counts when it is the only one among the tokens and sits among the last four tokens (the
article guard only logs there, so it is not applied); a lone "Z" token gives Z; the text match is skipped for
answers longer than twice the options' total length.

CircularEval: each main question (index < 1e6) and its circular shifts (index % 1e6 == main index) form a
group, a hit only when every pass is right. As in the official tool, a group is a miss as soon as a
rule-matched pass is wrong; the other passes go to the judge (an LLM matcher), and a pass that the judge cannot
settle gets a random letter among A-D + E (random.Random(2680), drawn in the official order). Without a judge
those passes count as wrong ("rules only"; a lower bound). Accuracy = mean hit over main questions, overall
and per split, l2-category and category.
"""
from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from typing import Literal

from jaxlava.eval.judge import JudgeOptions
from jaxlava.eval.runner import Defaults, EvalConfig, EvalError

LETTERS = "ABCDE"
MAIN = 1_000_000
SEED = 2680
SUFFIX = "\nAnswer the question using a single word or phrase."  # model_mmbench.py --test-prompt default
DEFAULTS = Defaults(temperature=0.2, max_new_tokens=64, pad_to_square=False)  # --short_eval, square images
JUDGE_MODEL = "gpt-3.5-turbo-0613"
FAILED = "Failed to obtain answer via API"
WRAPS = (("", "."), ("", ","), ("", ":"), ("", ")"), ("", ")."), ("(", ")"), ("(", ")."), (":", ""), (":", ","),
         (":", "."), (":", ")"), (":", ")."))
REFUSALS = ("Sorry, I can't help with images of people yet.", "I can't process this file.",
            "I'm sorry, but without the image provided", "Cannot determine the answer")
# pandas.read_csv's default missing-value strings: the official tools read the TSV with pandas
NA_VALUES = {"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>",
             "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"}


# ----------------------------------------------------------------------------------------------- matching
def _opencompass_letter(answer: str) -> str | None:
    splits = [x.strip() for x in answer.split()]

    def hits(pre: str = "", suf: str = "") -> list[str]:
        return [c for c in LETTERS if pre + c + suf in splits]

    bare = hits()
    if len(bare) == 1 and not ("A" in splits and len(splits) > 3):
        return bare[0]
    for pre, suf in WRAPS:
        found = hits(pre, suf)
        if len(found) == 1:
            return found[0]
    return None


def _vlmevalkit_letter(answer: str, letters: list[str]) -> str | None:
    if any(r in answer for r in REFUSALS):
        return "Z"
    for ch in ".()[],:;!*#{}":
        answer = answer.replace(ch, " ")
    splits = [x.strip() for x in answer.split()]
    found = [c for c in letters if c in splits]
    if len(found) == 1:
        return found[0] if splits.index(found[0]) > len(splits) - 5 else None
    if not found and "Z" in splits:
        return "Z"
    return None


def _text_match(answer: str, options: dict[str, str], max_ratio: float | None) -> str | None:
    low = answer.lower()
    if max_ratio is not None and len(low) > max_ratio * sum(len(str(v)) for v in options.values()):
        return None
    cands = [k for k, v in options.items() if str(v).lower() in low]
    return cands[0] if len(cands) == 1 else None


def can_infer(prediction: str, options: dict[str, str],
              variant: Literal["opencompass", "vlmevalkit"] = "opencompass") -> str | None:
    """The option letter that `prediction` names (rules (a)-(c), see the module docstring), or None."""
    prediction = str(prediction)
    if FAILED in prediction:
        return None
    if variant == "opencompass":
        return _opencompass_letter(prediction) or _text_match(prediction, options, None)
    if variant == "vlmevalkit":
        return _vlmevalkit_letter(prediction, list(options)) or _text_match(prediction, options, 2.0)
    raise ValueError(f"unknown matcher variant {variant!r} (opencompass, vlmevalkit)")


# ----------------------------------------------------------------------------------------------- CircularEval
def circular_groups(rows: list[dict]) -> dict[int, list[dict]]:
    """Main index -> its passes (the main row and its circular shifts), both in index order."""
    by_main: dict[int, list[dict]] = {}
    for r in sorted(rows, key=lambda r: int(r["index"])):
        by_main.setdefault(int(r["index"]) % MAIN, []).append(r)
    mains = sorted(int(r["index"]) for r in rows if int(r["index"]) < MAIN)
    return {i: by_main[i] for i in mains}


def group_hits(rows: list[dict]) -> dict[int, int]:
    """Main index -> 1 when every pass's `prediction` letter equals its `answer`, else 0."""
    return {i: int(all(r["prediction"] == r["answer"] for r in g)) for i, g in circular_groups(rows).items()}


def circular_accuracy(rows: list[dict]) -> float:
    """CircularEval accuracy of rows with `index`, `answer` and a `prediction` letter (None: unmatched)."""
    hits = group_hits(rows)
    return sum(hits.values()) / len(hits) if hits else 0.0


def matcher_options(row: dict, variant: str) -> dict[str, str]:
    """The options the text match sees: A-D for OpenCompass (its build_choices), every option for VLMEvalKit."""
    return options_of(row, "ABCD" if variant == "opencompass" else LETTERS)


def pending_rows(rows: list[dict], variant: str) -> list[dict]:
    """Passes that the rules cannot match, in groups where no rule-matched pass is wrong (they go to the judge)."""
    out = []
    for group in circular_groups(rows).values():
        matched = [can_infer(r["prediction"], matcher_options(r, variant), variant) for r in group]
        if all(m is None or m == r["answer"] for m, r in zip(matched, group)):
            out += [r for m, r in zip(matched, group) if m is None]
    return out


def circular_eval(rows: list[dict], variant: str = "opencompass",
                  judged: Callable[[dict], str | None] | None = None) -> tuple[dict[int, int], dict]:
    """The official CircularEval over rows of free-form predictions -> (main index -> hit, counts).

    `judged(row)`: the judge's letter for a pass the rules cannot match (None when its reply matches nothing),
    or no judge at all (those passes are misses)."""
    rng = random.Random(SEED)
    hits, counts = {}, {"rule_matched": 0, "judged": 0, "random_fallback": 0, "unresolved": 0}
    for idx, group in circular_groups(rows).items():
        matched = [can_infer(r["prediction"], matcher_options(r, variant), variant) for r in group]
        counts["rule_matched"] += sum(m is not None for m in matched)
        hit = 1
        for m, r in zip(matched, group):
            if m is not None and m != r["answer"]:
                hit = 0
                break
        for m, r in zip(matched, group):
            if not hit or m is not None:
                continue
            letter = judged(r) if judged is not None else None
            if judged is None:
                counts["unresolved"] += 1
            elif letter is None:
                n = sum(c in r.get("_columns", "ABCD") for c in "ABCD")
                letter = ("ABCD"[:n] + "E")[rng.randint(0, n)] if n >= 2 else None
                counts["random_fallback"] += 1
            else:
                counts["judged"] += 1
            if letter != r["answer"]:
                hit = 0
        hits[idx] = hit
    return hits, counts


def breakdown(rows: list[dict], hits: dict[int, int], key: str) -> dict[str, float]:
    groups: dict[str, list[int]] = {}
    for r in rows:
        if int(r["index"]) in hits and r.get(key) is not None:
            groups.setdefault(str(r[key]), []).append(hits[int(r["index"])])
    return {k: sum(v) / len(v) for k, v in sorted(groups.items())}


# ----------------------------------------------------------------------------------------------- the TSV
def options_of(row: dict, letters: str = LETTERS) -> dict[str, str]:
    return {c: row[c] for c in letters if row.get(c) is not None}


def build_question(row: dict, suffix: str = SUFFIX) -> str:
    """LLaVA-RLHF's prompt: [hint \\n] question \\n "There are several options:" + "X. text" lines, + suffix."""
    opts = "There are several options:\n" + "\n".join(f"{k}. {v}" for k, v in options_of(row).items())
    hint = row.get("hint")
    return (f"{hint}\n" if hint is not None else "") + f"{row['question']}\n{opts}" + suffix


def read_tsv(path: str) -> list[dict]:
    """MMBench TSV rows (pandas' missing-value strings -> None; `index` -> int). A short `image` field that is a
    number refers to the image of the row with that index (the later TSVs store each image once)."""
    import csv
    import sys

    from jaxlava.eval.runner import require
    require(path, "MMBench TSV")
    csv.field_size_limit(sys.maxsize)
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        columns = reader.fieldnames or []
        missing = [c for c in ("index", "question", "image", "A", "B") if c not in columns]
        if missing:
            raise EvalError(f"MMBench TSV {path} has no column {', '.join(missing)}")
        rows = [{k: (None if v is None or v in NA_VALUES else v) for k, v in r.items()} for r in reader]
    images = {}
    for n, r in enumerate(rows, 2):
        try:
            r["index"] = int(float(r["index"]))
        except (TypeError, ValueError):
            raise EvalError(f"MMBench TSV {path}, line {n}: bad index {r['index']!r}") from None
        r["_columns"] = "".join(c for c in "ABCD" if c in columns)
        if r["image"] is None:
            raise EvalError(f"MMBench TSV {path}: row index {r['index']} has no image")
        images[r["index"]] = r["image"]
    for r in rows:
        if len(r["image"]) <= 64 and r["image"].strip().isdigit():
            ref = int(r["image"].strip())
            if ref not in images:
                raise EvalError(f"MMBench TSV {path}: row index {r['index']} refers to the image of missing "
                                f"row {ref}")
            r["image"] = images[ref]
    return rows


def table(results: dict) -> str:
    from jaxlava.eval.runner import markdown_table
    parts = [markdown_table(["Split", "CircularEval accuracy (%)"], [["Overall", 100 * results["overall"]]]
                            + [[k, 100 * v] for k, v in results["by_split"].items()])]
    for title, key in (("L2 category", "by_l2"), ("Category", "by_category")):
        if results[key]:
            parts.append(markdown_table([title, "Accuracy (%)"], [[k, 100 * v] for k, v in results[key].items()]))
    return "\n\n".join(parts)


def judge_request(row: dict, model: str, variant: str) -> dict:
    """The option-matching request for a pass that the rules cannot match."""
    from jaxlava.eval import prompts
    from jaxlava.eval.judge import make_body
    opts = ""
    for c in "ABCD":  # the official tool lists the options up to the first missing one
        if row.get(c) is None:
            break
        opts += f"{c}. {row[c]}\n"
    text = prompts.mmbench_match(row["question"], opts, row["prediction"], "E" if variant == "opencompass" else "Z")
    return make_body(model, [{"role": "user", "content": text}], temperature=0.0)


def score(rows: list[dict], variant: str, judged: Callable[[dict], str | None] | None) -> dict:
    hits, counts = circular_eval(rows, variant, judged)
    main = [r for r in rows if int(r["index"]) < MAIN]
    return {"benchmark": "mmbench", "matcher": variant, "overall": sum(hits.values()) / max(len(hits), 1),
            "by_split": breakdown(main, hits, "split"), "by_l2": breakdown(main, hits, "l2-category"),
            "by_category": breakdown(main, hits, "category"), "groups": len(hits), "passes": len(rows), **counts,
            "hits": {str(k): v for k, v in hits.items()}}


# ----------------------------------------------------------------------------------------------- running
@dataclasses.dataclass(kw_only=True)
class MMBenchConfig(JudgeOptions, EvalConfig):
    """MMBench with CircularEval (LLaVA-RLHF setup: T=0.2, 64 new tokens, "There are several options:" prompt
    with the short-answer suffix, images not padded). Answers are matched to option letters by the OpenCompass
    rules; passes the rules cannot match go to an LLM matcher when a judge is given (--judge-url, --judge-replies
    or --judge-cache), else they count as wrong. Prints the accuracy overall and per split, l2-category and
    category, and writes OUT/results.json and OUT/predictions.tsv (the official submission columns)."""
    tsv: str
    """MMBench TSV (e.g. mmbench_dev_20230712.tsv) with base64 images and the circular copies"""
    matcher: Literal["opencompass", "vlmevalkit"] = "opencompass"
    """answer-matching rules: OpenCompass's eval_mmbench.py (the paper's) or VLMEvalKit's variant"""
    suffix: str = SUFFIX
    """text appended to each question"""


def _write_predictions(path: str, rows: list[dict]) -> None:
    import csv

    from jaxlava.fileio import atomic_open
    cols = ["question", "answer", *LETTERS, "prediction", "category", "l2-category", "index"]
    with atomic_open(path) as fh:
        w = csv.writer(fh, delimiter="\t", lineterminator="\n")
        w.writerow(cols)
        for r in rows:
            w.writerow(["" if r.get(c) is None else r[c] for c in cols])


def run(cfg: MMBenchConfig) -> dict | None:
    import base64
    import os

    from jaxlava.eval import judge
    from jaxlava.eval.runner import Item, finish, generate_answers, stopped_early
    rows = read_tsv(cfg.tsv)
    items = [Item(str(r["index"]), build_question(r, cfg.suffix), lambda s=r["image"]: base64.b64decode(s),
                  {"index": r["index"]}) for r in rows]
    answers = generate_answers(cfg, items, DEFAULTS)
    if stopped_early(cfg, answers, len(items)):
        return None
    for r in rows:
        r["prediction"] = answers.texts[str(r["index"])]
    _write_predictions(os.path.join(cfg.out, "predictions.tsv"), rows)
    if any(r.get("answer") is None for r in rows):
        print(f"{cfg.tsv} has rows without an answer (the test split?): nothing scored; the predictions are in "
              f"{os.path.join(cfg.out, 'predictions.tsv')} for submission")
        return None
    judged, stats = None, {"source": "none (rules only)"}
    if cfg.judge_url or cfg.judge_replies or cfg.judge_cache:
        model = judge.judge_model(cfg, JUDGE_MODEL)
        requests = {str(r["index"]): judge_request(r, model, cfg.matcher) for r in pending_rows(rows, cfg.matcher)}
        replies, stats = judge.collect(cfg, requests, cfg.out, desc="MMBench matcher")
        stats["model"] = model

        def judged(r):
            return can_infer(replies[str(r["index"])] or "", matcher_options(r, cfg.matcher), cfg.matcher)
    results = score(rows, cfg.matcher, judged)
    results.update(generation=answers.stats(), judge=stats)
    note = (f"\n{results['rule_matched']}/{results['passes']} passes matched by rules, {results['judged']} by the "
            f"judge, {results['random_fallback']} random fallbacks, {results['unresolved']} unresolved (wrong)")
    return finish(cfg.out, results, table(results), extra=lambda: print(note))


def main(argv: list[str] | None = None, description: str | None = None) -> int:
    """The command line of eval/mmbench.py."""
    from jaxlava.eval.runner import cli_main
    return cli_main(MMBenchConfig, run, argv, description=description)
