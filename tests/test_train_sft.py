"""SFT trainer on a small shapes world: loss falls, kill-and-resume is exact, mesh runs match one device."""
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from cli_fixtures import ROOT, cli_env as _env
from jaxlava.training.metrics import read_metrics


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from jaxlava.shapes.world import preset, write_world
    d = str(tmp_path_factory.mktemp("world"))
    write_world(d, preset("small"), progress=False)
    return d


@pytest.fixture(scope="module")
def reference(world, tmp_path_factory):
    """The 8-step command on one device, uninterrupted: the kill test's reference and the mesh test's one-device
    run (the same command, so it runs once)."""
    out = str(tmp_path_factory.mktemp("sft") / "one")
    subprocess.run(_cmd(world, out), check=True, env=_env(1), capture_output=True, timeout=600)
    return out


def _cmd(world, out, *extra):
    return [sys.executable, os.path.join(ROOT, "train", "sft.py"), "--data", world, "--out", out, "--steps", "8",
            "--batch-size", "4", "--checkpoint-every", "3", "--eval-every", "100", "--vision-pretrain-steps", "20",
            *extra]


def _rows(out):
    rows = {}
    for r in read_metrics(out):
        assert r["step"] not in rows, f"step {r['step']} logged twice in {out}"  # resume drops stale rows
        rows[r["step"]] = r
    return rows


@pytest.mark.slow
def test_kill_and_resume_is_exact(world, reference, tmp_path):
    """SIGKILL mid-run (after the step-3 checkpoint, before the last step), rerun: same data and losses per step.

    The test fails, rather than passing trivially, when the kill came too late (the run had already finished) or the
    rerun did not resume from a step strictly inside the run."""
    total = 8
    env = _env()  # with the session's compilation cache: these runs load the reference's programs
    out = str(tmp_path / "killed")
    proc = subprocess.Popen(_cmd(world, out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = os.path.join(out, "checkpoints", "3")
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if os.path.isdir(ckpt) and os.path.exists(os.path.join(ckpt, "_CHECKPOINT_METADATA")):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, \
        f"the run was not killed (exit status {proc.returncode}): it ended before the kill, so nothing was tested"
    assert os.path.isdir(ckpt), "the run never wrote its step-3 checkpoint"
    done = subprocess.run(_cmd(world, out), env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    resumed = re.findall(r"resumed from step (\d+)", done.stdout)
    assert len(resumed) == 1, done.stdout[-2000:]
    assert 0 < int(resumed[0]) < total, f"resumed from step {resumed[0]}, not from inside the {total}-step run"
    a, b = _rows(reference), _rows(out)
    assert sorted(a) == sorted(b) == list(range(1, total + 1))
    for s in range(1, total + 1):
        assert a[s]["data_crc"] == b[s]["data_crc"], f"data order differs at step {s}"
        assert abs(a[s]["loss"] - b[s]["loss"]) <= 1e-6, (s, a[s]["loss"], b[s]["loss"])
    assert len({a[s]["data_crc"] for s in a}) == total  # the fingerprint tells the batches apart


@pytest.mark.slow
def test_loss_falls_and_mesh_matches_one_device(world, reference, tmp_path):
    one, eight = reference, str(tmp_path / "eight")
    r = subprocess.run(_cmd(world, eight, "--mesh", "fsdp=4,tensor=2"), env=_env(8), capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = _rows(one), _rows(eight)
    for s in (1, 2, 3):
        assert abs(a[s]["loss"] - b[s]["loss"]) / abs(a[s]["loss"]) <= 1e-5, (s, a[s]["loss"], b[s]["loss"])
    assert a[8]["loss"] < a[1]["loss"]
    assert os.path.exists(os.path.join(one, "hf", "config.json"))
