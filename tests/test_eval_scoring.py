"""Golden tests of the official evaluation rules (spec A1-A4): answer parsing, matching and every formula."""
import base64
import json
import random

import pytest

from jaxlava.eval import llavabench, mmbench, mmhal, pope, prompts

# ------------------------------------------------------------------------------------------------- POPE


@pytest.mark.parametrize("text,want", [
    ("Yes", "yes"), ("yes", "yes"), ("No", "no"), ("no", "no"),
    ("NO", "yes"),  # only `No`, `no` and `not` count
    ("No!", "yes"),  # "No!" is not the token "No"
    ("", "yes"), ("Not", "yes"), ("None", "yes"), ("Nope", "yes"),
    ("No.", "no"), ("no,", "no"), ("No, there is a dog.", "no"),
    ("There is not a dog in the image.", "no"),
    ("Yes, there is no doubt.", "no"),  # any no-word in the first sentence
    ("Yes. No, not at all.", "yes"),  # only the text before the first '.'
    (". no", "yes"),  # nothing before the first '.'
    ("  no", "no"),  # split on single spaces: empty tokens do no harm
    ("No\nthere is", "yes"),  # only spaces split tokens
    ("yes,no", "yes"),  # commas are deleted, not turned into spaces: "yesno" is one token
])
def test_pope_parse_answer(text, want):
    assert pope.parse_answer(text) == want


def test_pope_metrics_golden():
    preds = ["yes", "yes", "no", "no", "yes"]
    labels = ["yes", "no", "no", "yes", "yes"]  # TP=2 FP=1 TN=1 FN=1
    m = pope.metrics(preds, labels)
    assert m == pytest.approx({"accuracy": 0.6, "precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "yes_ratio": 0.6})


def test_pope_metrics_f1_and_zero_division():
    m = pope.metrics(["yes", "yes", "yes", "no"], ["yes", "no", "no", "no"])  # TP=1 FP=2 TN=1 FN=0
    p, r = 1 / 3, 1.0
    assert m["precision"] == pytest.approx(p) and m["recall"] == r
    assert m["f1"] == pytest.approx(2 * p * r / (p + r)) and m["yes_ratio"] == 0.75 and m["accuracy"] == 0.5
    none = pope.metrics(["no", "no"], ["yes", "no"])  # no "yes" prediction: precision would divide by zero
    assert none == {"accuracy": 0.5, "precision": 0.0, "recall": 0.0, "f1": 0.0, "yes_ratio": 0.0}
    with pytest.raises(ValueError):
        pope.metrics(["yes"], [])


def test_pope_overall_is_the_mean_of_the_splits():
    a = pope.metrics(["yes", "no"], ["yes", "no"])
    b = pope.metrics(["yes", "yes"], ["yes", "no"])
    o = pope.overall({"random": a, "popular": b})
    assert o["f1"] == pytest.approx((1.0 + 2 / 3) / 2) and o["yes_ratio"] == pytest.approx(0.75)
    assert o["accuracy"] == pytest.approx(0.75)


def test_pope_score_pairs_by_question_order_and_prints_a_table():
    qs = {"adversarial": [{"question_id": 1, "label": "yes"}, {"question_id": 2, "label": "no"}]}
    res = pope.score(qs, {"adversarial/1": "Yes, there is.", "adversarial/2": "No"})
    assert res["splits"]["adversarial"]["accuracy"] == 1.0 and res["splits"]["adversarial"]["n"] == 2
    t = pope.table(res["splits"], res["overall"])
    for col in ("Accuracy", "Precision", "Recall", "F1", "Yes-ratio", "adversarial", "Overall"):
        assert col in t
    assert pope.split_name("/x/coco_pope_popular.jsonl") == "popular" and pope.split_name("a/b.json") == "b"
    assert "adversarial: 1.000, 1.000, 1.000, 1.000, 0.500" in pope.official_lines(res["splits"])


# ------------------------------------------------------------------------------------------------- MMHal


@pytest.mark.parametrize("reply,want", [
    ("The answer is fine.\nRating: 4, somewhat informative, no hallucination", 4),
    ("rating: 6", 6), ("RATING: 5", 5), ("Rating: 0", 0),
    ("Rating: 2 ... on reflection Rating: 5", 0),  # several ratings -> 0
    ("Rating: 3. Again: rating: 3", 3),  # the same rating twice is one rating
    ("no rating here", 0), ("", 0), (None, 0),
    ("Rating:4", 0),  # the official pattern needs the space
    ("Rating: 7", 0),  # only 0..6 are looked for
    ("Rating: 10", 1),  # "rating: 1" is a substring: the official rule reads it as 1
])
def test_mmhal_parse_rating(reply, want):
    assert mmhal.parse_rating(reply) == want


def test_mmhal_summarize_golden():
    recs = [{"question_type": "attribute", "score": 6}, {"question_type": "attribute", "score": 2},
            {"question_type": "counting", "score": 3}, {"question_type": "adversarial", "score": 0},
            {"question_type": "zzz", "score": 4}]
    s = mmhal.summarize(recs)
    assert set(s) == {"average", "hallucination_rate", "by_type"}
    assert s["average"] == pytest.approx(15 / 5) and s["hallucination_rate"] == pytest.approx(2 / 5)  # < 3
    assert s["by_type"] == {"attribute": 4.0, "adversarial": 0.0, "counting": 3.0, "zzz": 4.0}
    assert list(s["by_type"]) == ["attribute", "adversarial", "counting", "zzz"]  # official order, then others
    assert "Hallucination rate" in mmhal.table(s) and "0.40" in mmhal.table(s)


def test_mmhal_score_counts_unparseable_and_malformed_replies():
    recs = [{"question_type": "attribute"}, {"question_type": "other"}, {"question_type": "other"}]
    res = mmhal.score(recs, ["Rating: 5", None, "Rating: 1 or Rating: 2"])
    assert res["scores"] == [5, 0, 0] and res["unparseable"] == 2 and res["average"] == pytest.approx(5 / 3)


def test_mmhal_judge_request_layout():
    rec = {"image_content": ["Cat", "Sofa"], "question": "What is on the sofa?", "gt_answer": "A cat."}
    body = mmhal.judge_request(rec, "A dog.", "judge-1")
    assert body["model"] == "judge-1" and body["temperature"] == 0.0 and len(body["messages"]) == 1
    text = body["messages"][0]["content"]
    assert body["messages"][0]["role"] == "user"
    assert text.endswith("### Image Contents\nCat, Sofa\n\n### Question\nWhat is on the sofa?\n\n"
                         "### Standard Human-Generated Answer\nA cat.\n\n### LMM Response to Evaluate\nA dog.\n")
    assert all(f"Rating: {s}," in text for s in range(7))
    custom = mmhal.judge_request(rec, "A dog.", "j", template="{} | {} | {} | {}")
    assert custom["messages"][0]["content"] == "Cat, Sofa | What is on the sofa? | A cat. | A dog."


# ------------------------------------------------------------------------------------------------- MMBench
OPTS = {"A": "teddy bear", "B": "rabbit", "C": "cat", "D": "dog"}


@pytest.mark.parametrize("pred,want", [
    ("B", "B"), ("The answer is B", "B"), ("B C", None),  # exactly one bare letter
    ("A", "A"), ("A cute cat", "A"),  # "A" with at most 3 tokens is a letter
    ("A cat sits on it", "C"), ("A cat is here", "C"),  # the article "A" (> 3 tokens): option text "cat"
    ("C.", "C"), ("C,", "C"), ("C:", "C"), ("C)", "C"), ("C).", "C"), ("(C)", "C"), ("(C).", "C"),
    ("The answer is (D).", "D"), ("option :B", "B"), ("option :B.", "B"), ("x :B)", "B"),
    ("It is A. B.", None),  # two letters in the same wrapped form
    ("Answer:D", None),  # "Answer:D" is one token, not ":D"
    ("E", "E"),  # the tool checks A-E whatever the options
    ("teddy bear", "A"), ("I see a rabbit", "B"), ("a cat and a dog", None),  # option text, exactly one
    ("Failed to obtain answer via API", None), ("", None),
])
def test_mmbench_can_infer_opencompass(pred, want):
    assert mmbench.can_infer(pred, dict(OPTS)) == want


@pytest.mark.parametrize("pred,want", [
    ("B", "B"), ("(C)", "C"), ("Answer: D.", "D"), ("**B**", "B"),  # punctuation becomes spaces
    ("B is the answer because it is clearly right", None),  # the letter must be among the last 4 tokens
    ("Cannot determine the answer", "Z"), ("Z", "Z"),
    ("A cat is here", "A"),  # no article guard in VLMEvalKit (it only logs); OpenCompass says C
    ("A cat sits on it", "C"),  # "A" is not among the last 4 tokens: then the option text
    ("I think it is a rabbit", "B"),
    ("a rabbit " * 20, None),  # text match skipped: longer than 2x the option texts
])
def test_mmbench_can_infer_vlmevalkit(pred, want):
    assert mmbench.can_infer(pred, dict(OPTS), variant="vlmevalkit") == want


def _rows(spec):
    """spec: (index, answer, prediction) -> rows with the options of OPTS."""
    return [dict(OPTS, index=i, answer=a, prediction=p, question="q", _columns="ABCD") for i, a, p in spec]


def test_mmbench_circular_accuracy_golden():
    rows = _rows([(0, "A", "A"), (1_000_000, "B", "B"), (2_000_000, "C", "C"),  # group 0: all right
                  (1, "A", "A"), (1_000_001, "B", "C"),  # group 1: one pass wrong
                  (2, "D", "D"),  # group 2: no shifts, right
                  (1_000_007, "A", "A")])  # a shift whose main row is missing: ignored
    assert mmbench.group_hits(rows) == {0: 1, 1: 0, 2: 1}
    assert mmbench.circular_accuracy(rows) == pytest.approx(2 / 3)


def test_mmbench_circular_eval_prefetch_judge_and_random_fallback():
    rows = _rows([(0, "A", "A"), (1_000_000, "B", "hmm"),  # needs the judge
                  (1, "C", "D"), (1_000_001, "D", "hmm"),  # a rule-matched pass is wrong: no judging
                  (2, "A", "hmm"), (1_000_002, "B", "hmm")])  # judge fails -> random letters
    asked = []

    def judged(r):
        asked.append(r["index"])
        return {1_000_000: "B"}.get(r["index"])
    pending = [r["index"] for r in mmbench.pending_rows(rows, "opencompass")]
    assert pending == [1_000_000, 2, 1_000_002]
    hits, counts = mmbench.circular_eval(rows, "opencompass", judged)
    rng = random.Random(2680)
    first = "ABCDE"[rng.randint(0, 4)]
    second = "ABCDE"[rng.randint(0, 4)] if first == "A" else None
    assert hits == {0: 1, 1: 0, 2: int(first == "A" and second == "B")}
    assert 1_000_001 not in asked and counts["judged"] == 1
    assert counts["random_fallback"] == (2 if first == "A" else 1)
    no_judge, c2 = mmbench.circular_eval(rows, "opencompass", None)
    assert no_judge == {0: 0, 1: 0, 2: 0} and c2["unresolved"] == 2  # group 2 stops at its first miss


def test_mmbench_question_prompt_and_breakdown():
    row = {"question": "What is it?", "hint": "Look closely.", "A": "cat", "B": "dog", "C": None}
    assert mmbench.build_question(row) == ("Look closely.\nWhat is it?\nThere are several options:\nA. cat\nB. dog"
                                           "\nAnswer the question using a single word or phrase.")
    assert mmbench.build_question(dict(row, hint=None), suffix="").startswith("What is it?\nThere are")
    rows = [{"index": 0, "split": "dev", "category": "x"}, {"index": 1, "split": "dev", "category": "y"}]
    assert mmbench.breakdown(rows, {0: 1, 1: 0}, "category") == {"x": 1.0, "y": 0.0}
    assert mmbench.breakdown(rows, {0: 1, 1: 0}, "split") == {"dev": 0.5}


def test_mmbench_read_tsv_pandas_missing_values_and_image_references(tmp_path):
    img = base64.b64encode(b"\x89PNG fake").decode()
    lines = ["index\tquestion\thint\tA\tB\tC\tD\tanswer\tcategory\tl2-category\tsplit\timage",
             f"0\tWhat?\tnan\tcat\tNone\t\t\tA\tc1\tCP\tdev\t{img}",
             "1000000\tWhat?\t\tNone\tcat\t\t\tB\tc1\tCP\tdev\t0"]
    path = tmp_path / "mm.tsv"
    path.write_text("\n".join(lines) + "\n")
    rows = mmbench.read_tsv(str(path))
    assert rows[0]["hint"] is None and rows[0]["B"] is None and mmbench.options_of(rows[0]) == {"A": "cat"}
    assert rows[1]["index"] == 1_000_000 and rows[1]["image"] == img
    judge = mmbench.judge_request(dict(rows[0], prediction="meow"), "m", "opencompass")
    assert "A. cat\n" in judge["messages"][0]["content"] and "Answer: meow" in judge["messages"][0]["content"]


# ------------------------------------------------------------------------------------------------- LLaVA-Bench


@pytest.mark.parametrize("text,want", [
    ("8 9\nAssistant 1 is ...", (8.0, 9.0)), ("7.5 8.5", (7.5, 8.5)), ("8,9\nbecause", (8.0, 9.0)),
    ("8, 9\nbecause", (-1.0, -1.0)),  # ", " -> two spaces -> three tokens
    ("8 9 10", (-1.0, -1.0)), ("Scores: 8 9", (-1.0, -1.0)), ("eight nine", (-1.0, -1.0)),
    (" 8 9", (-1.0, -1.0)), ("", (-1.0, -1.0)), (None, (-1.0, -1.0)), ("\n8 9", (-1.0, -1.0)),
])
def test_llavabench_parse_review(text, want):
    assert llavabench.parse_review(text) == want


def test_llavabench_relative_scores_golden():
    reviews = [{"category": "conv", "tuple": [8, 9]}, {"category": "conv", "tuple": [6, 6]},
               {"category": "detail", "tuple": [7, 8]}, {"category": "detail", "tuple": [-1, -1]},  # kept
               {"category": "complex", "tuple": [7, 8]}, {"category": "complex", "tuple": [8, 8]},
               {"category": "complex", "tuple": [8, 9]}]
    s = llavabench.relative_scores(reviews)
    assert list(s) == ["all", "complex", "conv", "detail"]
    assert s["conv"]["relative"] == round(7.5 / 7.0 * 100, 1) == 107.1
    assert s["detail"]["reference"] == 3.0 and s["detail"]["model"] == 3.5 and s["detail"]["relative"] == 116.7
    # complex: means 7.667 and 8.333 (rounded to 3 decimals first), 108.7 %
    assert s["complex"]["reference"] == 7.667 and s["complex"]["model"] == 8.333 and s["complex"]["relative"] == 108.7
    assert s["all"]["reference"] == round(43 / 7, 3) and s["all"]["relative"] == round(round(47 / 7, 3)
                                                                                       / round(43 / 7, 3) * 100, 1)
    assert "107.1" in llavabench.table(s)


def test_llavabench_judge_content_layout():
    ctx = {"captions": ["A cat.", "A cat on a mat."], "instances": [{"category": "cat", "bbox": [0.1, 0.2, 0.5, 0.75]}]}
    assert llavabench.context_text(ctx) == "A cat.\nA cat on a mat.\n\ncat: [0.1, 0.2, 0.5, 0.75]"
    role, rule = prompts.LLAVABENCH_RULES["detail"]
    user = prompts.llavabench_user("CTX", "Q?", "ref", "mine", role, rule)
    assert user == (f"[Context]\nCTX\n\n[Question]\nQ?\n\n[Assistant 1]\nref\n\n[End of Assistant 1]\n\n"
                    f"[Assistant 2]\nmine\n\n[End of Assistant 2]\n\n[System]\n{rule}\n\n")
    assert set(prompts.LLAVABENCH_RULES) == set(llavabench.CATEGORIES)
    json.dumps(prompts.LLAVABENCH_RULES)  # plain strings
