"""The evaluation CLIs end to end on tiny files in the official formats and a tiny random llava-hf model:
generation, resume of a cut run (done answers are never regenerated), judges on loopback servers, offline
re-scoring, errors that name missing files, and the report."""
import base64
import dataclasses
import importlib.util
import io
import json
import os

import numpy as np
import pytest
from cli_fixtures import ROOT, help_texts
from PIL import Image
from test_eval_judge import completion, judge_server
from tok_fixtures import bpe_dir

import jaxlava

NEW = 4  # --max-new-tokens in these tests
COMMON = ["--batch-size", "2", "--max-new-tokens", str(NEW)]


def _cli(name):
    spec = importlib.util.spec_from_file_location(f"eval_cli_{name}", os.path.join(ROOT, "eval", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A random llava-hf folder (2+2 layers, 32 px images, 16 image tokens) with a BPE tokenizer and processor."""
    from flax import nnx
    from transformers import AutoTokenizer

    from jaxlava.data.processor import ImagePrep, LlavaProcessor
    from jaxlava.model import LlavaModel
    from jaxlava.presets import tiny
    tok = AutoTokenizer.from_pretrained(bpe_dir())
    cfg = tiny()
    cfg = cfg.replace(text=dataclasses.replace(cfg.text, vocab_size=len(tok), bos_token_id=1, eos_token_id=2,
                                               pad_token_id=0),
                      image_token_index=tok.convert_tokens_to_ids("<image>"))
    out = str(tmp_path_factory.mktemp("tiny_llava"))
    jaxlava.save_pretrained(LlavaModel(cfg, rngs=nnx.Rngs(3)), out)
    LlavaProcessor(tok, ImagePrep(32), num_image_tokens=cfg.num_image_tokens).save_pretrained(out)
    return out


@pytest.fixture
def calls(monkeypatch):
    """Counts the rows that go through jaxlava.generate (padding rows of a last batch included)."""
    seen = []
    real = jaxlava.generate

    def counting(model, input_ids, *a, **kw):
        seen.append(len(input_ids))
        return real(model, input_ids, *a, **kw)
    monkeypatch.setattr(jaxlava, "generate", counting)
    return seen


def _png(path, size=(40, 28), seed=0, fmt=None):
    """A small random image (not square, so padding matters); the format follows the file name unless given."""
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path, format=fmt)


def _png_bytes(seed):
    buf = io.BytesIO()
    _png(buf, seed=seed, fmt="PNG")
    return buf.getvalue()


def _lines(path):
    return [json.loads(line) for line in open(path) if line.strip()]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


# ------------------------------------------------------------------------------------------------- POPE
@pytest.fixture(scope="module")
def pope_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("pope")
    (d / "coco").mkdir()
    for i in range(3):
        _png(d / "coco" / f"COCO_val2014_{i:012d}.jpg", seed=i)
    splits = []
    for s, split in enumerate(("random", "adversarial")):
        qs = [{"question_id": k + 1, "image": f"COCO_val2014_{k % 3:012d}.jpg", "label": "yes" if k % 2 else "no",
               "text": f"Is there a {['dog', 'cat', 'car'][k % 3]} in the image?"} for k in range(3 + s)]
        splits.append(_write_jsonl(d / f"coco_pope_{split}.jsonl", qs))
    return str(d / "coco"), splits


def test_pope_end_to_end_resumes_a_cut_run(model_dir, pope_files, tmp_path, calls, capsys):
    images, splits = pope_files
    out = tmp_path / "pope"
    argv = ["--model", model_dir, "--out", str(out), "--images", images, "--questions", *splits, *COMMON]
    assert _cli("pope")(argv + ["--limit", "3"]) == 0
    assert "3/7 questions answered" in capsys.readouterr().out and not (out / "results.json").exists()
    first = _lines(out / "answers.jsonl")
    assert len(first) == 3 and sum(calls) == 4  # two batches of 2 (the second padded)
    with open(out / "answers.jsonl", "a") as fh:  # a run killed while writing: a torn last line
        fh.write('{"id": "adversarial/4", "answ')
    calls.clear()
    assert _cli("pope")(argv) == 0
    printed = capsys.readouterr().out
    assert sum(calls) == 4  # the 4 missing answers only
    lines = _lines(out / "answers.jsonl")
    assert lines[:3] == first and len(lines) == 7 and len({r["id"] for r in lines}) == 7
    res = json.loads((out / "results.json").read_text())
    assert set(res["splits"]) == {"random", "adversarial"} and res["splits"]["adversarial"]["n"] == 4
    assert res["generation"] == {"new_answers": 4, "reused_answers": 3}
    assert res["settings"]["temperature"] == 0.2 and res["settings"]["max_new_tokens"] == NEW
    for col in ("Accuracy", "Precision", "Recall", "F1", "Yes-ratio", "Overall"):
        assert col in printed
    calls.clear()
    assert _cli("pope")(argv) == 0 and calls == []  # all done: nothing is generated, nothing loaded
    with pytest.raises(SystemExit, match="other settings"):
        _cli("pope")(argv + ["--temperature", "0"])


def test_run_folder_with_adapter(model_dir, pope_files, tmp_path):
    import shutil

    import jax

    from jaxlava.lora import LoraConfig, init_lora
    from jaxlava.peft_io import save_adapter
    run = tmp_path / "run"
    shutil.copytree(model_dir, run / "hf")
    cfg = jaxlava.from_pretrained(model_dir).config
    lcfg = LoraConfig(r=2, alpha=4)
    params = init_lora(cfg, lcfg, jax.random.key(0))
    params = {k: {"a": np.asarray(v["a"]), "b": np.full(v["b"].shape, 0.5, np.float32)} for k, v in params.items()}
    save_adapter(str(run / "adapter"), params, lcfg)
    images, splits = pope_files
    base = ["--images", images, "--questions", splits[0], *COMMON, "--temperature", "0"]
    assert _cli("pope")(["--model", str(run), "--out", str(tmp_path / "a"), *base]) == 0
    assert _cli("pope")(["--model", model_dir, "--out", str(tmp_path / "b"), *base]) == 0
    with_adapter = [r["answer"] for r in _lines(tmp_path / "a" / "answers.jsonl")]
    plain = [r["answer"] for r in _lines(tmp_path / "b" / "answers.jsonl")]
    assert with_adapter != plain
    assert json.loads((tmp_path / "a" / "settings.json").read_text())["model"] == str(run)


def test_missing_files_are_named(model_dir, pope_files, tmp_path):
    images, splits = pope_files
    with pytest.raises(SystemExit, match="POPE random file not found: .*nope/coco_pope_random.jsonl"):
        _cli("pope")(["--model", model_dir, "--out", str(tmp_path), "--images", images,
                      "--questions", str(tmp_path / "nope" / "coco_pope_random.jsonl")])
    bad = _write_jsonl(tmp_path / "coco_pope_popular.jsonl", [{"question_id": 9, "image": "COCO_val2014_x.jpg",
                                                               "text": "Is there a cat?", "label": "no"}])
    with pytest.raises(SystemExit, match="image of POPE popular question 9 not found.*COCO_val2014_x.jpg"):
        _cli("pope")(["--model", model_dir, "--out", str(tmp_path), "--images", images, "--questions", bad])
    with pytest.raises(SystemExit, match="not a model folder"):
        _cli("pope")(["--model", str(tmp_path), "--out", str(tmp_path / "o"), "--images", images, "--questions",
                      splits[0]])


# ------------------------------------------------------------------------------------------------- MMHal
def test_mmhal_judge_then_offline_rescoring(model_dir, tmp_path, calls, capsys):
    (tmp_path / "images").mkdir()
    types = ["attribute", "adversarial", "counting", "other"]
    records = []
    for i, t in enumerate(types):
        _png(tmp_path / "images" / f"img{i}.jpg", seed=10 + i)
        records.append({"question_type": t, "question_topic": "animal", "image_id": f"id{i}",
                        "image_src": f"https://example.org/x/img{i}.jpg", "image_content": ["Cat", "Dog"],
                        "question": f"What is object {i}?", "gt_answer": "A cat.", "model_answer": ""})
    qfile = tmp_path / "response_template.json"
    qfile.write_text(json.dumps(records))
    ratings = {"object 0": "Fine.\nRating: 6", "object 1": "Rating: 2", "object 2": "Rating: 1 or Rating: 5",
               "object 3": "no idea"}

    def respond(body, n):
        text = body["messages"][0]["content"]
        return 200, completion(next(v for k, v in ratings.items() if f"What is {k}?" in text))
    out = tmp_path / "out"
    argv = ["--model", model_dir, "--out", str(out), "--questions", str(qfile), "--images",
            str(tmp_path / "images"), *COMMON]
    with judge_server(respond) as srv:
        argv += ["--judge-model", "j1"]
        assert _cli("mmhal")(argv + ["--judge-url", srv.url, "--judge-backoff", "0.01"]) == 0
    assert len(srv.requests) == 4 and srv.requests[0][2]["model"] == "j1"
    res = json.loads((out / "results.json").read_text())
    assert res["scores"] == [6, 2, 0, 0] and res["average"] == 2.0 and res["hallucination_rate"] == 0.75
    assert res["by_type"] == {"attribute": 6.0, "adversarial": 2.0, "counting": 0.0, "other": 0.0}
    assert res["unparseable"] == 2 and "Hallucination rate" in capsys.readouterr().out
    assert [r["model_answer"] for r in json.loads((out / "response.json").read_text())] == \
        [r["answer"] for r in _lines(out / "answers.jsonl")]
    calls.clear()
    assert _cli("mmhal")(argv) == 0  # offline: answers reused, replies from the cache
    again = json.loads((out / "results.json").read_text())
    assert calls == [] and again["scores"] == res["scores"] and again["judge"]["cached"] == 4
    os.remove(out / "judge_cache.jsonl")
    assert _cli("mmhal")(argv + ["--judge-replies", str(out / "judge.jsonl")]) == 0
    assert json.loads((out / "results.json").read_text())["scores"] == res["scores"]
    with pytest.raises(SystemExit, match="not in the cache"):  # the cache key covers the judge model
        _cli("mmhal")(argv[:-2] + ["--judge-model", "j2"])


# ------------------------------------------------------------------------------------------------- MMBench
def test_mmbench_tsv_with_base64_images_and_circular_eval(model_dir, tmp_path, calls, capsys):
    head = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "l2-category", "split", "image"]
    opts = ["red", "green", "blue", "yellow"]
    rows = []
    for g in range(2):
        img = base64.b64encode(_png_bytes(20 + g)).decode()
        for k in range(2):  # the main question and one circular shift
            rot = opts[k:] + opts[:k]
            rows.append([str(g + k * 1_000_000), f"What colour is shape {g}?", "" if g else "Look.", *rot,
                         "ABCD"[rot.index("red")], f"cat{g}", "CP", "dev", img])
    tsv = tmp_path / "mmbench_dev.tsv"
    tsv.write_text("\n".join("\t".join(r) for r in [head] + rows) + "\n")
    out = tmp_path / "out"
    with judge_server(lambda body, n: (200, completion("A"))) as srv:
        argv = ["--model", model_dir, "--out", str(out), "--tsv", str(tsv), *COMMON]
        assert _cli("mmbench")(argv + ["--judge-url", srv.url]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["groups"] == 2 and res["passes"] == 4 and set(res["by_l2"]) == {"CP"}
    assert res["rule_matched"] + res["judged"] + res["random_fallback"] <= 4 and res["unresolved"] == 0
    assert len(srv.requests) == len(_lines(out / "judge.jsonl"))
    assert sum(calls) == 4 and "CircularEval accuracy" in capsys.readouterr().out
    pred = (out / "predictions.tsv").read_text().splitlines()
    assert pred[0].split("\t")[:2] == ["question", "answer"] and len(pred) == 5
    assert _cli("mmbench")(argv + ["--matcher", "vlmevalkit"]) == 0  # rules only, no regeneration
    assert sum(calls) == 4 and json.loads((out / "results.json").read_text())["matcher"] == "vlmevalkit"
    test_split = tmp_path / "mmbench_test.tsv"  # no answer column: predictions for submission only
    test_split.write_text("\n".join("\t".join(r[:7] + r[8:]) for r in [head] + rows[:1]) + "\n")
    assert _cli("mmbench")(["--model", model_dir, "--out", str(tmp_path / "t"), "--tsv", str(test_split), *COMMON]) == 0
    assert "nothing scored" in capsys.readouterr().out and (tmp_path / "t" / "predictions.tsv").exists()
    assert not (tmp_path / "t" / "results.json").exists()


# ------------------------------------------------------------------------------------------------- LLaVA-Bench
def test_llavabench_judge_and_relative_scores(model_dir, tmp_path, capsys):
    (tmp_path / "img").mkdir()
    qs, refs, ctx = [], [], []
    for i in range(2):
        name = f"{i:012d}.jpg"
        _png(tmp_path / "img" / name, seed=30 + i)
        ctx.append({"id": i, "image": name, "captions": ["A box.", "A red box."],
                    "instances": [{"category": "box", "bbox": [0.1, 0.1, 0.5, 0.5]}]})
        for j, cat in enumerate(("conv", "detail", "complex")):
            qs.append({"question_id": 3 * i + j, "image": name, "text": f"Question {cat}?", "category": cat})
            refs.append({"question_id": 3 * i + j, "text": "A red box.", "category": cat})

    def respond(body, n):
        user = body["messages"][1]["content"]
        return 200, completion("7 8\nfine" if "Question conv?" not in user else "7, 8\nbad first line")
    out = tmp_path / "out"
    argv = ["--model", model_dir, "--out", str(out), "--questions", _write_jsonl(tmp_path / "q.jsonl", qs),
            "--references", _write_jsonl(tmp_path / "a.jsonl", refs), "--images", str(tmp_path / "img"),
            "--context", _write_jsonl(tmp_path / "c.jsonl", ctx), *COMMON]
    with judge_server(respond) as srv:
        assert _cli("llavabench")(argv + ["--judge-url", srv.url]) == 0
    body = srv.requests[0][2]
    assert body["temperature"] == 0.2 and body["max_tokens"] == 1024 and body["messages"][0]["role"] == "system"
    assert body["messages"][1]["content"].startswith("[Context]\nA box.\nA red box.\n\nbox: [0.1, 0.1, 0.5, 0.5]")
    res = json.loads((out / "results.json").read_text())
    assert res["scores"]["detail"]["relative"] == 114.3 and res["scores"]["conv"]["relative"] == 100.0
    assert res["unparseable"] == 2 and "Relative score" in capsys.readouterr().out
    reviews = _lines(out / "reviews.jsonl")
    assert reviews[0]["tuple"] == [-1.0, -1.0] and reviews[1]["tuple"] == [7.0, 8.0]
    os.remove(out / "judge_cache.jsonl")
    assert _cli("llavabench")(argv + ["--judge-replies", str(out / "reviews.jsonl")]) == 0  # the official format
    assert json.loads((out / "results.json").read_text())["scores"] == res["scores"]
    with pytest.raises(SystemExit, match="caption and box file not found"):
        _cli("llavabench")([a if a != str(tmp_path / "c.jsonl") else "missing.jsonl" for a in argv])


# ------------------------------------------------------------------------------------------------- report, --help
def test_report_tables_and_charts(tmp_path, capsys):
    runs = {"sft": (0.8, 2.1, 0.52, 86.3), "rlhf": (0.78, 2.5, 0.55, 94.1)}
    for name, (f1, score, acc, rel) in runs.items():
        d = tmp_path / "evals" / name
        results = {
            "pope": {"benchmark": "pope", "overall": {"f1": f1, "yes_ratio": 0.45},
                     "splits": {s: {"f1": f1} for s in ("random", "popular", "adversarial")}},
            "mmhal": {"benchmark": "mmhal", "average": score, "hallucination_rate": 0.6,
                      "by_type": {"attribute": score, "counting": 1.0}},
            "mmbench": {"benchmark": "mmbench", "overall": acc, "by_l2": {"CP": acc, "FP-S": 0.4}},
            "llavabench": {"benchmark": "llavabench", "scores": {"all": {"relative": rel},
                                                                 "conv": {"relative": rel + 1}}}}
        for bench, res in results.items():
            (d / bench).mkdir(parents=True)
            (d / bench / "results.json").write_text(json.dumps(res))
    out = tmp_path / "report"
    assert _cli("report")(["--runs", str(tmp_path / "evals"), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert "| rlhf |" in md and "| sft |" in md and "POPE F1 (mean %)" in md and "94.1" in md
    assert "MMHal-Bench: score per question type" in md and "| Run | CP | FP-S |" in md
    for bench in ("pope", "mmhal", "mmbench", "llavabench"):
        assert (out / f"{bench}.png").stat().st_size > 1000
    assert "Evaluation report" in capsys.readouterr().out


def test_every_cli_explains_itself():
    wanted = {"eval/pope.py": "--questions", "eval/mmhal.py": "--judge-url", "eval/mmbench.py": "--matcher",
              "eval/llavabench.py": "--references", "eval/report.py": "--runs", "eval/checks.py": "--nofacts"}
    for command, got in help_texts(wanted).items():
        assert got["returncode"] == 0, (command, got["stderr"][-1000:])
        assert wanted[command] in got["stdout"] and "Example" in got["stdout"], (command, got["stdout"])
