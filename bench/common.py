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
            "load_avg": os.getloadavg(), "glibc_tunables": os.environ.get("GLIBC_TUNABLES", "")}


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


def param_count(tree) -> int:
    """Number of elements in a pytree of arrays (an nnx.State included)."""
    import jax
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def xla_flops(compiled) -> float:
    """FLOPs of one call of an AOT-compiled jax program (XLA's cost analysis; a `lax.scan` body counts once)."""
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # older jax: one dict per device program
        cost = cost[0]
    return float(cost.get("flops", 0.0))


def transformers_twin(model, dtype: str = "float32"):
    """transformers' LlavaForConditionalGeneration holding the same weights as a jaxlava model (exported with
    `jaxlava.save_pretrained`, read back with `from_pretrained`, as a user would)."""
    import tempfile

    import torch
    from transformers import LlavaForConditionalGeneration

    import jaxlava
    with tempfile.TemporaryDirectory() as tmp:
        jaxlava.save_pretrained(model, tmp)
        return LlavaForConditionalGeneration.from_pretrained(tmp, dtype=getattr(torch, dtype))


def decode_roofline(model, batch: int, prompt_len: int, new_tokens: int, bandwidth: float, peak: float) -> dict:
    """bench/decode.py's roofline of one `generate` call: prefill FLOPs at the matmul ceiling, then each decode
    step max(bytes / copy bandwidth, FLOPs / matmul ceiling).  {"prefill_s", "decode_s", "weight_bytes"}."""
    from decode import roofline_seconds  # the one definition, next to the benchmark it was made for
    return roofline_seconds(model, batch, prompt_len, new_tokens, bandwidth, peak)
