"""The stages that PPO repeats (--ppo-repeats) and reward-model ensembles (--rm-ensemble) add to a seed of the
reproduction: their order, folders, seeds and what their cached records say."""
import dataclasses
import os

import pytest

from jaxlava.reproduce.stages import STAGES


def test_ppo_repeats_run_each_ppo_and_its_judges_again_with_another_seed(tmp_path):
    """--ppo-repeats 3: repeat r runs both PPO runs with seed S + offset + 100 r into their own folders, and judges
    each policy, after every stage of the first; the stages before PPO and the SFT judge run once."""
    from jaxlava.reproduce.recipe import parse_config
    from jaxlava.reproduce.stages import REPEATED, stage_configs, stage_names
    cfg = parse_config(["--recipe", "full", "--out", str(tmp_path), "--ppo-repeats", "3", "--ppo-seed-offset", "7"])
    c = stage_configs(cfg, 1)
    names = stage_names(3)
    assert names[:len(STAGES)] == list(STAGES) and stage_names(1) == list(STAGES)
    assert names[len(STAGES):] == [f"{n}_r{r}" for r in (1, 2) for n in REPEATED] and set(c) <= set(names)
    for r, suffix in enumerate(("", "_r1", "_r2")):
        for which in ("facts", "nofacts"):
            ppo = c[f"ppo_{which}{suffix}"]
            assert ppo.seed == 1 + 7 + 100 * r and ppo.out == str(tmp_path / "seed1" / f"ppo_{which}{suffix}")
            assert ppo.reward_adapter == str(tmp_path / "seed1" / f"rm_{which}" / "adapter")
        for judge, run in (("rlhf_nofacts", "nofacts"), ("fact_rlhf", "facts")):
            j = c[f"judge_{judge}{suffix}"]
            assert j.model == c[f"ppo_{run}{suffix}"].out and j.out.endswith(f"seed1/judge_{judge}{suffix}")
    assert "judge_sft_r1" not in c and "rm_facts_r1" not in c
    with pytest.raises(SystemExit, match="--ppo-repeats must be at least 1"):
        parse_config(["--ppo-repeats", "0"])


def test_rm_ensemble_trains_more_reward_models_and_ppo_scores_with_their_mean(tmp_path):
    """--rm-ensemble 2: a second reward model of each kind after the first ones (seed S + 1, its own folder, the
    rest of its config the first's), both PPO runs scoring with their kind's two, and only the stages that use their
    scores recording the ensemble (one of 1 leaves every record, so every cached stage, as it was)."""
    from jaxlava.reproduce.recipe import parse_config
    from jaxlava.reproduce.stages import stage_configs, stage_names, stage_settings
    cfg = parse_config(["--recipe", "reading", "--out", str(tmp_path), "--rm-ensemble", "2"])
    c, names = stage_configs(cfg, 4), stage_names(1, 2, 2, 2)
    at = names.index("rm_nofacts") + 1
    assert names[at:at + 2] == ["rm_facts_e1", "rm_nofacts_e1"]
    assert names[at + 2:] == list(STAGES[STAGES.index("rm_nofacts") + 1:])
    assert set(c) == set(stage_names(3, 2, 2, 2)), "every stage has its config, and no other"
    for which in ("facts", "nofacts"):
        first, extra = c[f"rm_{which}"], c[f"rm_{which}_e1"]
        assert (first.seed, extra.seed) == (4, 5) and extra.out == str(tmp_path / "seed4" / f"rm_{which}_e1")
        assert dataclasses.replace(extra, seed=4, out=first.out) == first
        for r in ("", "_r1", "_r2"):
            assert c[f"ppo_{which}{r}"].reward_ensemble == (os.path.join(extra.out, "adapter"),)
    for name in c:
        recorded = stage_settings(cfg, name, c[name]).get("rm_ensemble")
        assert recorded == (2 if name.startswith(("ppo_", "judge_rlhf", "judge_fact")) else None), name
    one = parse_config(["--recipe", "reading", "--out", str(tmp_path)])
    alone = stage_settings(one, "ppo_facts", stage_configs(one, 4)["ppo_facts"])
    assert "rm_ensemble" not in alone and stage_settings(cfg, "ppo_facts", c["ppo_facts"]) == alone | {"rm_ensemble": 2}
    with pytest.raises(SystemExit, match="--rm-ensemble must be at least 1"):
        parse_config(["--rm-ensemble", "0"])


def test_recall_extra_reaches_the_pairs_and_every_stage_that_uses_a_reward_model(tmp_path):
    """--rm-onpolicy-recall-extra 3: the pairs stage writes 3 more copies of each recall pair, and the reward models,
    the audit, the PPO runs and their judges record it, so that a cached stage made with other copies is refused;
    the stages before the reward models record nothing new, and the default (0) changes no record."""
    from jaxlava.reproduce.recipe import parse_config
    from jaxlava.reproduce.stages import _uses_rm, changed_settings, stage_configs, stage_settings
    one = parse_config(["--recipe", "reading", "--out", str(tmp_path)])
    three = parse_config(["--recipe", "reading", "--out", str(tmp_path), "--rm-onpolicy-recall-extra", "3"])
    c1, c3 = stage_configs(one, 3), stage_configs(three, 3)
    assert (c1["rm_pairs"].recall_extra, c3["rm_pairs"].recall_extra) == (0, 3)
    for name in c3:
        s1, s3 = stage_settings(one, name, c1[name]), stage_settings(three, name, c3[name])
        assert "onpolicy_recall_extra" not in s1, name
        want = ["recall_extra"] if name == "rm_pairs" else ["onpolicy_recall_extra"] if _uses_rm(name) else []
        assert changed_settings(s1, s3) == want, name
    assert {n for n in c3 if _uses_rm(n)} >= {"rm_facts", "rm_nofacts", "rm_audit", "ppo_facts", "judge_fact_rlhf"}
    with pytest.raises(SystemExit, match="--rm-onpolicy-recall-extra must be at least 0"):
        parse_config(["--rm-onpolicy-recall-extra", "-1"])


@pytest.mark.parametrize("flags,record", [(["--rm-onpolicy-edits"], "add"),
                                          (["--rm-onpolicy-edits", "--rm-onpolicy-edits-only"], "only")])
def test_edit_twins_reach_the_pairs_and_every_stage_that_uses_a_reward_model(tmp_path, flags, record):
    """--rm-onpolicy-edits (--rm-onpolicy-edits-only): the pairs stage writes edit twins (only them), and every
    stage that trains or uses a reward model records it; the stages before record nothing new, and the default
    changes no record, so stages cached before the flag existed stay valid."""
    from jaxlava.reproduce.recipe import parse_config
    from jaxlava.reproduce.stages import _uses_rm, changed_settings, stage_configs, stage_settings
    off = parse_config(["--recipe", "reading-checklist", "--out", str(tmp_path)])
    on = parse_config(["--recipe", "reading-checklist", "--out", str(tmp_path), *flags])
    c0, c1 = stage_configs(off, 2), stage_configs(on, 2)
    assert (c0["rm_pairs"].edits, c0["rm_pairs"].edits_only) == (False, False)
    assert (c1["rm_pairs"].edits, c1["rm_pairs"].edits_only) == (True, record == "only")
    for name in c1:
        s0, s1 = stage_settings(off, name, c0[name]), stage_settings(on, name, c1[name])
        assert "onpolicy_edits" not in s0 and not (s0.get("edits") or s0.get("edits_only")), name
        want = [k for k in ("edits", "edits_only") if getattr(c1[name], k)] if name == "rm_pairs" else \
            ["onpolicy_edits"] if _uses_rm(name) else []
        assert changed_settings(s0, s1) == want, name
        if "onpolicy_edits" in s1:
            assert s1["onpolicy_edits"] == record
    audit = parse_config(["--recipe", "reading-checklist", "--out", str(tmp_path), "--audit-edit-twins"])
    assert stage_configs(audit, 2)["rm_audit"].edit_twins and not c1["rm_audit"].edit_twins
    assert changed_settings(stage_settings(off, "rm_audit", c0["rm_audit"]),
                            stage_settings(audit, "rm_audit", stage_configs(audit, 2)["rm_audit"])) == ["edit_twins"]
    old = {k: v for k, v in stage_settings(off, "rm_pairs", c0["rm_pairs"]).items() if not k.startswith("edits")}
    assert changed_settings(old, stage_settings(off, "rm_pairs", c0["rm_pairs"])) == []  # made before the flag
    with pytest.raises(SystemExit, match="--rm-onpolicy-edits-only needs --rm-onpolicy-edits"):
        parse_config(["--recipe", "reading-checklist", "--rm-onpolicy-edits-only"])
