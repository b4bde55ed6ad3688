"""Run metrics: console, RUN_DIR/metrics.jsonl, TensorBoard (tensorboardX) and a PNG plot.

Only process 0 writes.
"""
from __future__ import annotations

import json
import math
import os

import jax

from jaxlava.fileio import atomic_open


class MetricsLogger:
    """`resume_step`: the step a resumed run restarts from. Rows after it, written by the interrupted run
    before it died, are dropped from metrics.jsonl (the resumed run writes them again), and TensorBoard is
    told to purge its events after that step, so both hold one value per step."""

    def __init__(self, run_dir: str, *, tensorboard: bool = True, print_every: int = 10,
                 resume_step: int | None = None):
        self.main = jax.process_index() == 0
        self.print_every = print_every
        self.path = os.path.join(run_dir, "metrics.jsonl")
        self.tb = None
        if self.main:
            os.makedirs(run_dir, exist_ok=True)
            if resume_step is not None:
                _truncate_after(self.path, resume_step)
            if tensorboard:
                from tensorboardX import SummaryWriter
                purge = None if resume_step is None else resume_step + 1
                self.tb = SummaryWriter(os.path.join(run_dir, "tb"), purge_step=purge)

    def log(self, step: int, metrics: dict, *, echo: bool | None = None) -> None:
        if not self.main:
            return
        row = {"step": int(step)}
        row.update({k: _num(v) for k, v in metrics.items()})
        with open(self.path, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                    self.tb.add_scalar(k, v, step)
        if echo or (echo is None and step % self.print_every == 0):
            print(format_row(row), flush=True)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _truncate_after(path: str, step: int) -> None:
    """Keep the rows of `path` up to `step` (atomic rewrite); a torn last line from a kill is dropped too."""
    if not os.path.exists(path):
        return
    kept, dropped = [], 0
    with open(path) as fh:
        for line in fh:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                dropped += 1
                continue
            if int(row.get("step", 0)) <= step:
                kept.append(line if line.endswith("\n") else line + "\n")
            else:
                dropped += 1
    if dropped:
        with atomic_open(path) as fh:
            fh.writelines(kept)


def _num(v):
    try:
        v = v.item() if hasattr(v, "item") else v
    except Exception:
        return str(v)
    if isinstance(v, bool):
        return v
    return float(v) if isinstance(v, float) else v


_COMPILES = [0, False]  # XLA backend compilations seen, listener installed


def compile_count() -> int:
    """Programs compiled, or loaded from JAX's persistent compilation cache, in this process since the first call
    (a `jax.monitoring` listener): a run logs it per step, and tests check that it stays flat once every program
    exists.  JAX records the event it listens to around a load from the persistent cache as well, so the check keeps
    its meaning when a cache is set (JAX_COMPILATION_CACHE_DIR)."""
    if not _COMPILES[1]:
        def listen(event: str, duration: float, **kwargs) -> None:
            if event == "/jax/core/compile/backend_compile_duration":
                _COMPILES[0] += 1
        jax.monitoring.register_event_duration_secs_listener(listen)
        _COMPILES[1] = True
    return _COMPILES[0]


def format_row(row: dict) -> str:
    parts = []
    for k, v in row.items():
        parts.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
    return " ".join(parts)


def read_metrics(run_dir: str) -> list[dict]:
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def plot_metrics(run_dir: str, keys=("loss", "eval_accuracy", "lr", "grad_norm")) -> str | None:
    """metrics.png beside metrics.jsonl: one panel per key that was logged."""
    rows = read_metrics(run_dir)
    keys = [k for k in keys if any(k in r for r in rows)]
    if not keys:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3))
    for ax, k in zip(axes if len(keys) > 1 else [axes], keys):
        pts = [(r["step"], r[k]) for r in rows if isinstance(r.get(k), (int, float))]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="." if len(pts) < 40 else None)
        ax.set_title(k)
        ax.set_xlabel("step")
    fig.tight_layout()
    out = os.path.join(run_dir, "metrics.png")
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out
