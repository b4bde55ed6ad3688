"""`train/reproduce.py --carry-to DEST` and `--restore-from DEST`: a run cut short on one machine goes on on
another.  The stages here are fake trainers that write what the real ones do (models, checkpoints, logs, plots),
on the tiny recipe's real world; what is carried, what is left behind, and that the restored OUT resumes the
stage that was cut short and skips the finished ones."""
import json
import os

import pytest

from jaxlava.reproduce import carry, report, stages
from jaxlava.reproduce.recipe import parse_config

MODEL = {"ground": "hf", "sft": "hf", "rm_read": "hf", "rlinit": "adapter", "rm_facts": "adapter",
         "rm_nofacts": "adapter", "ppo_facts": "adapter", "ppo_nofacts": "adapter"}


class Cut(Exception):
    """The machine goes away."""


def _write(path: str, text: str = "x") -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def _fake_stages(monkeypatch, ran: list, cut_at: str | None = None, resumed: dict | None = None):
    """Stages that write a trainer's files; `cut_at` stops after that stage's second checkpoint; `resumed`
    collects, per stage, the checkpoints it found when it started."""
    def fake(name, c):
        def fn():
            folder = os.path.dirname(c.out) if name == report.AUDIT else c.out
            if resumed is not None:
                ck = os.path.join(folder, "checkpoints")
                resumed[name] = sorted(os.listdir(ck)) if os.path.isdir(ck) else []
            ran.append(name)
            for f in ("config.json", "metrics.jsonl", "metrics.png", "tb/events.out", ".lock.p0"):
                _write(os.path.join(folder, f), name)
            for step in (100, 200):
                _write(os.path.join(folder, "checkpoints", str(step), "state", "params"), f"{name} {step}")
            if name == cut_at:
                raise Cut
            if name in MODEL:
                _write(os.path.join(folder, MODEL[name], "model.safetensors"), name)
            if name.startswith("ppo_"):
                _write(os.path.join(folder, "value", "reward_head.safetensors"), name)
            if name == report.PAIRS:
                _write(os.path.join(folder, "preference", "train", "records"), name)
            return {"eval_loss": 0.001}
        return fn
    monkeypatch.setattr(stages, "_run_fn", fake)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The tiny recipe's world, generated once: the OUT of the first machine, holding only it."""
    out = tmp_path_factory.mktemp("carry") / "first"
    stages.ensure_world(parse_config(["--recipe", "tiny", "--out", str(out)]))
    return out


def _cfg(out, *extra):
    return parse_config(["--recipe", "tiny", "--seeds", "0", "--out", str(out), *extra])


def _files(folder) -> set[str]:
    return {os.path.relpath(os.path.join(r, n), folder) for r, _, ns in os.walk(folder) for n in ns}


def test_a_cut_run_is_carried_restored_and_goes_on(world, tmp_path, monkeypatch):
    import shutil
    first = tmp_path / "first"
    shutil.copytree(world, first)
    ran = []
    _fake_stages(monkeypatch, ran, cut_at="rm_read")
    with pytest.raises(Cut):
        stages.run_seed(_cfg(first), 0)
    assert ran == ["ground", "sft", "judge_sft", "rlinit", "rm_pairs", "rm_read"]

    dest = tmp_path / "carried"
    rec = stages.run(_cfg(first, "--carry-to", str(dest)))
    assert rec["seeds"]["0"] == {"finished": ["ground", "sft", "judge_sft", "rlinit", "rm_pairs"],
                                 "started": ["rm_read"]}
    files = _files(dest)
    s = "seed0/"
    for kept in ("sft/hf/model.safetensors",  # later stages start from it (rm_read, the reward models, PPO ...)
                 "rlinit/adapter/model.safetensors",  # PPO's start, the pairs and the audit sample with it
                 "rm_pairs/preference/train/records", "rm_pairs/metrics.jsonl",  # the reward models' extra pairs
                 "rm_read/checkpoints/200/state/params", "rm_read/config.json",  # the cut stage resumes there
                 "ground/stage.json", "ground/metrics.jsonl", "sft/stage.json", "rlinit/config.json"):
        assert s + kept in files, kept
    for left in ("ground/hf/model.safetensors",  # SFT, the only stage that starts from it, has run
                 "sft/checkpoints/200/state/params", "rm_read/checkpoints/100/state/params",  # not the latest
                 "sft/tb/events.out", "sft/metrics.png", "sft/.lock.p0"):
        assert s + left not in files, left
    assert not any(f.startswith("world/") for f in files), "the first stage has run: no vision tower, no world"
    assert rec["files"] == len(files) - 1 and json.loads((dest / carry.CARRY_FILE).read_text())["world"]
    with pytest.raises(carry.CarryError, match="not empty"):
        stages.run(_cfg(first, "--carry-to", str(dest)))

    second = tmp_path / "second"  # another machine: the world generated again, the carried stages put back
    ran.clear()
    resumed = {}
    _fake_stages(monkeypatch, ran, cut_at="ppo_facts", resumed=resumed)
    with pytest.raises(Cut):
        stages.run(_cfg(second, "--restore-from", str(dest)))
    assert ran == ["rm_read", "rm_facts", "rm_nofacts", "rm_audit", "ppo_facts"]
    assert resumed["rm_read"] == ["200"] and resumed["rm_facts"] == []
    assert (second / s / "sft" / "hf" / "model.safetensors").read_text() == "sft"

    # carried again from the second machine once every stage before the judges has run: the judges read the PPO
    # runs whole (adapter, value head, config), nothing reads the SFT model's checkpoints any more
    ran.clear()
    _fake_stages(monkeypatch, ran, cut_at="judge_rlhf_nofacts")
    with pytest.raises(Cut):
        stages.run_seed(_cfg(second), 0)
    stages.run(_cfg(second, "--carry-to", str(tmp_path / "carried2")))
    files = _files(tmp_path / "carried2")
    for kept in ("ppo_nofacts/value/reward_head.safetensors", "ppo_facts/adapter/model.safetensors",
                 "ppo_facts/config.json", "sft/hf/model.safetensors"):  # the judged PPO runs' base
        assert s + kept in files, kept
    for left in ("rm_facts/adapter/model.safetensors", "rm_read/hf/model.safetensors",  # PPO has run
                 "ppo_facts/checkpoints/200/state/params", "ppo_facts/tb/events.out"):
        assert s + left not in files, left


def test_a_finished_run_carries_no_model(world, tmp_path, monkeypatch):
    import shutil
    out = tmp_path / "out"
    shutil.copytree(world, out)
    _fake_stages(monkeypatch, [])
    stages.run_seed(_cfg(out), 0)
    rec = stages.run(_cfg(out, "--carry-to", str(tmp_path / "dest")))
    files = _files(tmp_path / "dest")
    assert rec["seeds"]["0"]["started"] == [] and len(rec["seeds"]["0"]["finished"]) == len(stages.names_of(_cfg(out)))
    assert not any(f.endswith(".safetensors") or "/checkpoints/" in f for f in files), files
    assert "seed0/judge_fact_rlhf/stage.json" in files and "seed0/ppo_nofacts/metrics.jsonl" in files


def test_restore_refuses_another_world_and_a_file_that_differs(world, tmp_path, monkeypatch):
    import shutil
    out = tmp_path / "out"
    shutil.copytree(world, out)
    _write(str(out / "world" / "vision_tower" / "tower.safetensors"))  # what the first grounding run makes
    _fake_stages(monkeypatch, [], cut_at="ground")
    with pytest.raises(Cut):
        stages.run_seed(_cfg(out), 0)
    dest = tmp_path / "dest"
    stages.run(_cfg(out, "--carry-to", str(dest)))
    files = _files(dest)
    assert {"world/vision_tower/tower.safetensors", "seed0/ground/checkpoints/200/state/params"} <= files, files
    assert not any(f.startswith("world/") and "vision_tower" not in f for f in files)
    rec = json.loads((dest / carry.CARRY_FILE).read_text())
    assert set(rec["world"]) >= {"config", "tokenizer/tokenizer.json", "conversation/train", "probe/test"}

    other = tmp_path / "other"
    with pytest.raises(SystemExit, match="not the one the stages were made on .*conversation/train"):
        stages.main(["--recipe", "tiny", "--seeds", "0", "--out", str(other), "--world", "size=small", "n-sft=40",
                     "--restore-from", str(dest)])
    with pytest.raises(carry.CarryError, match="no carry.json"):
        carry.restore_from(str(out), str(tmp_path))
    carry.restore_from(str(out), str(dest))  # into the OUT it came from: every file is already there
    (out / "seed0" / "ground" / "config.json").write_text("{}")
    with pytest.raises(carry.CarryError, match="seed0/ground/config.json differs from the carried"):
        carry.restore_from(str(out), str(dest))


def test_the_world_digest_ignores_settings_at_their_off_value(world, tmp_path):
    """A generator field added after a carry (recorded at its off value: the records are as they were) leaves the
    config's digest as it was; a changed setting does not."""
    import shutil
    copy = tmp_path / "world"
    shutil.copytree(world / "world", copy)
    info = json.loads((copy / "world.json").read_text())
    before = carry.world_digest(str(copy))
    for value, same in ((0.0, True), (False, True), (None, True), (0.5, False)):
        info["config"]["a_field_added_later"] = value
        (copy / "world.json").write_text(json.dumps(info))
        assert (carry.world_digest(str(copy)) == before) is same, value
    info["config"].pop("a_field_added_later")
    info["config"]["max_turns"] += 1
    (copy / "world.json").write_text(json.dumps(info))
    assert carry.world_digest(str(copy))["config"] != before["config"]
