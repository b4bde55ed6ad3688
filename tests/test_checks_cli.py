"""eval/checks.py: the claim's three checks on any three systems' judge folders (jaxlava/reproduce/compare.py)."""
import importlib.util
import json
import os

import pytest

from jaxlava.reproduce import report

_spec = importlib.util.spec_from_file_location(
    "eval_cli_checks", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "eval", "checks.py"))
cli = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cli)

OBJECTS = ["red circle", "blue square", "green star", "yellow diamond"]


def _judge(folder, rows, results=None):
    """rows: (mentioned, hallucinated, present, recalled) counts per image; writes judgements.jsonl."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "judgements.jsonl"), "w") as f:
        for i, (m, h, p, r) in enumerate(rows):
            f.write(json.dumps({"id": f"img-{i:03d}", "mentioned": OBJECTS[:m], "hallucinated": OBJECTS[:h],
                                "present": OBJECTS[:p], "recalled": OBJECTS[:r]}) + "\n")
    if results is not None:
        with open(os.path.join(folder, "results.json"), "w") as f:
            json.dump(results, f)
    return str(folder)


def _results(repeats, habit_rate):
    return {"descriptions": {"chair_i": 0.0, "recall": 0.0, "repeats": repeats, "empty": 0.125,
                             "habit": {"rate": habit_rate, "share": 0.0, "chair_i_other": 0.0}},
            "pope": {"splits": {}, "overall": {}}}


@pytest.fixture
def folders(tmp_path):
    # SFT: 20 mentions, 4 hallucinated (0.2); 20 present, 16 recalled (0.8)
    sft = _judge(tmp_path / "sft", [(2, 1, 2, 2)] * 4 + [(2, 0, 2, 1)] * 4 + [(2, 0, 2, 2)] * 2,
                 _results(0.3, 0.25))
    # no facts: 20 mentions, 3 hallucinated; recall 15/20
    nofacts = _judge(tmp_path / "nofacts", [(2, 1, 2, 1)] * 3 + [(2, 0, 2, 1)] * 2 + [(2, 0, 2, 2)] * 5)
    # facts, two PPO runs: 2/20 and 1/20 hallucinated (mean 0.075); recall 16/20 and 15/20 (mean 0.775)
    f1 = _judge(tmp_path / "facts1", [(2, 1, 2, 2)] * 2 + [(2, 0, 2, 1)] * 4 + [(2, 0, 2, 2)] * 4)
    f2 = _judge(tmp_path / "facts2", [(2, 1, 2, 1)] * 1 + [(2, 0, 2, 1)] * 4 + [(2, 0, 2, 2)] * 5)
    return sft, nofacts, f1, f2


def test_numbers_and_checks_are_computed_from_the_judgements(folders, tmp_path, capsys):
    sft, nofacts, f1, f2 = folders
    out = tmp_path / "checks.json"
    assert cli.main(["--sft", sft, "--nofacts", nofacts, "--facts", f1, f2, "--json", str(out),
                     "--resamples", "300"]) == 0
    got = json.loads(out.read_text())
    s = got["systems"]
    assert s["sft"]["chair_i"] == pytest.approx(0.2) and s["sft"]["recall"] == pytest.approx(0.8)
    assert s["rlhf_nofacts"]["chair_i"] == pytest.approx(0.15) and s["rlhf_nofacts"]["recall"] == pytest.approx(0.75)
    assert s["fact_rlhf"]["chair_i"] == pytest.approx(0.075) and s["fact_rlhf"]["recall"] == pytest.approx(0.775)
    assert s["sft"]["repeats"] == pytest.approx(0.3) and s["sft"]["partner_named"] == pytest.approx(0.25)
    assert s["sft"]["empty"] == pytest.approx(0.125) and s["rlhf_nofacts"]["empty"] is None
    assert s["fact_rlhf"]["repeats"] is None  # no results.json there
    drop, fall, diff = got["checks"]
    assert drop["value"] == pytest.approx((0.2 - 0.075) / 0.2) and drop["pass"]
    assert fall["value"] == pytest.approx((0.8 - 0.775) / 0.8) and fall["pass"]
    assert diff["value"] == pytest.approx(0.075 - 0.15) and diff["pass"]
    assert got["passed"]
    for c in got["checks"]:
        assert c["interval"]["low"] <= c["value"] <= c["interval"]["high"]
    # the same numbers as the reproduction's own check function on these rates
    want = report.acceptance(s["sft"], s["rlhf_nofacts"], s["fact_rlhf"])
    assert [c["value"] for c in want] == pytest.approx([c["value"] for c in got["checks"]])
    printed = capsys.readouterr().out
    assert "PPP: all three checks pass" in printed and "| Fact-RLHF | 2 | 7.50 | 77.50 |" in printed


def test_a_failing_check_is_reported(folders, capsys):
    sft, nofacts, f1, _ = folders
    # swap the two RLHF systems: CHAIR-i 0.15 is 25 % below SFT's 0.2, recall 0.75 falls 6.25 % from 0.8, and
    # 0.15 is above 0.10 (the first facts run)
    cli.main(["--sft", sft, "--nofacts", f1, "--facts", nofacts, "--resamples", "100"])
    printed = capsys.readouterr().out
    assert "FFF: not every check passes" in printed
    assert "FAIL (+25.0%" in printed and "FAIL (+6.3%" in printed and "FAIL (+5.00 pt" in printed


def test_missing_judgements_name_the_file(folders, tmp_path):
    sft, nofacts, f1, _ = folders
    with pytest.raises(SystemExit, match="nowhere/judgements.jsonl: no judgements"):
        cli.main(["--sft", sft, "--nofacts", nofacts, "--facts", str(tmp_path / "nowhere")])


def test_other_images_refuse_a_paired_comparison(folders, tmp_path):
    sft, nofacts, _, _ = folders
    short = _judge(tmp_path / "short", [(2, 0, 2, 2)] * 9)
    with pytest.raises(SystemExit, match="described other images"):
        cli.main(["--sft", sft, "--nofacts", nofacts, "--facts", short])
