"""The training loop shared by every stage: resume, progress bar, NaN guard, metrics, checkpoints."""
from __future__ import annotations

import fcntl
import os
import time
import zlib
from contextlib import contextmanager
from typing import Callable, Iterator

import jax
import numpy as np
from tqdm import tqdm

from jaxlava.checkpoint import Checkpointer, save_config
from jaxlava.metrics import MetricsLogger, plot_metrics


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


def _fingerprint(batch: dict) -> int:
    """A checksum of the batch's token ids: lets tests and users check that resumed runs see the same data."""
    ids = batch.get("input_ids")
    return zlib.crc32(np.ascontiguousarray(ids).tobytes()) if isinstance(ids, np.ndarray) else 0


def fit(*, run_dir: str, step_fn: Callable, state, frozen, data: Iterator, total_steps: int,
        checkpoint_every: int, config: dict, put: Callable = lambda b: b, max_bad_steps: int = 5,
        eval_fn: Callable | None = None, eval_every: int | None = None, keep: int = 3,
        tokens: Callable[[dict], int] = lambda b: int(np.asarray(b["attention_mask"]).sum()),
        stop_after: int | None = None, progress: bool = True):
    """Run `step_fn(state, frozen, batch) -> (state, metrics)` until `total_steps`, resuming from RUN_DIR.

    Returns (state, last metrics row).  `stop_after` ends the run early after that many steps of this
    process (tests use it to simulate preemption without a kill).  Raises `RunDirBusy` when another process
    holds RUN_DIR.
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
                state, m = step_fn(state, frozen, put(batch))
                m = jax.device_get(m)
                dt = time.perf_counter() - t0
                step += 1
                done_here += 1
                if not bool(m["finite"]):
                    bad_in_row += 1
                    tqdm.write(f"step {step}: non-finite loss or gradient, update skipped "
                               f"({bad_in_row} in a row, {int(state['skipped'])} in total)")
                    if bad_in_row >= max_bad_steps:
                        raise NonFiniteError(f"{bad_in_row} consecutive steps had a non-finite loss or gradient "
                                             f"(last at step {step}); stopping. Lower the learning rate, check the "
                                             "data, or resume from the last checkpoint in "
                                             f"{ckpt.dir}")
                else:
                    bad_in_row = 0
                row = {k: v for k, v in m.items() if k != "finite"}
                row.update(tokens_per_s=tokens(batch) / max(dt, 1e-9), skipped=int(state["skipped"]),
                           data_crc=_fingerprint(batch))
                if eval_fn is not None and eval_every and (step % eval_every == 0 or step == total_steps):
                    row.update(eval_fn(state))
                logger.log(step, row, echo=False)
                last = {"step": step, **{k: float(v) if np.ndim(v) == 0 else v for k, v in row.items()}}
                bar.update(1)
                bar.set_postfix(loss=f"{float(m['loss']):.4f}")
                if step % checkpoint_every == 0 or step == total_steps:
                    ckpt.save(step, state, {"iterator": data.get_state()}, {"step": step})
                if stop_after is not None and done_here >= stop_after:
                    break
        finally:
            bar.close()
            ckpt.close()
            logger.close()
        plot_metrics(run_dir)
        return state, last
