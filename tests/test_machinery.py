"""Training machinery: schedules, the NaN/inf guard, checkpoint fallback, exact resume of the loop."""
import math
import os
import subprocess
import sys
import textwrap
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlava.training.checkpoint import Checkpointer
from jaxlava.training.metrics import MetricsLogger, read_metrics
from jaxlava.training.optim import OptimConfig, gradient_clip, make_optimizer, make_schedule
from jaxlava.training.step import init_state, make_train_step
from jaxlava.training.loop import NonFiniteError, RunDirBusy, fingerprint, fit


def test_schedules_match_hand_computed_values():
    cos = make_schedule(OptimConfig(lr=1.0, schedule="cosine", warmup_steps=10), 110)
    assert float(cos(0)) == 0.0 and abs(float(cos(5)) - 0.5) < 1e-7
    assert abs(float(cos(10)) - 1.0) < 1e-7
    assert abs(float(cos(60)) - 0.5 * (1 + math.cos(math.pi * 0.5))) < 1e-6
    assert abs(float(cos(110))) < 1e-7
    const = make_schedule(OptimConfig(lr=2.0, schedule="constant_with_warmup", warmup_ratio=0.1), 100)
    assert abs(float(const(5)) - 1.0) < 1e-7 and float(const(50)) == 2.0


def test_gradient_clip_one_norm_or_one_per_group():
    g = {"a": jnp.asarray([3.0, 4.0]), "b": {"w": jnp.asarray([0.3])}, "c": jnp.asarray([0.4])}  # norms 5 and 0.5
    joint = gradient_clip(1.0)
    out, _ = joint.update(g, joint.init(g))
    total = math.sqrt(25 + 0.25)
    np.testing.assert_allclose(out["a"], np.asarray([3.0, 4.0]) / total, rtol=1e-6)
    np.testing.assert_allclose(out["c"], np.asarray([0.4]) / total, rtol=1e-6)  # the small group shrinks too
    grouped = gradient_clip(1.0, {"a": "big", "b": "small", "c": "small"})
    out, _ = grouped.update(g, grouped.init(g))
    np.testing.assert_allclose(out["a"], [0.6, 0.8], rtol=1e-6)
    np.testing.assert_allclose(out["b"]["w"], [0.3], rtol=1e-6)  # under the limit: untouched
    np.testing.assert_allclose(out["c"], [0.4], rtol=1e-6)


def _toy_loss(params, frozen, batch, rng):
    def f(p):
        pred = batch["x"] @ p["w"]
        return jnp.mean((pred - batch["y"]) ** 2) * batch["scale"][0]
    loss, g = jax.value_and_grad(f)(params)
    return loss, {"aux": loss * 0}, g


class ToyData:
    """A checkpointable iterator (get_state/set_state) of small regression batches; scale NaN at chosen steps."""

    def __init__(self, nan_at=()):
        self.i, self.nan_at = 0, set(nan_at)

    def __next__(self):
        rng = np.random.default_rng(self.i)
        x = rng.standard_normal((4, 3)).astype(np.float32)
        scale = np.full((4,), np.nan if self.i in self.nan_at else 1.0, np.float32)
        self.i += 1
        return {"x": x, "y": x.sum(1, keepdims=True), "scale": scale, "attention_mask": np.ones((4, 1), np.int32)}

    def get_state(self):
        return {"i": self.i}

    def set_state(self, s):
        self.i = s["i"]


def _setup(total=10):
    tx = make_optimizer(OptimConfig(lr=0.05, warmup_steps=0), total)
    state = init_state({"w": jnp.zeros((3, 1))}, tx)
    return jax.jit(make_train_step(_toy_loss, tx)), state


def test_nan_step_is_skipped_and_counted(tmp_path):
    step, state = _setup()
    data = ToyData(nan_at={2})
    before = None
    for i in range(4):
        if i == 2:
            before = jax.tree.map(np.asarray, state["params"])
        state, m = step(state, None, next(data))
        if i == 2:
            assert not bool(m["finite"])
            np.testing.assert_array_equal(np.asarray(state["params"]["w"]), before["w"])
    assert int(state["skipped"]) == 1


def test_consecutive_nan_steps_stop_the_run(tmp_path):
    step, state = _setup()
    with pytest.raises(NonFiniteError, match="3 consecutive steps"):
        fit(run_dir=str(tmp_path), step_fn=step, state=state, frozen=None, data=ToyData(nan_at={1, 2, 3}),
            total_steps=10, checkpoint_every=100, config={}, max_bad_steps=3, progress=False)


def test_truncated_latest_checkpoint_falls_back(tmp_path):
    step, state = _setup()
    fit(run_dir=str(tmp_path), step_fn=step, state=state, frozen=None, data=ToyData(), total_steps=6,
        checkpoint_every=3, config={}, progress=False)
    ck = Checkpointer(str(tmp_path))
    assert ck.steps() == [3, 6]
    latest = os.path.join(ck.dir, "6")
    for root, _, files in os.walk(latest):  # truncate every data file of the newest step
        for f in files:
            if not f.startswith("_CHECKPOINT"):
                with open(os.path.join(root, f), "r+b") as fh:
                    fh.truncate(max(os.path.getsize(os.path.join(root, f)) // 3, 1))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        got = ck.restore_latest(state)
    ck.close()
    assert got is not None and got[0] == 3, "fell back to the previous checkpoint"
    assert any("step 6" in str(x.message) and "falling back" in str(x.message) for x in w)


def test_loop_resume_is_exact(tmp_path):
    step, state = _setup()
    _, ref = fit(run_dir=str(tmp_path / "a"), step_fn=step, state=state, frozen=None, data=ToyData(),
                 total_steps=8, checkpoint_every=4, config={}, progress=False)
    step, state = _setup()
    fit(run_dir=str(tmp_path / "b"), step_fn=step, state=state, frozen=None, data=ToyData(), total_steps=8,
        checkpoint_every=4, config={}, progress=False, stop_after=5)  # "preempted" after step 5
    step, state = _setup()
    _, again = fit(run_dir=str(tmp_path / "b"), step_fn=step, state=state, frozen=None, data=ToyData(),
                   total_steps=8, checkpoint_every=4, config={}, progress=False)
    assert again["step"] == 8 and abs(again["loss"] - ref["loss"]) <= 1e-7
    assert again["data_crc"] == ref["data_crc"] != 0
    # step 5 of the preempted attempt was dropped on resume and written again: one row per step, equal to the
    # uninterrupted run's
    a, b = read_metrics(str(tmp_path / "a")), read_metrics(str(tmp_path / "b"))
    assert [r["step"] for r in b] == [r["step"] for r in a] == list(range(1, 9))
    assert [r["loss"] for r in b] == pytest.approx([r["loss"] for r in a], abs=1e-7)
    # the data fingerprint is a real checksum of each batch: nonzero, different for different batches, equal per step
    crcs = [r["data_crc"] for r in a]
    assert all(c != 0 for c in crcs) and len(set(crcs)) == len(crcs)
    assert [r["data_crc"] for r in b] == crcs


def test_data_fingerprint_tells_batches_apart():
    data = ToyData()
    a, b = next(data), next(data)
    assert fingerprint(a) != 0 and fingerprint(b) != 0 and fingerprint(a) != fingerprint(b)
    assert fingerprint({k: v.copy() for k, v in a.items()}) == fingerprint(a)
    changed = {k: v.copy() for k, v in a.items()}
    changed["x"][3, 2] += 1.0
    assert fingerprint(changed) != fingerprint(a)  # one value of one array
    assert fingerprint({**a, "note": "text"}) == fingerprint(a)  # only numpy arrays count


def test_resume_drops_metric_rows_past_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(f'{{"step": {i}, "loss": {i}.0}}\n' for i in range(1, 7)) + '{"step": 7, "lo')
    MetricsLogger(str(tmp_path), tensorboard=False, resume_step=4).log(5, {"loss": 50.0})
    assert [(r["step"], r["loss"]) for r in read_metrics(str(tmp_path))] == [(1, 1.0), (2, 2.0), (3, 3.0),
                                                                            (4, 4.0), (5, 50.0)]


def test_second_process_on_the_same_run_dir_is_refused(tmp_path):
    """A run holds RUN_DIR/.lock.p<process>; another process that tries the same RUN_DIR gets a clear error, not a
    checkpoint race. The lock dies with its holder."""
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from jaxlava.training.loop import run_dir_lock
        with run_dir_lock({str(tmp_path)!r}):
            print("held", flush=True)
            time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        step, state = _setup()
        with pytest.raises(RunDirBusy, match=f"pid {holder.pid}"):
            fit(run_dir=str(tmp_path), step_fn=step, state=state, frozen=None, data=ToyData(), total_steps=2,
                checkpoint_every=100, config={}, progress=False)
    finally:
        holder.kill()
        holder.wait()
    _, last = fit(run_dir=str(tmp_path), step_fn=step, state=state, frozen=None, data=ToyData(), total_steps=2,
                  checkpoint_every=100, config={}, progress=False)
    assert last["step"] == 2
