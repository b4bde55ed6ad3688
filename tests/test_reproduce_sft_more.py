"""`train/reproduce.py --sft-more STEPS:LR ...`: SFT phases after the first, each trained on from the last one's
model, and every later stage made from (and recording) the last phase."""
import pytest

from jaxlava.reproduce.recipe import parse_config
from jaxlava.reproduce.stages import (StageMismatch, changed_settings, run, run_stage, stage_configs,
                                      stage_names, stage_settings)


def test_phases_chain_and_every_later_stage_starts_from_the_last():
    cfg = parse_config(["--recipe", "reading", "--out", "o", "--sft-more", "1500:1e-3", "700:5e-4",
                        "--ppo-repeats", "1"])
    c = stage_configs(cfg, 1)
    names = stage_names(1, 2, 1, 2)  # the reading recipe also has two further grounding phases (decisions 71)
    assert names[names.index("sft"):names.index("rlinit") + 1] == [
        "sft", "sft_more1", "sft_more2", "judge_sft", "rlinit"]
    assert [n for n in names if n in c] == list(c)  # the order the seed runs them in
    p1, p2 = c["sft_more1"], c["sft_more2"]
    assert (p1.steps, p1.optim.lr, p1.seed, p1.init) == (1500, 1e-3, 2, "o/seed1/sft/hf")
    assert (p2.steps, p2.optim.lr, p2.seed, p2.init) == (700, 5e-4, 3, "o/seed1/sft_more1/hf")
    assert p1.optim.schedule == p2.optim.schedule == c["sft"].optim.schedule == "cosine"
    last = "o/seed1/sft_more2/hf"
    assert c["rlinit"].init == c["rm_read"].init == c["rm_pairs"].init == c["judge_sft"].model == last
    assert c["ppo_facts"].init == c["ppo_nofacts"].init == last
    plain = stage_configs(parse_config(["--recipe", "full", "--out", "o"]), 1)
    assert not any(n.startswith("sft_more") for n in plain) and plain["rlinit"].init == "o/seed1/sft/hf"


def test_stages_after_sft_record_the_phases_so_an_older_cache_is_refused(tmp_path):
    with_more = parse_config(["--recipe", "tiny", "--out", "o", "--sft-more", "2:1e-3"])
    without = parse_config(["--recipe", "tiny", "--out", "o"])
    c, c0 = stage_configs(with_more, 0), stage_configs(without, 0)
    for name in ("ground", "sft"):  # made before the phases: the same stage either way
        assert not changed_settings(stage_settings(without, name, c0[name]), stage_settings(with_more, name, c[name]))
    for name in ("rlinit", "rm_facts", "ppo_facts", "judge_sft"):
        assert changed_settings(stage_settings(without, name, c0[name]),
                                stage_settings(with_more, name, c[name])) == ["sft_more"], name
    folder = tmp_path / "rlinit"
    run_stage("rlinit", str(folder), stage_settings(without, "rlinit", c0["rlinit"]), dict, "made")
    with pytest.raises(StageMismatch, match="sft_more differ"):
        run_stage("rlinit", str(folder), stage_settings(with_more, "rlinit", c["rlinit"]), dict, "made")


def test_a_malformed_phase_stops_the_command_before_it_writes(tmp_path):
    for bad in ("1500", "0:1e-3", "10:-1", "a:b"):
        with pytest.raises(SystemExit, match=f"--sft-more expects STEPS:LR items .* got '{bad}'"):
            run(parse_config(["--out", str(tmp_path / "out"), "--sft-more", bad]))
    assert not (tmp_path / "out").exists()
