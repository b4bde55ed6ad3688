"""The training loop shared by every stage: resume, progress bar, NaN guard, metrics, checkpoints."""
from __future__ import annotations

import time
import zlib
from typing import Callable, Iterator

import jax
import numpy as np
from tqdm import tqdm

from jaxlava.checkpoint import Checkpointer, save_config
from jaxlava.metrics import MetricsLogger, plot_metrics


class NonFiniteError(RuntimeError):
    """Too many consecutive steps with a non-finite loss or gradient."""


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
    process (tests use it to simulate preemption without a kill).
    """
    ckpt = Checkpointer(run_dir, keep=keep)
    logger = MetricsLogger(run_dir)
    start = 0
    restored = ckpt.restore_latest(state)
    if restored is not None:
        start, state, data_state, _ = restored
        if data_state.get("iterator") is not None:
            data.set_state(data_state["iterator"])
        print(f"resumed from step {start} ({ckpt.dir})", flush=True)
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
