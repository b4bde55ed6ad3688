"""`python train/reproduce.py`: the shapes-world reproduction end to end on the `tiny` recipe (its outputs and
their keys, the on-policy pairs, the audit stage's judgements and scores, a rerun that skips every cached stage,
a changed setting that is refused), the acceptance checks on hand-made numbers, the summary over seeds, and the
object-hallucination numbers of PPO's held-out evaluation."""
import dataclasses
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from cli_fixtures import ROOT, cli_env
from jaxlava.reproduce import report
from jaxlava.reproduce.stages import STAGES

TINY = ("--recipe", "tiny", "--seeds", "0")


def _reproduce(out, *extra, timeout=900):  # with the session's compilation cache (conftest.py)
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "train/reproduce.py", *TINY, "--out", str(out), *extra], cwd=ROOT,
                       env=cli_env(1), capture_output=True, text=True, timeout=timeout, check=False)
    return r, time.perf_counter() - t0


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The tiny recipe from an empty folder: (OUT, its stdout, seconds)."""
    out = tmp_path_factory.mktemp("reproduce") / "out"
    r, seconds = _reproduce(out)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out, r.stdout, seconds


@pytest.mark.slow
def test_tiny_recipe_end_to_end(tiny_run):
    out, stdout, _ = tiny_run
    for f in ("results.json", "results.md", "systems.png", "ppo_hallucination.png", "world/world.json"):
        assert (out / f).exists(), f
    for stage in STAGES:
        assert (out / "seed0" / stage / "stage.json").exists(), stage
        assert f"] {stage}: done in" in stdout, stage
    assert (out / "seed0" / "sft" / "hf" / "config.json").exists()
    assert (out / "seed0" / "ppo_facts" / "adapter" / "adapter_config.json").exists()
    assert json.loads((out / "seed0" / "rm_nofacts" / "config.json").read_text())["no_facts"] is True

    r = json.loads((out / "results.json").read_text())
    assert {"recipe", "seeds", "summary", "checks", "seconds", "ppo_curves", "plots"} <= set(r)
    seed = r["seeds"]["0"]
    pope = {f"pope_{s}_{k}" for s in ("random", "popular", "adversarial") for k in ("f1", "accuracy", "yes_ratio")}
    for system in ("sft", "rlhf_nofacts", "fact_rlhf"):
        assert {"chair_i", "chair_s", "recall", "rating", "habit_rate", "habit_share"} | pope <= set(
            seed["systems"][system]), system
        assert seed["systems"][system]["chair_i"] is not None
    assert set(seed["rm"]) == {"facts", "other_facts", "no_facts", "audit_facts", "audit_other_facts",
                               "audit_no_facts", "audit_facts_within", "audit_no_facts_within"}
    assert None not in seed["rm"].values() and 0 <= seed["rm"]["audit_facts_within"] <= 1
    audit = json.loads((out / "seed0" / "rm_audit" / "audit.json").read_text())
    assert audit["prompts"] == 4 and all(len(x["texts"]) == 8 for x in audit["responses"])
    for which in ("facts", "nofacts"):
        assert seed["ppo"][which]["kl"] is not None and seed["ppo"][which]["response_length"] is not None
        assert [p[0] for p in r["ppo_curves"][which]["0"]] == [0, 1, 2]  # before PPO, then every step (tiny)
    assert set(r["summary"]["systems"]["fact_rlhf"]["chair_i"]) == {"mean", "std", "min", "max", "n"}
    assert [c["check"] for c in r["checks"]["overall"]] == ["chair_i_drop", "recall_kept", "facts_beat_no_facts"]
    assert list(r["checks"]["per_seed"]) == ["0"] and isinstance(r["checks"]["passed"], bool)
    assert set(r["seconds"]["stages"]["0"]) == set(STAGES) and r["seconds"]["all_stages"] > 0

    md = (out / "results.md").read_text()
    for text in ("| SFT |", "| RLHF (no facts) |", "| Fact-RLHF |", "CHAIR-i", "POPE F1 adv", "yes pop",
                 "RM with facts, another pair's", "RM without facts", "RM without facts, on the policy's samples",
                 "partner named %", "no object %", "## Acceptance checks", "paper's claim"):
        assert text in md, text
    assert "| system |" in stdout  # the final table is printed


@pytest.fixture(scope="module")
def rerun(tiny_run, tmp_path_factory):
    """A copy of the finished tiny run (hard links) given to `python -m jaxlava.demo` with `--ppo-repeats 2`: the
    demo is the reproduction with the demo's defaults, so one command shows both that a finished OUT reruns no
    stage and that asking for a second PPO repeat runs only that repeat's stages.  (OUT, its stdout)."""
    import shutil
    out = tmp_path_factory.mktemp("rerun") / "out"
    shutil.copytree(tiny_run[0], out, copy_function=os.link)
    r = subprocess.run([sys.executable, "-m", "jaxlava.demo", *TINY, "--out", str(out), "--ppo-repeats", "2"],
                       cwd=ROOT, env=cli_env(1), capture_output=True, text=True, timeout=900, check=False)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out, r.stdout


@pytest.mark.slow
def test_demo_reuses_the_stages_and_ends_with_the_three_systems(rerun):
    """`python -m jaxlava.demo` on a finished OUT reruns none of its stages, checks transformers' logits on the SFT
    export and prints the three-row table last."""
    stdout = rerun[1]
    assert all(f"] {stage}: skipped" in stdout for stage in STAGES)
    diff = float(stdout.split("max |logit diff| = ")[1].split()[0])
    assert diff < 1e-4
    tail = stdout[stdout.index("== the three systems"):]
    rows = [line for line in tail.splitlines() if line.startswith("| ")]
    assert [row.split("|")[1].strip() for row in rows] == ["system", "SFT", "RLHF (no facts)", "Fact-RLHF"]


def test_demo_defaults_yield_to_given_flags():
    from jaxlava.demo import demo_argv
    assert demo_argv([]) == ["--recipe", "demo", "--seeds", "0", "--out", "runs/demo"]
    assert demo_argv(["--out=x", "--sft-steps", "9"]) == ["--recipe", "demo", "--seeds", "0", "--out=x",
                                                          "--sft-steps", "9"]


def test_demo_says_which_steps_it_cut():
    from jaxlava.demo import fewer_steps_note
    from jaxlava.reproduce.recipe import RECIPES, parse_config
    note = fewer_steps_note(parse_config(["--recipe", "demo"]))
    assert f"SFT {RECIPES['demo'].sft_steps} (reproduction: {RECIPES['reading'].sft_steps})" in note
    assert "reading stage" in note and "further SFT phases 0 (reproduction: 2)" in note and "PPO" in note
    assert "further grounding phases 0 (reproduction: up to 2, while the held-out loss is above 0.01)" in note
    assert f"first {RECIPES['demo'].rm_eval_pairs} test pairs" in note and "audit without edit twins" in note
    assert fewer_steps_note(parse_config(["--recipe", "reading"])) == ""
    assert "reading stage 0 (reproduction: 3000)" in fewer_steps_note(parse_config(["--recipe", "full"]))


@pytest.mark.slow
def test_ppo_held_out_eval_logs_hallucination(tiny_run):
    out = tiny_run[0]
    from jaxlava.training.metrics import read_metrics
    for which in ("ppo_facts", "ppo_nofacts"):
        rows = read_metrics(str(out / "seed0" / which))
        evals = [x for x in rows if "eval_score" in x]
        assert evals, which
        for x in evals:
            assert {"eval_chair_i", "eval_chair_s", "eval_recall", "eval_descriptions"} <= set(x), sorted(x)
            assert 0 <= x["eval_chair_i"] <= 1 and x["eval_descriptions"] >= 1
        before = json.loads((out / "seed0" / which / "stage.json").read_text())["result"]["before"]
        assert {"chair_i", "chair_s", "recall"} <= set(before)


@pytest.mark.slow
def test_audit_stage_judges_and_scores_each_sample_as_the_judges_and_reward_model_do(tiny_run):
    """The audit stage (jaxlava/training/rm_audit.py) of the tiny run: every written judgement is the shapes judges'
    verdict on the written text, one sample's score equals the facts reward model's score of that text computed
    by hand (its own facts, the rollout's fact order), and the pair numbers are `pair_accuracy` of the samples."""
    import jax
    from jaxlava import rm
    from jaxlava.data.pipeline import EncodePrompt
    from jaxlava.data.processor import LlavaProcessor
    from jaxlava.data.storage import open_source
    from jaxlava.data.templates import encode_reward_input
    from jaxlava.eval.shapes import prompt_judgement, world_partners
    from jaxlava.hf import from_pretrained
    from jaxlava.lora import make_lora
    from jaxlava.peft_io import load_reward_model_adapter
    from jaxlava.training.rm_audit import LAPSES, best_of, lapse_counts, object_prices, pair_accuracy, table
    from jaxlava.training.rollout import _row_rng
    out = tiny_run[0]
    rec = json.loads((out / "seed0" / "rm_audit" / "audit.json").read_text())
    assert rec["prompts"] == len(rec["responses"]) > 0
    facts_rm = [p for p, res in rec["reward_models"].items() if res["facts"]]
    assert len(facts_rm) == 1 and len(rec["reward_models"]) == 2
    src = open_source(str(out / "world"), "ppo_prompt", "train")
    prompts = {src[i]["id"]: src[i] for i in range(len(src))}
    judged = {}
    for resp in rec["responses"]:
        p = prompts[resp["id"]]
        judged[resp["id"]] = [prompt_judgement(p["conversations"], t, p["facts"]) for t in resp["texts"]]
        assert [list(j.hallucinated) for j in judged[resp["id"]]] == resp["hallucinated"]
        assert [list(j.recalled) for j in judged[resp["id"]]] == resp["recalled"]
        assert [list(j.repeated) for j in judged[resp["id"]]] == resp["repeated"]
    partners = world_partners(str(out / "world"))
    for path, res in rec["reward_models"].items():
        groups = [[(s, len(j.hallucinated), len(j.recalled)) for s, j in zip(resp["scores"][path], judged[resp["id"]])]
                  for resp in rec["responses"]]
        assert res["own"] == pair_accuracy(groups), path
        assert res["best_of"] == [b for k in sorted({min(4, rec["samples"]), rec["samples"]})
                                  if (b := best_of(groups, k)) is not None], path
        lapses = [[(s, *lapse_counts(j, partners)) for s, j in zip(resp["scores"][path], judged[resp["id"]])]
                  for resp in rec["responses"]]
        assert res["lapse_prices"] == object_prices(lapses, LAPSES), path
    md = table(rec)
    assert "fewer absent objects wins" in md and "another prompt's" in md and md.count("\n| ") == 4
    # one sample by hand: the second sample (k = 1, the rollout's fact order for step 1) of the first prompt
    # on the reward model's own base: the tiny recipe's reading stage, not the SFT model
    init = json.loads((out / "seed0" / "rm_facts" / "config.json").read_text())["init"]
    assert init.endswith("seed0/rm_read/hf")
    resp, k = rec["responses"][0], 1
    p = prompts[resp["id"]]
    proc = LlavaProcessor.from_pretrained(init)
    model = from_pretrained(init, dtype="float32", compute_dtype="float32")
    lora, lcfg, head = load_reward_model_adapter(facts_rm[0], model.config)
    turn = [t for t in p["conversations"] if t["from"] == "human"][:1]
    ids = encode_reward_input(proc.tokenizer, turn, resp["texts"][k], p["facts"], image_token_id=proc.image_token_id,
                              num_image_tokens=proc.num_image_tokens, rng=_row_rng(0, k, resp["id"]))
    pixels = EncodePrompt(proc, "v1")(p)["pixel_values"][None]
    s = rm.scores(model, jax.tree.map(np.asarray, head), ids[None], pixels, np.ones_like(ids)[None],
                  lora=make_lora(lora, lcfg))
    assert float(s[0]) == pytest.approx(resp["scores"][facts_rm[0]][k], abs=1e-4)


@pytest.mark.slow
def test_pairs_stage_writes_judged_pairs_that_both_reward_models_read(tiny_run):
    """The on-policy pairs of the tiny run: each record's preferred response is the judges' better one (fewer
    absent objects and, with the recipe's 'skip', no fewer present ones; or as many absent and more present), both
    reward models name the pairs as their extra data, and the audit samples other prompts."""
    from jaxlava.data.storage import open_source
    from jaxlava.eval.shapes import prompt_judgement
    out = tiny_run[0]
    summary = json.loads((out / "seed0" / "rm_pairs" / "pairs.json").read_text())
    recs = open_source(str(out / "seed0" / "rm_pairs"), "preference", "train")
    assert len(recs) == summary["pairs"] == summary["hallucination"] + summary["recall"] > 0
    src = open_source(str(out / "world"), "ppo_prompt", "train")
    prompts = {src[i]["id"]: src[i] for i in range(len(src))}
    for i in range(len(recs)):
        r = recs[i]
        p = prompts[r["id"].rsplit("-s", 2)[0]]
        chosen, other = (r["output_1"], r["output_2"])[::1 if r["preference"] == 1 else -1]
        jc, jo = (prompt_judgement(p["conversations"], t, p["facts"]) for t in (chosen, other))
        assert (len(jc.hallucinated), -len(jc.recalled)) < (len(jo.hallucinated), -len(jo.recalled)), r["id"]
        assert len(jc.recalled) >= len(jo.recalled) and r["facts"] == p["facts"] and r["image"] == p["image"]
    for rm in ("rm_facts", "rm_nofacts"):
        cfg = json.loads((out / "seed0" / rm / "config.json").read_text())
        assert cfg["extra_data"] == [str(out / "seed0" / "rm_pairs")], rm
    audit = json.loads((out / "seed0" / "rm_audit" / "audit.json").read_text())
    assert not {x["id"] for x in audit["responses"]} & {x["id"] for x in summary["responses"]}


@pytest.mark.slow
def test_a_changed_setting_is_refused(tiny_run):
    """(A rerun that skips every cached stage: test_ppo_repeats_rerun_only_ppo_and_the_report_takes_their_means.)"""
    out = tiny_run[0]
    r, _ = _reproduce(out, "--ppo-steps", "3")
    assert r.returncode != 0
    assert "ppo_facts was made with other settings (steps differ)" in r.stderr, r.stderr[-2000:]


@pytest.mark.slow
def test_ppo_repeats_rerun_only_ppo_and_the_report_takes_their_means(rerun):
    """A finished run asked for 2 PPO repeats (in a copy of it) runs only the second repeat's PPO runs and judges;
    each seed's RLHF numbers are then the means of the two repeats, and results.md lists each one's checks."""
    out, stdout = rerun
    assert stdout.count(": skipped (cached") == len(STAGES) + 1  # the world and every stage of the first run
    assert not any(f"] {stage}: done in" in stdout for stage in STAGES)
    for stage in ("ppo_facts_r1", "ppo_nofacts_r1", "judge_rlhf_nofacts_r1", "judge_fact_rlhf_r1"):
        assert f"] {stage}: done in" in stdout, stage
    res = json.loads((out / "results.json").read_text())
    reps = res["repeats"]["0"]
    assert [x["ppo_seed"] for x in reps] == [0, 100]
    for key in ("rlhf_nofacts", "fact_rlhf"):
        judged = [report.judged(str(out), 0, key, k) for k in (0, 1)]
        assert [x["systems"][key]["chair_i"] for x in reps] == [j["chair_i"] for j in judged]
        for m in ("chair_i", "recall", "pope_random_f1"):
            assert res["seeds"]["0"]["systems"][key][m] == pytest.approx((judged[0][m] + judged[1][m]) / 2)
    sft = res["seeds"]["0"]["systems"]["sft"]
    for x in reps:
        assert [c["value"] for c in x["checks"]] == [c["value"] for c in report.acceptance(
            sft, x["systems"]["rlhf_nofacts"], x["systems"]["fact_rlhf"])]
    kl = [report.ppo_numbers(str(out / "seed0" / f"ppo_facts{s}"))["kl"] for s in ("", "_r1")]
    assert res["seeds"]["0"]["ppo"]["facts"]["kl"] == pytest.approx(sum(kl) / 2)
    assert set(res["ppo_curves"]["facts"]) == {"0", "0.r1"}
    md = (out / "results.md").read_text()
    assert "## PPO repeats (2 per reward model and seed)" in md and "| 0 | 100 |" in md


# ----------------------------------------------------------------------------------------------- pure functions
def _systems(sft, nofacts, fact):
    return {"sft": dict(zip(("chair_i", "recall"), sft)), "rlhf_nofacts": dict(zip(("chair_i", "recall"), nofacts)),
            "fact_rlhf": dict(zip(("chair_i", "recall"), fact))}


def _verdicts(sft, nofacts, fact):
    s = _systems(sft, nofacts, fact)
    return [c["pass"] for c in report.acceptance(s["sft"], s["rlhf_nofacts"], s["fact_rlhf"])]


def test_acceptance_checks_on_hand_made_numbers():
    # (CHAIR-i, recall) of SFT, RLHF without facts, Fact-RLHF
    assert _verdicts((0.20, 0.80), (0.18, 0.80), (0.10, 0.79)) == [True, True, True]
    assert _verdicts((0.20, 0.80), (0.18, 0.80), (0.14, 0.80)) == [True, True, True]  # exactly 30% lower
    assert _verdicts((0.20, 0.80), (0.18, 0.80), (0.1402, 0.80)) == [False, True, True]  # 29.9%
    assert _verdicts((0.20, 0.80), (0.18, 0.80), (0.10, 0.76)) == [True, True, True]  # recall exactly 5% lower
    assert _verdicts((0.20, 0.80), (0.18, 0.80), (0.10, 0.7599)) == [True, False, True]
    assert _verdicts((0.20, 0.80), (0.10, 0.80), (0.10, 0.90)) == [True, True, False]  # a tie is not below
    assert _verdicts((0.20, 0.80), (0.05, 0.80), (0.10, 0.80)) == [True, True, False]
    assert _verdicts((0.0, 0.80), (0.0, 0.80), (0.0, 0.80)) == [False, True, False]  # nothing to lower
    assert _verdicts((0.20, 0.0), (0.30, 0.0), (0.10, 0.0)) == [True, True, True]  # no recall to lose
    assert _verdicts((0.20, None), (0.30, 0.8), (0.10, 0.8)) == [False, False, False]  # a missing number
    checks = report.acceptance(*_systems((0.20, 0.80), (0.18, 0.80), (0.10, 0.79)).values())
    assert checks[0]["value"] == pytest.approx(0.5) and checks[1]["value"] == pytest.approx(0.0125)
    assert checks[2]["value"] == pytest.approx(-0.08)


def test_checks_per_seed_and_on_the_means():
    """Seed 1 fails check 1 alone; the means over both seeds pass it (a 35% drop)."""
    per_seed = {"0": {"systems": _systems((0.20, 0.8), (0.20, 0.8), (0.10, 0.8))},
                "1": {"systems": _systems((0.20, 0.8), (0.20, 0.8), (0.16, 0.8))}}
    summary = report.summarize(per_seed)
    assert summary["systems"]["fact_rlhf"]["chair_i"] == pytest.approx(
        {"mean": 0.13, "std": np.std([0.10, 0.16], ddof=1), "min": 0.10, "max": 0.16, "n": 2})
    checks = report.all_checks(per_seed, report.means(summary))
    assert [c["pass"] for c in checks["per_seed"]["0"]] == [True, True, True]
    assert [c["pass"] for c in checks["per_seed"]["1"]] == [False, True, True]
    assert [c["pass"] for c in checks["overall"]] == [True, True, True] and checks["passed"]
    assert report.summarize({"0": {"x": None}, "1": {"x": None}})["x"]["n"] == 0


def test_changed_settings_name_what_differs():
    from jaxlava.reproduce.stages import changed_settings
    old = {"steps": 3, "optim": {"lr": 1e-3, "warmup": 0}, "seed": 0}
    # a setting added since: off (its default, what the code did before it existed) is the same, on is not
    assert changed_settings(old, dict(old, new_field=0, new_flag=False, new_paths=(), new_name=None)) == []
    assert changed_settings(old, dict(old, new_field=256, new_flag=True)) == ["new_field", "new_flag"]
    assert changed_settings(old, {**old, "steps": 4, "optim": {"lr": 2e-3, "warmup": 0}}) == ["steps", "optim.lr"]
    assert changed_settings(old, {"steps": 3, "optim": old["optim"]}) == ["seed"]


def test_world_flags_and_recipes():
    from jaxlava.reproduce.recipe import HABIT_MIX, READING_MIX, RECIPES, parse_config
    from jaxlava.reproduce.stages import stage_configs, world_flags
    assert world_flags(("size=small", "colours=red blue", "pref_minimal_prob=1")) == [
        "--size", "small", "--colours", "red", "blue", "--pref-minimal-prob", "1"]
    cfg = parse_config(["--recipe", "demo", "--sft-steps", "7", "--set", "ppo_lr=3e-4", "--seeds", "4", "5"])
    assert (cfg.recipe, cfg.sft_steps, cfg.ppo_lr, cfg.seeds) == ("demo", 7, 3e-4, (4, 5))
    assert cfg.rm_steps == RECIPES["demo"].rm_steps < RECIPES["reading"].rm_steps
    # the default is the reading recipe (decisions 67); the demo is it with fewer steps, and demo-full the full
    # recipe's demo of before; plain is the generator's default world
    assert parse_config([]).recipe == "reading" and RECIPES["demo"].world == RECIPES["reading"].world
    for small, big in (("demo", "reading"), ("demo-full", "full")):
        assert all(getattr(RECIPES[small], f) < getattr(RECIPES[big], f)
                   for f in ("ground_steps", "sft_steps", "rlinit_steps", "rm_steps", "ppo_steps"))
    demo = RECIPES["demo"]
    assert 0 < demo.rm_read_steps < RECIPES["reading"].rm_read_steps and demo.rm_onpolicy_prompts > 0
    assert (demo.rm_image_pool, demo.ppo_prompt_group, demo.sft_more) == (8, 4, ())
    assert RECIPES["demo-full"].world == RECIPES["full"].world and RECIPES["plain"].world == ()
    assert {"pref-twin-omit-prob=0.25", "pref-twin-add-prob=0.25", "n-mmhal=480"} <= set(RECIPES["full"].world)
    assert RECIPES["full"].ppo_steps == 10
    # the reading recipe: the twins world with 90 % partner noise, one id per object and the fact-check conversations
    # its reading stage trains on, which both reward models start from; 15 % checklist in SFT (full: 5 %, decisions 62)
    reading = parse_config(["--recipe", "reading-checklist"])
    assert set(reading.world) - set(RECIPES["full"].world) == {
        "noise-rate=0.9", READING_MIX, "located-lists=True", "tokenizer-split-punctuation=True",
        "pref-binding-prob=0.6", "tokenizer-object-tokens=True", "n-factcheck=8000", "factcheck-omissions=True"}
    assert set(RECIPES["full"].world) - set(reading.world) == {"noise-rate=0.7", HABIT_MIX}
    assert world_flags((READING_MIX,))[-2:] == ["checklist", "0.15"] and HABIT_MIX.endswith("checklist 0.05")
    assert reading.rm_read_steps > 0 and not reading.rm_base and reading.ppo_prompt_group == 4
    c = stage_configs(dataclasses.replace(reading, out="o"), 1)
    assert c["rm_read"].steps == reading.rm_read_steps and c["rm_read"].init == c["sft_more2"].out + "/hf"
    assert all(c[s].init == c["rm_read"].out + "/hf" and c[s].facts_first == (s == "rm_facts")
               for s in ("rm_facts", "rm_nofacts"))
    assert c["sft"].steps == reading.sft_steps and c["ppo_facts"].prompt_group == c["ppo_nofacts"].prompt_group == 4
    # SFT in three phases, then 5 PPO steps run three times per reward model (run rdo5's settings, decisions 61)
    assert [c[s].steps for s in ("sft", "sft_more1", "sft_more2")] == [2000, 1500, 1500]
    # the grounding stage trains on while its held-out loss ends above 0.01 (decisions 71); the demo never does
    assert (reading.ground_bar, c["ground_more2"].steps, c["ground_more2"].optim.lr) == (0.01, 2500, 5e-4)
    assert (demo.ground_bar, demo.ground_more) == (0.0, ())
    assert reading.ppo_repeats == 3 and {"ppo_facts_r2", "ppo_nofacts_r2"} <= set(c) and c["ppo_facts"].steps == 5
    flags = world_flags(RECIPES["full"].world)
    assert flags[flags.index("--noise-kind") + 1] == "partner" and len(flags[flags.index("--cooccur-pairs") + 1:
                                                                               flags.index("--yesno-negatives")]) == 6


def test_recipe_buckets_rm_schedule_dropout_and_length_score_reach_the_stages(tmp_path):
    from jaxlava.data.buckets import DEFAULT_BUCKETS
    from jaxlava.reproduce.recipe import RECIPES, parse_config
    from jaxlava.reproduce.stages import stage_configs
    FULL = ("--recipe", "full")  # the stage plumbing on the full recipe, whose values are the presets' or given
    cfg = parse_config([*FULL, "--out", str(tmp_path), "--buckets", "64", "192", "512", "--rm-schedule", "cosine",
                        "--rm-epochs", "4", "--ppo-length-score", "-2", "--rm-image-dropout", "0.25"])
    c = stage_configs(cfg, 0)
    assert all(c[s].buckets == (64, 192, 512) for s in ("sft", "rlinit", "rm_facts", "rm_nofacts"))
    assert all(c[s].optim.schedule == "cosine" and c[s].epochs == 4 and c[s].image_dropout == 0.25
               for s in ("rm_facts", "rm_nofacts"))
    assert c["ppo_facts"].length_score == c["ppo_nofacts"].length_score == -2.0
    d = stage_configs(parse_config(["--out", str(tmp_path), "--recipe", "plain"]), 0)  # the stage presets' values
    assert d["rm_facts"].optim.schedule == "constant_with_warmup" and d["rm_facts"].epochs == 1.0
    assert d["rm_facts"].image_dropout == d["rm_nofacts"].image_dropout == 0.0
    assert d["sft"].buckets == DEFAULT_BUCKETS and d["ppo_facts"].length_score == -10.0
    assert not d["rm_facts"].facts_first  # the paper's layout unless asked
    assert not any(d[s].terminal_at_eos or d[s].mask_pads for s in ("ppo_facts", "ppo_nofacts"))  # quirk 2 kept
    assert not any(d[s].clip_per_role for s in ("ppo_facts", "ppo_nofacts"))  # one norm, as the paper
    q = stage_configs(parse_config([*FULL, "--out", str(tmp_path), "--ppo-terminal-at-eos", "--ppo-mask-pads",
                                    "--ppo-clip-per-role"]), 0)
    assert all(q[s].terminal_at_eos and q[s].mask_pads and q[s].clip_per_role for s in ("ppo_facts", "ppo_nofacts"))
    g = stage_configs(parse_config([*FULL, "--out", str(tmp_path), "--ppo-prompt-group", "4", "--ppo-prompt-types",
                                    "general"]), 0)
    assert g["ppo_facts"].prompt_group == g["ppo_nofacts"].prompt_group == 4 and d["ppo_facts"].prompt_group == 0
    assert g["ppo_facts"].prompt_types == g["ppo_nofacts"].prompt_types == ("general",)
    assert d["ppo_facts"].prompt_types == ()  # the paper's mix unless asked
    o = stage_configs(parse_config([*FULL, "--out", str(tmp_path), "--rm-image-dropout", "0.5",
                                    "--rm-nofacts-image-dropout", "0"]), 0)
    assert o["rm_facts"].image_dropout == 0.5 and o["rm_nofacts"].image_dropout == 0.0
    v = stage_configs(parse_config([*FULL, "--out", str(tmp_path), "--rm-image-pool", "8"]), 0)
    assert v["rm_facts"].image_pool == v["rm_nofacts"].image_pool == 8 and d["rm_facts"].image_pool == 0
    pr = stage_configs(parse_config([*FULL, "--out", str(tmp_path), "--rm-onpolicy-prompts", "4",
                                     "--rm-onpolicy-repeats"]), 0)
    assert pr["rm_pairs"].repeats and not stage_configs(parse_config([
        *FULL, "--out", str(tmp_path), "--rm-onpolicy-prompts", "4"]), 0)["rm_pairs"].repeats
    f = stage_configs(parse_config([*FULL, "--out", str(tmp_path), "--rm-facts-first"]), 0)
    assert f["rm_facts"].facts_first and not f["rm_nofacts"].facts_first
    r = stage_configs(parse_config([*FULL, "--out", str(tmp_path), "--ppo-seed-offset", "100"]), 2)  # PPO repeats
    assert r["ppo_facts"].seed == r["ppo_nofacts"].seed == 102 and d["ppo_facts"].seed == 0
    assert all(r[s].seed == 2 for s in ("sft", "rlinit", "rm_facts", "rm_nofacts"))


# ----------------------------------------------------------------------------------------------- PPO held-out judge
def test_describe_prompts_are_judged_against_the_records_objects():
    """`caption_objects` reads every PPO prompt's objects back from its facts, and PPO's held-out evaluation judges
    exactly the describe prompts (the other kinds are not descriptions)."""
    from jaxlava.eval.shapes import description_scores
    from jaxlava.shapes.text import DESCRIBE_QUESTIONS, caption_objects
    from jaxlava.shapes.world import build_world, preset
    from jaxlava.training.run_ppo import describe_judgements
    world = build_world(preset("small", n_sft=40, n_pref=4, n_ppo=24, pope_images=1, n_mmhal=1))
    recs = [r for split in world.records["ppo_prompt"].values() for r in split]
    for r in recs:
        assert caption_objects(r["facts"]) == [o.category for o in world.scenes[r["id"]].objects]
    assert caption_objects(["A picture with a red circle."]) is None

    class Tok:
        def batch_decode(self, rows, skip_special_tokens):
            return [texts[int(i)] for i in np.asarray(rows)[:, 0]]
    texts = []
    for r in recs:  # each answer names the image's first object and one it lacks
        present = caption_objects(r["facts"])
        absent = next(f"{c} {s}" for c in ("red", "blue", "green") for s in ("circle", "star")
                      if f"{c} {s}" not in present)
        texts.append(f"There is a {present[0]} and a {absent}.")
    host = {"conversations": [r["conversations"] for r in recs], "facts": [r["facts"] for r in recs]}
    judged = describe_judgements(Tok(), np.arange(len(recs))[:, None], host, None)
    describe = [r for r in recs if r["conversations"][0]["value"].split("\n", 1)[1] in DESCRIBE_QUESTIONS]
    assert 0 < len(judged) == len(describe) < len(recs)
    scores = description_scores(judged)
    assert scores["chair_i"] == pytest.approx(0.5) and scores["chair_s"] == 1.0
    objects = [caption_objects(r["facts"]) for r in describe]
    assert scores["recall"] == pytest.approx(sum(o.count(o[0]) for o in objects) / sum(map(len, objects)))


def test_rm_numbers_add_blank_image_accuracy_only_where_logged(tmp_path):
    from jaxlava.reproduce.report import RM, rm_numbers
    def write(folder, rows):
        d = tmp_path / "seed0" / folder
        d.mkdir(parents=True)
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    write(RM["facts"], [{"step": 1, "eval_accuracy": 0.5, "eval_accuracy_other_facts": 0.4},
                        {"step": 2, "eval_accuracy": 0.8, "eval_accuracy_other_facts": 0.6}])
    write(RM["nofacts"], [{"step": 2, "eval_accuracy": 0.7}])
    assert rm_numbers(str(tmp_path), 0) == {"facts": 0.8, "other_facts": 0.6, "no_facts": 0.7}
    (tmp_path / "seed0" / RM["facts"] / "metrics.jsonl").write_text(
        json.dumps({"step": 2, "eval_accuracy": 0.8, "eval_accuracy_other_facts": 0.6,
                    "eval_accuracy_blank_image": 0.75}) + "\n")
    (tmp_path / "seed0" / RM["nofacts"] / "metrics.jsonl").write_text(
        json.dumps({"step": 2, "eval_accuracy": 0.7, "eval_accuracy_blank_image": 0.5}) + "\n")
    got = rm_numbers(str(tmp_path), 0)
    assert got["facts_blank_image"] == 0.75 and got["no_facts_blank_image"] == 0.5
    # the audit stage's dominant-pair accuracies, each model found by its folder, whatever the order
    from jaxlava.reproduce.report import AUDIT, MARKER
    (tmp_path / "seed0" / AUDIT).mkdir()
    pairs = lambda a: {"hallucination": {"accuracy": 0.1}, "dominant": {"accuracy": a}}  # noqa: E731
    models = {f"x/seed0/{RM['nofacts']}/adapter": {"facts": False, "own": pairs(0.65), "within_prompt_share": 0.4},
              f"x/seed0/{RM['facts']}/adapter": {"facts": True, "own": pairs(0.6), "other": pairs(0.55)}}
    (tmp_path / "seed0" / AUDIT / MARKER).write_text(json.dumps({"result": {"reward_models": models}}))
    got = rm_numbers(str(tmp_path), 0)
    assert (got["audit_facts"], got["audit_other_facts"], got["audit_no_facts"]) == (0.6, 0.55, 0.65)
    assert got["audit_no_facts_within"] == 0.4 and "audit_facts_within" not in got  # an older audit: no share
    # the further members of --rm-ensemble: their own rows, labelled by member
    from jaxlava.reproduce.report import member_rows
    assert member_rows(got) == ()
    write(RM["facts"] + "_e1", [{"step": 2, "eval_accuracy": 0.9, "eval_accuracy_other_facts": 0.52}])
    assert "facts_e1" not in rm_numbers(str(tmp_path), 0), "a member of one kind only is not an ensemble yet"
    write(RM["nofacts"] + "_e1", [{"step": 2, "eval_accuracy": 0.66}])
    got = rm_numbers(str(tmp_path), 0)
    assert (got["facts_e1"], got["other_facts_e1"], got["no_facts_e1"], got["facts"]) == (0.9, 0.52, 0.66, 0.8)
    assert [r[0] for r in member_rows(got)] == ["facts_e1", "other_facts_e1", "no_facts_e1"]
    assert member_rows(got)[2][1] == "RM without facts: ensemble member 2"


def test_grounding_stage_comes_first_and_sft_starts_from_it():
    """With ground_steps the seed runs the grounding stage (SFT on the world's `ground` split) and SFT starts from
    its model; without, there is no such stage and SFT starts from scratch."""
    from jaxlava.reproduce.recipe import RECIPES, parse_config
    from jaxlava.reproduce.stages import stage_configs
    from jaxlava.shapes.world import GROUND_SPLITS
    from jaxlava.training.run_sft import held_out_split
    with_ground = stage_configs(parse_config(["--recipe", "full", "--out", "o"]), 1)
    g, sft = with_ground["ground"], with_ground["sft"]
    assert (g.split, g.steps, g.init) == ("ground", RECIPES["full"].ground_steps, None)
    assert sft.split == "train" and sft.init == f"{g.out}/hf" and g.out.endswith("seed1/ground")
    without = stage_configs(parse_config(["--recipe", "full", "--out", "o", "--ground-steps", "0"]), 1)
    assert "ground" not in without and without["sft"].init is None
    assert list(with_ground)[:2] == ["ground", "sft"] and set(with_ground) <= set(STAGES)
    assert (held_out_split("train"), held_out_split("ground")) == ("test", "ground_test")
    assert (g.split, held_out_split(g.split)) == GROUND_SPLITS  # the splits the world writes


def test_reading_stage_needs_fact_check_conversations(tmp_path):
    """Asked for a reading stage on a world without fact-check conversations, the command stops after the world,
    before any stage, and says which world flag is missing."""
    r, _ = _reproduce(tmp_path / "out", "--world", "size=small", "n-ground=16")
    assert r.returncode != 0 and "add n-factcheck=N to --world" in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "out" / "seed0").exists()
