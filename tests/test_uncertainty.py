"""The paired bootstrap beside the reproduction's per-seed checks (jaxlava/reproduce/uncertainty.py)."""
import json

import numpy as np
import pytest

from jaxlava.reproduce import report, uncertainty


def _counts(ids, mentioned, hallucinated, present, recalled):
    return {"ids": np.array(ids), "mentioned": np.asarray(mentioned, float),
            "hallucinated": np.asarray(hallucinated, float), "present": np.asarray(present, float),
            "recalled": np.asarray(recalled, float)}


def _system(rng, n, p_halluc, p_recall, mentions=3, present=3):
    ids = [f"img-{i:05d}" for i in range(n)]
    return _counts(ids, np.full(n, mentions), rng.binomial(mentions, p_halluc, n), np.full(n, present),
                   rng.binomial(present, p_recall, n))


def test_point_values_are_the_acceptance_checks_numbers():
    rng = np.random.default_rng(1)
    sft, nofacts, fact = (_system(rng, 300, p, r) for p, r in ((0.10, 0.8), (0.08, 0.75), (0.05, 0.78)))
    got = uncertainty.bootstrap_checks(sft, nofacts, fact, report.acceptance, resamples=200)

    def rates(c):
        return {"chair_i": c["hallucinated"].sum() / c["mentioned"].sum(),
                "recall": c["recalled"].sum() / c["present"].sum()}
    want = report.acceptance(rates(sft), rates(nofacts), rates(fact))
    for g, w in zip(got, want):
        assert g["value"] == pytest.approx(w["value"], rel=1e-12)
        assert g["low"] < g["value"] < g["high"] and g["se"] > 0


def test_identical_systems_differ_by_exactly_zero_in_every_resample():
    rng = np.random.default_rng(2)
    a = _system(rng, 200, 0.1, 0.8)
    drop, fall, diff = uncertainty.bootstrap_checks(a, a, a, report.acceptance, resamples=100)
    for c in (drop, fall, diff):
        assert c["value"] == c["low"] == c["high"] == 0.0 and c["se"] == 0.0


def test_spread_matches_the_binomial_standard_error():
    """Independent mentions: the bootstrap SE of a CHAIR-i difference is sqrt(p1 q1 / m + p2 q2 / m), m mentions."""
    rng = np.random.default_rng(3)
    n, k = 4000, 3
    sft, nofacts = _system(rng, n, 0.10, 0.8, k), _system(rng, n, 0.05, 0.8, k)
    _, _, diff = uncertainty.bootstrap_checks(sft, sft, nofacts, report.acceptance, resamples=1000)
    p1, p2 = sft["hallucinated"].sum() / (n * k), nofacts["hallucinated"].sum() / (n * k)
    want = np.sqrt(p1 * (1 - p1) / (n * k) + p2 * (1 - p2) / (n * k))
    assert diff["se"] == pytest.approx(want, rel=0.1)
    # the 95 % interval is about +-1.96 SE around the point
    assert (diff["high"] - diff["low"]) / (2 * 1.96 * want) == pytest.approx(1.0, rel=0.15)


def test_rows_are_paired_by_image_id_whatever_their_order():
    rng = np.random.default_rng(4)
    a, b = _system(rng, 100, 0.1, 0.8), _system(rng, 100, 0.05, 0.8)
    perm = rng.permutation(100)
    shuffled = {k: v[perm] for k, v in b.items()}
    assert uncertainty.bootstrap_checks(a, a, b, report.acceptance, resamples=300) == uncertainty.bootstrap_checks(
        a, a, shuffled, report.acceptance, resamples=300)
    other = dict(b, ids=np.array([f"x{i}" for i in range(100)]))
    with pytest.raises(ValueError, match="Fact-RLHF described other images"):
        uncertainty.bootstrap_checks(a, a, other, report.acceptance)


def test_seed_intervals_reads_the_judges_files(tmp_path):
    rows = [{"id": "a", "mentioned": ["red circle", "blue star"], "hallucinated": ["blue star"],
             "present": ["red circle"], "recalled": ["red circle"]},
            {"id": "b", "mentioned": ["green square"], "hallucinated": [], "present": ["green square", "red star"],
             "recalled": ["green square"]}]
    dirs = {}
    for key in ("sft", "rlhf_nofacts", "fact_rlhf"):
        (tmp_path / key).mkdir()
        (tmp_path / key / "judgements.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        dirs[key] = str(tmp_path / key)
    got = uncertainty.seed_intervals(dirs, report.acceptance)
    assert [c["value"] for c in got] == [0.0, 0.0, 0.0]
    (tmp_path / "sft" / "judgements.jsonl").unlink()
    # a judge without judgements: no interval, not an error
    assert uncertainty.seed_intervals(dirs, report.acceptance) is None
    (tmp_path / "sft" / "judgements.jsonl").write_text("")
    with pytest.raises(ValueError, match="no judged descriptions"):
        uncertainty.seed_intervals(dirs, report.acceptance)


def test_checks_carry_the_intervals_and_the_table_shows_them():
    per_seed = {"0": {"systems": {k: {"chair_i": c, "recall": 0.8} for k, c in
                                  (("sft", 0.2), ("rlhf_nofacts", 0.15), ("fact_rlhf", 0.1))}}}
    iv = [{"value": 0.5, "se": 0.1, "low": 0.3, "high": 0.7}, {"value": 0.0, "se": 0.01, "low": -0.02, "high": 0.02},
          {"value": -0.05, "se": 0.02, "low": -0.09, "high": -0.01}]
    checks = report.all_checks(per_seed, per_seed["0"], {"0": iv})
    assert checks["per_seed"]["0"][0]["interval"] == {"se": 0.1, "low": 0.3, "high": 0.7}
    assert "interval" not in checks["overall"][0]
    assert report._verdict(checks["per_seed"]["0"][0]) == "pass (+50.0% [+30.0%, +70.0%])"
    assert report._verdict(checks["per_seed"]["0"][2]) == "pass (-5.00 pt [-9.00 pt, -1.00 pt])"
    assert "interval" not in report.all_checks(per_seed, per_seed["0"], {"0": None})["per_seed"]["0"][0]


def test_repeated_runs_average_their_rates_under_the_same_draw():
    """A system given as several runs (PPO repeats): its point rates are the mean of the runs' rates, and two
    copies of one run change nothing, in the point or in any resample."""
    rng = np.random.default_rng(5)
    sft, a, b = _system(rng, 150, 0.1, 0.8), _system(rng, 150, 0.05, 0.7), _system(rng, 150, 0.02, 0.9)
    once = uncertainty.bootstrap_checks(sft, a, a, report.acceptance, resamples=200)
    assert uncertainty.bootstrap_checks(sft, [a, a], [a, a], report.acceptance, resamples=200) == once
    got = uncertainty.bootstrap_checks(sft, [a, b], [b, a, b], report.acceptance, resamples=200)

    def rate(c, num, den):
        return c[num].sum() / c[den].sum()
    nofacts = {"chair_i": (rate(a, "hallucinated", "mentioned") + rate(b, "hallucinated", "mentioned")) / 2,
               "recall": (rate(a, "recalled", "present") + rate(b, "recalled", "present")) / 2}
    fact = {"chair_i": (rate(a, "hallucinated", "mentioned") + 2 * rate(b, "hallucinated", "mentioned")) / 3,
            "recall": (rate(a, "recalled", "present") + 2 * rate(b, "recalled", "present")) / 3}
    want = report.acceptance({"chair_i": rate(sft, "hallucinated", "mentioned"),
                              "recall": rate(sft, "recalled", "present")}, nofacts, fact)
    assert [g["value"] for g in got] == pytest.approx([w["value"] for w in want], rel=1e-12)
    with pytest.raises(ValueError, match="RLHF \\(no facts\\) described other images"):
        uncertainty.bootstrap_checks(sft, [a, dict(b, ids=np.array([f"x{i}" for i in range(150)]))], a,
                                     report.acceptance)
