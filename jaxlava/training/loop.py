"""The training loop shared by every stage (`fit`): resume, progress bar, NaN guard, metrics, checkpoints, hooks."""
from __future__ import annotations

import dataclasses
import fcntl
import os
import time
import zlib
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import jax
import numpy as np
from tqdm import tqdm

from jaxlava.training.checkpoint import Checkpointer, save_config
from jaxlava.training.metrics import MetricsLogger, plot_metrics
from jaxlava.training.step import StepOutput, TrainState

StepFn = Callable[[TrainState, object, dict], tuple[TrainState, StepOutput]]


class NonFiniteError(RuntimeError):
    """Too many consecutive steps with a non-finite loss or gradient."""


class RunDirBusy(RuntimeError):
    """Another process is training into the same RUN_DIR."""


@contextmanager
def run_dir_lock(run_dir: str):
    """Hold an exclusive lock on RUN_DIR/.lock.p<process index> for the life of a run: two jobs resuming the
    same RUN_DIR would interleave their checkpoints and metrics.  The OS drops the lock when a process dies (no
    stale locks after a kill)."""
    os.makedirs(run_dir, exist_ok=True)
    # one lock per JAX process: the hosts of one multi-host job share RUN_DIR, two jobs' process 0 collide
    path = os.path.join(run_dir, f".lock.p{jax.process_index()}")
    fh = open(path, "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "unknown"
        fh.close()
        raise RunDirBusy(f"RUN_DIR {run_dir} is in use by another training process (pid {holder}); wait for it "
                         "to finish or choose another --out") from None
    try:
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        yield
    finally:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


@dataclasses.dataclass
class Hook:
    """`fn(step, state) -> dict | None` after every `every` steps (and after the last step when `at_end`); a dict
    it returns joins that step's metrics row (evaluation), None logs nothing (export, plots)."""
    every: int
    fn: Callable[[int, TrainState], dict | None]
    at_end: bool = True

    def due(self, step: int, total: int) -> bool:
        return (self.every > 0 and step % self.every == 0) or (self.at_end and step == total)


def fingerprint(batch: dict) -> int:
    """A checksum of every numpy array in the batch, in key order: resumed runs must see the same data."""
    crc = 0
    for k in sorted(batch):
        v = batch[k]
        if isinstance(v, np.ndarray):
            crc = zlib.crc32(np.ascontiguousarray(v).tobytes(), zlib.crc32(k.encode(), crc))
    return crc


def count_tokens(batch: dict) -> int:
    """Real tokens of a batch (its attention mask), or its rows when it has none."""
    mask = batch.get("attention_mask")
    if mask is not None:
        return int(np.asarray(mask).sum())
    first = next((v for v in batch.values() if hasattr(v, "shape") and np.ndim(v)), None)
    return int(np.shape(first)[0]) if first is not None else 0


def fit(*, run_dir: str, step_fn: StepFn, state: TrainState, frozen, data: Iterator, total_steps: int,
        checkpoint_every: int, config: dict, put: Callable = lambda b: b, max_bad_steps: int = 5,
        hooks: Sequence[Hook] = (), keep: int = 3, tokens: Callable[[dict], int] = count_tokens,
        stop_after: int | None = None, progress: bool = True, plot_keys: Sequence[str] | None = None):
    """Run `step_fn` until `total_steps` steps, resuming from RUN_DIR.

    The contract (docs/design.md): `step_fn(state, frozen, put(batch)) -> (TrainState, StepOutput)` where
    `batch = next(data)` is a dict of host arrays and `data` has `get_state()` / `set_state()` (a Grain iterator);
    `state` is a `TrainState`.  One call is one step of the run: an SFT/RM optimizer step, or a PPO step (a
    rollout and its epochs of updates).  The loop owns resume (state, data position, RNG), checkpoints, the
    metrics row (`StepOutput.row()` + tokens_per_s, skipped, data_crc + the hooks' dicts), the progress bar and
    the NaN guard (stop after `max_bad_steps` non-finite steps in a row).

    Returns (state, last metrics row).  `stop_after` ends the run early after that many steps of this
    process (tests use it to simulate preemption without a kill).  Raises `RunDirBusy` when another process
    holds RUN_DIR, `NonFiniteError` when the guard trips.  `plot_keys`: the panels of metrics.png.
    """
    with run_dir_lock(run_dir):
        ckpt = Checkpointer(run_dir, keep=keep)
        start = 0
        restored = ckpt.restore_latest(state)
        if restored is not None:
            start, state, data_state, _ = restored
            if data_state.get("iterator") is not None:
                data.set_state(data_state["iterator"])
            print(f"resumed from step {start} ({ckpt.dir})", flush=True)
            if start >= total_steps:
                print(f"{run_dir} already holds step {start} of a {total_steps}-step run: nothing to train (raise "
                      "--steps to continue it, or choose another --out)", flush=True)
        logger = MetricsLogger(run_dir, resume_step=start)  # drops rows an interrupted attempt wrote past `start`
        save_config(run_dir, config)
        bad_in_row, last, done_here = 0, {}, 0
        bar = tqdm(total=total_steps, initial=start, desc=config.get("stage", "train"), disable=not progress,
                   dynamic_ncols=True, leave=True)
        step = start
        try:
            while step < total_steps:
                batch = next(data)
                t0 = time.perf_counter()
                state, out = step_fn(state, frozen, put(batch))
                out = jax.device_get(out)
                dt = time.perf_counter() - t0
                step += 1
                done_here += 1
                bad_in_row = _guard(out, state, step, bad_in_row, max_bad_steps, ckpt.dir)
                row = dict(out.row())
                row.update(tokens_per_s=tokens(batch) / max(dt, 1e-9), skipped=int(state.skipped),
                           data_crc=fingerprint(batch))
                for hook in hooks:
                    if hook.due(step, total_steps):
                        row.update(hook.fn(step, state) or {})
                logger.log(step, row, echo=False)
                last = {"step": step, **{k: float(v) if np.ndim(v) == 0 else v for k, v in row.items()}}
                bar.update(1)
                bar.set_postfix(loss=f"{float(out.loss):.4f}")
                if step % checkpoint_every == 0 or step == total_steps:
                    ckpt.save(step, state, {"iterator": data.get_state()}, {"step": step})
                if stop_after is not None and done_here >= stop_after:
                    break
        finally:
            bar.close()
            ckpt.close()
            logger.close()
        plot_metrics(run_dir, *([plot_keys] if plot_keys else []))
        return state, last


def _guard(out: StepOutput, state: TrainState, step: int, bad_in_row: int, max_bad: int, where: str) -> int:
    """The NaN guard's host side: report a skipped update; raise after `max_bad` in a row."""
    if bool(out.finite):
        return 0
    bad_in_row += 1
    tqdm.write(f"step {step}: non-finite loss or gradient, update skipped "
               f"({bad_in_row} in a row, {int(state.skipped)} in total)")
    if bad_in_row >= max_bad:
        raise NonFiniteError(f"{bad_in_row} consecutive steps had a non-finite loss or gradient (last at step "
                             f"{step}); stopping. Lower the learning rate, check the data, or resume from the last "
                             f"checkpoint in {where}")
    return bad_in_row
