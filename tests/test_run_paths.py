"""A path the user gave that does not exist is an error naming it; only the default paths (or --build-missing)
build what is missing."""
import json
import os
import subprocess
import sys

import pytest

from cli_fixtures import ROOT, cli_env
from jaxlava.shapes import assets
from jaxlava.training import run_rm, run_sft, runs


@pytest.fixture
def fake_world(monkeypatch):
    """Stand-in for the world generator: records where a world was built (generation is tested elsewhere)."""
    built = []

    def write_world(out_dir, cfg=None, progress=True):
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "world.json"), "w") as f:
            json.dump({}, f)
        built.append(out_dir)
    monkeypatch.setattr("jaxlava.shapes.world.write_world", write_world)
    return built


def test_mistyped_data_is_an_error_and_creates_nothing(tmp_path, fake_world):
    nope = str(tmp_path / "nope")
    with pytest.raises(assets.WorldMissing, match="--data .*nope"):
        runs.world_for(run_sft.SFTConfig(data=nope))
    assert not os.path.exists(nope) and fake_world == []


def test_default_data_path_is_built_on_first_use(tmp_path, fake_world, monkeypatch):
    monkeypatch.chdir(tmp_path)
    world = runs.world_for(run_sft.SFTConfig())
    assert fake_world == [runs.DEFAULT_DATA] and world.data_dir == runs.DEFAULT_DATA
    assert os.path.exists(tmp_path / runs.DEFAULT_DATA / "world.json")


def test_build_missing_builds_at_a_given_path(tmp_path, fake_world):
    path = str(tmp_path / "mine")
    runs.world_for(run_sft.SFTConfig(data=path, build_missing=True))
    assert fake_world == [path]


def test_converted_data_folder_must_exist(tmp_path):
    with pytest.raises(FileNotFoundError, match="--data .*absent"):
        runs.world_for(run_sft.SFTConfig(preset="tiny", data=str(tmp_path / "absent")))


def test_mistyped_rm_init_is_an_error_and_trains_nothing(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(run_sft, "run", lambda cfg: calls.append(cfg))
    with pytest.raises(FileNotFoundError, match="--init .*nope2"):
        run_sft.ensure_sft(run_rm.RMConfig(init=str(tmp_path / "nope2")))
    with pytest.raises(FileNotFoundError, match="--init .*nope3/hf"):
        run_sft.ensure_sft(run_rm.RMConfig(init=str(tmp_path / "nope3" / "hf")))
    assert calls == []


def test_default_rm_init_trains_sft_first(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(run_sft, "run", lambda cfg: calls.append(cfg))
    monkeypatch.chdir(tmp_path)
    run_sft.ensure_sft(run_rm.RMConfig())
    assert [c.out for c in calls] == ["runs/sft"]
    assert calls[0].steps == run_sft.RUN_PRESETS["shapes"].steps, "the upstream stage runs with its own preset"


@pytest.mark.parametrize("script,args,named", [
    ("train/sft.py", ["--data", "{tmp}/nope"], "--data {tmp}/nope"),
    ("train/rm.py", ["--init", "{tmp}/nope2"], "--init {tmp}/nope2"),
])
def test_the_reported_commands_fail_with_the_path_named(tmp_path, script, args, named):
    """The two commands of the layout issue, as a new user typed them."""
    fmt = lambda s: s.format(tmp=tmp_path)  # noqa: E731
    r = subprocess.run([sys.executable, script, *map(fmt, args), "--out", str(tmp_path / "run")], cwd=ROOT,
                       env=cli_env(None), capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert fmt(named) in r.stderr
    assert sorted(os.listdir(tmp_path)) == [], "nothing was generated or trained"
