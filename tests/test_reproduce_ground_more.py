"""`train/reproduce.py --ground-bar LOSS --ground-more STEPS:LR ...`: further grounding phases that run only while
the last one ended with a held-out loss above the bar, SFT from the last phase that ran, and records that leave a
seed that needed no phase exactly as it was without the flags (so its cached stages stay valid)."""
import dataclasses
import json
import os

import pytest

from jaxlava.reproduce import stages
from jaxlava.reproduce.recipe import parse_config
from jaxlava.reproduce.stages import changed_settings, stage_configs, stage_names, stage_settings

FLAGS = ["--ground-bar", "0.01", "--ground-more", "2500:1e-3", "1000:5e-4"]


def _finish(out, seed: int, stage: str, eval_loss: float | None) -> None:
    folder = os.path.join(out, f"seed{seed}", stage)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "stage.json"), "w") as f:
        json.dump({"seconds": 1.0, "settings": {}, "result": {"eval_loss": eval_loss}}, f)


def test_phases_chain_and_sft_starts_from_the_last_one_the_losses_asked_for(tmp_path):
    out = str(tmp_path)
    cfg = parse_config(["--recipe", "reading", "--out", out, *FLAGS])
    c = stage_configs(cfg, 1)
    names = stages.names_of(cfg)
    assert names == stage_names(3, 2, 1, 2)
    assert names[:4] == ["ground", "ground_more1", "ground_more2", "sft"] and set(names) == set(c)
    g, p1, p2 = c["ground"], c["ground_more1"], c["ground_more2"]
    assert (p1.steps, p1.optim.lr, p1.seed, p1.init) == (2500, 1e-3, 2, os.path.join(out, "seed1/ground/hf"))
    assert (p2.steps, p2.optim.lr, p2.seed, p2.init) == (1000, 5e-4, 3, os.path.join(out, "seed1/ground_more1/hf"))
    assert p1.split == p2.split == g.split == "ground" and p1.optim.schedule == g.optim.schedule == "cosine"
    assert p1.batch_size == g.batch_size and p1.eval_every == g.eval_every
    sft_init = lambda: stage_configs(cfg, 1)["sft"].init  # noqa: E731
    assert sft_init() == g.out + "/hf"  # nothing finished yet
    _finish(out, 1, "ground", 0.0100)  # at the bar: no phase
    assert stages.ground_phases_needed(cfg, 1) == 0 and sft_init() == g.out + "/hf"
    _finish(out, 1, "ground", 0.0748)
    assert stages.ground_phases_needed(cfg, 1) == 1 and sft_init() == p1.out + "/hf"
    _finish(out, 1, "ground_more1", 0.02)
    assert stages.ground_phases_needed(cfg, 1) == 2 and sft_init() == p2.out + "/hf"
    _finish(out, 1, "ground_more2", 0.015)  # still above after the last phase: SFT starts from it all the same
    assert stages.ground_phases_needed(cfg, 1) == 2 and sft_init() == p2.out + "/hf"
    assert stages.ground_phases_needed(cfg, 0) == 0, "each seed reads its own phases"
    _finish(out, 3, "ground", None)
    with pytest.raises(SystemExit, match="records no held-out loss"):
        stages.ground_phases_needed(cfg, 3)


def test_only_a_seed_that_ran_a_phase_records_it(tmp_path):
    out = str(tmp_path)
    cfg = parse_config(["--recipe", "reading", "--out", out, *FLAGS])
    plain = dataclasses.replace(cfg, ground_bar=0.0, ground_more=())  # the reading recipe before decisions 71
    settings = lambda cfg, name: stage_settings(cfg, name, stage_configs(cfg, 0)[name])  # noqa: E731
    _finish(out, 0, "ground", 0.0018)
    for name in ("ground", "sft", "rlinit", "rm_facts", "ppo_facts"):
        assert settings(cfg, name) == settings(plain, name), name
    _finish(out, 0, "ground", 0.0748)
    assert changed_settings(settings(plain, "sft"), settings(cfg, "sft")) == ["ground_more", "ground_bar"]
    assert settings(cfg, "sft")["ground_more"] == ["2500:1e-3"]
    assert settings(cfg, "ground_more2")["ground_more"] == ["2500:1e-3"]  # the phases before it
    other = parse_config(["--recipe", "reading", "--out", out, "--ground-bar", "0.01", "--ground-more", "2000:1e-3"])
    assert changed_settings(settings(cfg, "ground_more1"), settings(other, "ground_more1")) == ["steps"]


def test_the_seed_runs_the_phases_its_losses_ask_for_and_skips_the_rest(tmp_path, monkeypatch, capsys):
    """run_seed with fake trainers: the grounding stage ends above the bar, its first further phase under it."""
    out = str(tmp_path)
    cfg = parse_config(["--recipe", "tiny", "--out", out, *FLAGS])
    losses, ran = {"ground": 0.05, "ground_more1": 0.004}, []

    class Stop(Exception):
        pass

    def fake(name, c):
        def fn():
            ran.append((name, c.init if name in ("ground_more1", "sft") else None))
            if name == "sft":
                raise Stop
            return {"eval_loss": losses[name]}
        return fn
    monkeypatch.setattr(stages, "_run_fn", fake)
    with pytest.raises(Stop):
        stages.run_seed(cfg, 0)
    assert ran == [("ground", None), ("ground_more1", os.path.join(out, "seed0/ground/hf")),
                   ("sft", os.path.join(out, "seed0/ground_more1/hf"))]
    assert "ground_more2: not needed" in capsys.readouterr().out


def test_phases_need_a_bar_and_well_formed_items(tmp_path):
    with pytest.raises(SystemExit, match="--ground-more needs a --ground-bar above 0"):
        parse_config(["--recipe", "full", "--ground-more", "2500:1e-3"])
    with pytest.raises(SystemExit, match="--ground-more needs a --ground-bar above 0"):
        parse_config(["--ground-bar", "0"])  # the default recipe has phases
    c = stage_configs(parse_config(["--ground-steps", "0", "--out", "o"]), 1)  # no grounding stage: no phases
    assert not any(n.startswith("ground") for n in c) and c["sft"].init is None
    with pytest.raises(SystemExit, match="--ground-more expects STEPS:LR items .* got '2500'"):
        stages.run(parse_config(["--out", str(tmp_path / "out"), "--ground-bar", "0.01", "--ground-more", "2500"]))
    assert not (tmp_path / "out").exists()


def test_the_report_puts_each_seed_sft_model_against_the_bar_with_its_grounding_losses(tmp_path):
    from jaxlava.reproduce.report import _sft_bar_section, sft_bar
    out = str(tmp_path)
    _finish(out, 1, "ground", 0.0748)
    _finish(out, 1, "ground_more1", 0.0098)
    _finish(out, 1, "ground_more2", 0.001)  # every finished phase is listed, in order
    good = sft_bar(os.path.join(out, "seed1"), {"pope_random_accuracy": 0.932, "recall": 0.753, "chair_i": 0.17})
    assert good == {"ground_losses": [0.0748, 0.0098, 0.001], "pope_random_accuracy": 0.932, "recall": 0.753,
                    "meets": True}
    low = sft_bar(os.path.join(out, "seed0"), {"pope_random_accuracy": 0.74, "recall": 0.779})
    assert low["ground_losses"] == [] and not low["meets"]
    assert not sft_bar(out, {"pope_random_accuracy": None, "recall": 0.9})["meets"]
    text = "\n".join(_sft_bar_section({"sft_bar": {"1": good, "0": low}}))
    assert "POPE random accuracy ≥ 75 %, recall ≥ 70 %" in text
    assert "| 1 | 0.0748 → 0.0098 → 0.0010 | 93.2 | 75.3 | meets it |" in text
    assert "| 0 | no grounding stage | 74.0 | 77.9 | **misses it** |" in text
    assert _sft_bar_section({}) == []


def test_the_default_grounds_the_single_question():
    """The default since decisions 74: reading-checklist's world with yes/no answers that name the object first
    (PPO's yes/no reward reads them as POPE does) and half of the grounding conversations asking POPE's single
    question, edit twins in the reward models' pairs and the audit, and 10 PPO steps."""
    from jaxlava.reproduce.recipe import RECIPES
    from jaxlava.reproduce.stages import world_flags
    from jaxlava.shapes.cli import parse_args, world_config
    default, before = parse_config([]), parse_config(["--recipe", "reading-checklist"])
    assert set(default.world) - set(before.world) == {"ground-yesno-prob=0.5", "yesno-restate=True"}
    assert RECIPES["demo"].world == default.world
    world = world_config(parse_args(["--out", "w", *world_flags(default.world)]))
    assert (world.ground_yesno_prob, world.yesno_restate) == (0.5, True)
    assert (default.rm_onpolicy_edits, default.audit_edit_twins, default.ppo_steps, default.ppo_yesno_pope) == (
        True, True, 10, True)
    assert (before.rm_onpolicy_edits, before.audit_edit_twins, before.ppo_steps, before.ppo_yesno_pope) == (
        False, False, 5, False)
    c = stage_configs(dataclasses.replace(default, out="o"), 1)
    assert c["ppo_facts"].yesno_pope and not stage_configs(dataclasses.replace(before, out="o"), 1)["ppo_facts"].yesno_pope
