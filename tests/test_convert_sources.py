"""Dataset converters (convert_common / convert_sources / convert_sources_qa / convert_cli): each public format's
handwritten fixture (tests/fixtures/data/sources) converts and reads back; bad records are skipped and named in
report.json; --strict and whole-file errors exit with code 2; over-long samples are rejected with a tokenizer."""
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from jaxlava.data.convert_cli import main
from jaxlava.data.convert_common import ConversionError
from jaxlava.data.convert_sources import Options, convert
from jaxlava.data.storage import open_source
from jaxlava.data.templates import SHORT_ANSWER

FIX = os.path.join(os.path.dirname(__file__), "fixtures", "data", "sources")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _jpeg(seed: int, size=(32, 24)) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    for k, name in enumerate(["000000000001.jpg", "COCO_train2014_000000000002.jpg", "1000.jpg", "2000.jpg"]):
        (d / name).write_bytes(_jpeg(k))
    (d / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"not a jpeg at all" * 4)
    return str(d)


def fx(name):
    return os.path.join(FIX, name)


def report(out):
    with open(os.path.join(out, "report.json")) as fh:
        return json.load(fh)


def records(out, kind):
    src = open_source(str(out), kind)
    return [src[i] for i in range(len(src))]


def cli(fmt, inputs, out, *extra, images=None):
    argv = [fmt, "--input", *inputs, "--out", str(out), "--quiet", *extra]
    return main(argv + (["--image-dir", images] if images else []))


def test_llava_acceptance(images, tmp_path):
    """Corrupt image, missing image and a malformed record are skipped and named; the rest is converted."""
    assert cli("llava", [fx("llava.json")], tmp_path, images=images) == 0
    rep = report(tmp_path)
    assert rep["written"] == 3 and rep["skipped"] == 3
    by_index = {r["index"]: r for r in rep["rejects"]}
    assert sorted(by_index) == [2, 3, 4]
    assert all(r["file"] == fx("llava.json") for r in rep["rejects"])
    assert "undecodable image 'corrupt.jpg'" in by_index[2]["reason"]
    assert "missing image '000000999999.jpg'" in by_index[3]["reason"]
    assert "malformed record" in by_index[4]["reason"] and "conversations" in by_index[4]["reason"]
    recs = records(tmp_path, "conversation")
    assert [r["id"] for r in recs] == ["000000000001", "text-only-1", "7"]
    with open(os.path.join(images, "000000000001.jpg"), "rb") as fh:
        assert recs[0]["image"] == fh.read()
    assert recs[0]["conversations"][0] == {"from": "human", "value": "What is on the table?\n<image>"}
    assert len(recs[0]["conversations"]) == 4 and recs[0]["source"] == "llava"
    assert recs[1]["image"] == b""
    assert recs[2]["conversations"][0]["from"] == "gpt"  # kept as released; the template drops it


def test_llava_strict_stops_at_first_bad_record(images, tmp_path, capsys):
    assert cli("llava", [fx("llava.json")], tmp_path, "--strict", images=images) == 2
    err = capsys.readouterr().err
    assert fx("llava.json") in err and "record 2" in err and "undecodable image" in err
    with pytest.raises(ConversionError, match=r"record 2: undecodable image"):
        convert("llava", [fx("llava.json")], str(tmp_path), opts=Options(image_dir=images), strict=True, quiet=True)


def test_turn_order_and_empty_conversation(images, tmp_path):
    assert cli("llava", [fx("llava_turns.json")], tmp_path, images=images) == 0
    rep = report(tmp_path)
    reasons = {r["index"]: r["reason"] for r in rep["rejects"]}
    assert rep["written"] == 2 and sorted(reasons) == [0, 1, 2, 5]
    assert reasons[0].startswith("wrong turn order") and "turn 1" in reasons[0]
    assert reasons[1] == "empty conversation"
    assert reasons[2].startswith("wrong turn order") and "gpt turn" in reasons[2]
    assert "holds <image> but the record names no image" in reasons[5]
    recs = records(tmp_path, "conversation")
    assert [r["id"] for r in recs] == ["good", "no-token"]
    assert recs[1]["conversations"][0]["value"] == "<image>\nIs there a plate?"  # the token is added


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ('{"id": 1}', "should hold a JSON list"),
])
def test_whole_file_errors(tmp_path, content, message, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    assert cli("llava", [str(bad)], tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert str(bad) in err and message in err
    assert not os.path.exists(tmp_path / "out" / "report.json")


def test_whole_file_errors_vqa_and_facts(tmp_path, capsys):
    q = tmp_path / "q.json"
    q.write_text('{"info": {}}')
    assert cli("vqav2", [str(q), fx("vqav2_annotations.json")], tmp_path / "o") == 2
    assert str(q) in capsys.readouterr().err
    assert cli("vqav2", [fx("vqav2_questions.json")], tmp_path / "o") == 2
    assert "questions file and an annotations file" in capsys.readouterr().err
    assert cli("preference", [fx("preference.json")], tmp_path / "o", "--facts", str(tmp_path / "nope.json")) == 2
    err = capsys.readouterr().err
    assert "nope.json" in err and "not found" in err


def test_vqav2_multi_round(images, tmp_path):
    assert cli("vqav2", [fx("vqav2_questions.json"), fx("vqav2_annotations.json")], tmp_path, "--max-turns", "2",
               images=images) == 0
    rep = report(tmp_path)
    reasons = {r["index"]: r["reason"] for r in rep["rejects"]}
    assert sorted(reasons) == [4, 5]
    assert "missing image" in reasons[4] and "000000000003.jpg" in reasons[4]
    assert "no annotation for question_id 2001" in reasons[5]
    recs = {r["id"]: r for r in records(tmp_path, "conversation")}
    assert sorted(recs) == ["vqav2_1_0", "vqav2_1_1", "vqav2_2_0"] and rep["written"] == 3
    c = recs["vqav2_1_0"]["conversations"]
    assert c == [{"from": "human", "value": "<image>\nWhat color is the cup?" + SHORT_ANSWER},
                 {"from": "gpt", "value": "red"},  # 2 x "red" beat 1 x "dark red"
                 {"from": "human", "value": "Is there a plate?" + SHORT_ANSWER}, {"from": "gpt", "value": "yes"}]
    assert recs["vqav2_1_1"]["conversations"][1]["value"] == "table"  # no answers: multiple_choice_answer
    assert recs["vqav2_2_0"]["conversations"][1]["value"] == "2"  # 2-2 tie: the first seen
    with open(os.path.join(images, "COCO_train2014_000000000002.jpg"), "rb") as fh:
        assert recs["vqav2_2_0"]["image"] == fh.read()


def test_aokvqa_mc_cot_ppo(images, tmp_path):
    opts = Options(image_dir=images)
    rep = convert("aokvqa", [fx("aokvqa.json")], str(tmp_path / "mc"), opts=opts, quiet=True)
    assert rep["written"] == 2 and [r["index"] for r in rep["rejects"]] == [2]
    assert "'choices' should be 4" in rep["rejects"][0]["reason"]
    mc = {r["id"]: r for r in records(tmp_path / "mc", "conversation")}
    turns = mc["aokvqa_mc_1_0"]["conversations"]
    assert len(turns) == 4  # two questions about image 1 in one conversation
    assert turns[0]["value"] == ("<image>\nWhat is the cup likely to hold?\nA. coffee\nB. sand\nC. nails\nD. paint"
                                 "\nAnswer with the option's letter from the given choices directly.")
    assert turns[1]["value"] == "A. coffee" and turns[3]["value"] == "B. table"
    assert mc["aokvqa_mc_2_0"]["conversations"][1]["value"] == "C. playing"

    opts.variant = "cot"
    rep = convert("aokvqa", [fx("aokvqa.json")], str(tmp_path / "cot"), opts=opts, quiet=True)
    assert sorted(r["index"] for r in rep["rejects"]) == [2, 3]  # index 3 has no rationale
    cot = {r["id"]: r for r in records(tmp_path / "cot", "conversation")}
    ans = cot["aokvqa_cot_1_0"]["conversations"][1]["value"]
    assert ans == "The cup sits next to a plate of breakfast. So the correct option is A. coffee"
    assert "correct option is A." in ans  # what the PPO checker looks for

    assert cli("aokvqa-ppo", [fx("aokvqa.json")], tmp_path / "ppo", images=images) == 0
    ppo = {r["id"]: r for r in records(tmp_path / "ppo", "ppo_prompt")}
    assert sorted(ppo) == ["aokvqa_22MexNkBPpdZGX6sxbxVBH", "aokvqa_2bHUaYE4o3R2mGQhBZVDnq", "aokvqa_4norat"]
    r = ppo["aokvqa_2bHUaYE4o3R2mGQhBZVDnq"]
    assert r["caption_type"] == 4 and r["length_bonus"] == 1.0  # C -> C_IN_ABCD
    assert ppo["aokvqa_4norat"]["caption_type"] == 3
    assert r["facts"] == ['The answer to "Why are the dogs running?" is "playing".',
                          "They chase a ball across the grass."]
    assert r["conversations"][1]["value"].startswith("C.")


def test_flickr30k_spotting(images, tmp_path):
    out = tmp_path / "f"
    assert cli("flickr30k", [os.path.join(FIX, "flickr30k", "Sentences")], out, "--per-image", "2",
               images=images) == 0
    rep = report(out)
    reasons = {os.path.basename(r["file"]): r["reason"] for r in rep["rejects"]}
    assert sorted(reasons) == ["2000.txt", "3000.txt"]
    assert "unbalanced" in reasons["2000.txt"] and "missing annotation" in reasons["3000.txt"]
    recs = records(out, "conversation")
    assert [r["id"] for r in recs] == ["flickr30k_1000_0", "flickr30k_1000_1"]
    assert recs[0]["conversations"][0]["value"].startswith("<image>\nDescribe the image")
    assert recs[0]["conversations"][1]["value"] == (
        "A man [0.100,0.100,0.600,0.990] in an orange hat [0.250,0.000,0.450,0.250] starring at something.")
    assert recs[1]["conversations"][1]["value"] == (
        "A man [0.100,0.100,0.600,0.990] and two dogs [0.650,0.600,0.800,0.900;0.825,0.620,0.995,0.950] "
        "walk on the beach.")


def test_preference_with_facts(images, tmp_path):
    assert cli("preference", [fx("preference.json")], tmp_path, "--facts", fx("image_to_caption.json"),
               images=images) == 0
    rep = report(tmp_path)
    assert rep["written"] == 2 and [r["index"] for r in rep["rejects"]] == [2]
    assert "'preference' should be 1 or 2" in rep["rejects"][0]["reason"]
    assert sum(rep["warnings"].values()) == 1  # pref-2's image has no captions
    recs = records(tmp_path, "preference")
    assert recs[0]["output_1"] == "A red cup next to a plate." and recs[0]["preference"] == 1
    assert recs[0]["hallucination"] is True
    assert recs[0]["facts"] == ["A red cup on a wooden table.", "A plate next to a cup."]
    assert recs[1]["facts"] == [] and recs[1]["preference"] == 2 and recs[1]["output_2"] == "Two dogs."


def test_ppo_prompts(images, tmp_path):
    assert cli("ppo-prompts", [fx("ppo_prompts.json")], tmp_path, "--facts", fx("image_to_caption.json"),
               images=images) == 0
    rep = report(tmp_path)
    assert rep["written"] == 3 and [r["index"] for r in rep["rejects"]] == [3]
    recs = {r["id"]: r for r in records(tmp_path, "ppo_prompt")}
    assert recs["000000000001"]["facts"] == ["A red cup on a wooden table.", "A plate next to a cup."]
    assert recs["000000000001"]["length_bonus"] == -0.5 and recs["000000000001"]["caption_type"] == 1
    assert recs["aok-1"]["facts"] == ["The cup holds coffee."]  # "aok_" + file name
    assert len(recs["aok-1"]["conversations"]) == 1
    assert recs["yesno-1"]["facts"] == ["Two dogs run on grass."]  # not in the facts file: its own captions
    assert recs["yesno-1"]["caption_type"] == 6


def test_over_long_rejected_with_tokenizer(images, tmp_path):
    from jaxlava.shapes.tokenizer import train_tokenizer
    texts = ["A chat between a curious user and an artificial intelligence assistant.", "What is on the table?",
             "A red cup and a plate.", "How many dogs are there? Two.", "USER: ASSISTANT:"] * 20
    tok_dir = str(tmp_path / "tok")
    train_tokenizer(texts, vocab_size=500).save_pretrained(tok_dir)
    args = ["--tokenizer", tok_dir, "--image-tokens", "4"]
    assert cli("llava", [fx("llava.json")], tmp_path / "long", *args, "--max-tokens", "100", images=images) == 0
    rep = report(tmp_path / "long")
    long = [r for r in rep["rejects"] if r["reason"].startswith("over-long sample")]
    # record 0: 110 tokens (v1 system prompt + 4 turns + 4 image tokens); the others 88 and 85
    assert [r["index"] for r in long] == [0] and "110 tokens > --max-tokens 100" in long[0]["reason"]
    assert rep["written"] == 2
    from transformers import AutoTokenizer
    from jaxlava.data.templates import render
    with open(fx("llava.json")) as fh:
        text = render(json.load(fh)[0]["conversations"]).replace("<image>", "<image>" * 4)
    assert len(AutoTokenizer.from_pretrained(tok_dir)(text)["input_ids"]) == 110  # counted as the pipeline does
    for fmt, name, n_long in (("preference", "preference.json", 2), ("ppo-prompts", "ppo_prompts.json", 3)):
        assert cli(fmt, [fx(name)], tmp_path / fmt, *args, "--max-tokens", "60", images=images) == 0
        rep = report(tmp_path / fmt)
        assert rep["written"] == 0 and sum(r["reason"].startswith("over-long") for r in rep["rejects"]) == n_long
    assert cli("llava", [fx("llava.json")], tmp_path / "ok", *args, "--max-tokens", "4000", images=images) == 0
    assert report(tmp_path / "ok")["written"] == 3
    assert cli("llava", [fx("llava.json")], tmp_path / "x", "--max-tokens", "10", images=images) == 2


def test_help_lists_formats():
    out = subprocess.run([sys.executable, "-m", "jaxlava.data.convert_cli", "--help"], capture_output=True,
                         text=True, cwd=ROOT, check=True).stdout
    for fmt in ("llava", "vqav2", "aokvqa", "aokvqa-ppo", "flickr30k", "preference", "ppo-prompts"):
        assert fmt in out
