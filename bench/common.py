"""Shared benchmark helpers: machine ceilings measured in the same run, timing, JSON output.

The machines are shared and noisy, so every benchmark measures its own ceilings (copy bandwidth,
matmul throughput) in the same process and reports ratios against them.
"""
from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Callable

import numpy as np


def copy_bandwidth(nbytes: int = 512 * 1024 ** 2, repeats: int = 5) -> float:
    """Bytes/s of a large numpy copy, counted as read + write (2 * nbytes per copy); best of `repeats`."""
    src = np.ones(nbytes // 4, np.float32)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t)
    return 2 * src.nbytes / best


def matmul_ceiling(n: int = 2048, dtype: str = "float32", repeats: int = 5) -> float:
    """FLOP/s of a jitted n x n x n matmul through jax (the CPU "peak" used for MFU-style numbers)."""
    import jax
    import jax.numpy as jnp

    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda x, y: x @ y)
    f(a, a).block_until_ready()
    best = min(timed(lambda: f(a, a).block_until_ready())[1] for _ in range(repeats))
    return 2 * n ** 3 / best


def timed(fn: Callable):
    """(result, seconds) of one call."""
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def repeat(fn: Callable, repeats: int) -> dict:
    """Run fn `repeats` times; best and median wall seconds."""
    times = [timed(fn)[1] for _ in range(repeats)]
    return {"best_s": min(times), "median_s": statistics.median(times), "all_s": times}


def machine() -> dict:
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor(),
            "load_avg": os.getloadavg()}


def write_json(path: str | None, obj) -> None:
    if not path:
        return
    from jaxlava.fileio import write_json as write
    write(path, obj, sort_keys=True)


def table(rows: list[dict], cols: list[str]) -> str:
    """A plain-text table of dict rows."""
    fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)  # noqa: E731
    cells = [[fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(cols)]
    line = lambda vals: "  ".join(v.rjust(w) for v, w in zip(vals, widths))  # noqa: E731
    return "\n".join([line(cols)] + [line(r) for r in cells])
