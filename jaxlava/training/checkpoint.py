"""Checkpoints: orbax CheckpointManager (async, keep N, atomic) with exact resume.

A checkpoint holds the train state (trainable params — adapters and heads only when the base is
frozen —, optimizer state, step, RNG, skip counter), the data iterator's state and the run's
resolved config.  A latest checkpoint that fails to restore (truncated, corrupt) is reported and
the previous good one is used instead.
"""
from __future__ import annotations

import logging
import os
import warnings

import jax
import orbax.checkpoint as ocp

from jaxlava.fileio import jsonable, write_json

log = logging.getLogger("jaxlava.training.checkpoint")


class Checkpointer:
    def __init__(self, run_dir: str, *, keep: int = 3, async_save: bool = True):
        self.dir = os.path.abspath(os.path.join(run_dir, "checkpoints"))
        opts = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(self.dir, options=opts)

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state, data_state: dict | None = None, extra: dict | None = None) -> None:
        args = {"state": ocp.args.StandardSave(state),
                "data": ocp.args.JsonSave(jsonable(data_state or {})),
                "extra": ocp.args.JsonSave(jsonable(extra or {}))}
        self.manager.save(step, args=ocp.args.Composite(**args), force=True)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def restore_latest(self, abstract_state):
        """(step, state, data_state, extra) of the newest checkpoint that restores, or None."""
        self.wait()
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
        for step in reversed(self.steps()):
            try:
                out = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore(),
                    extra=ocp.args.JsonRestore()))
                return step, out["state"], out["data"] or {}, out["extra"] or {}
            except Exception as e:  # a truncated or corrupt step: fall back to the one before
                msg = f"checkpoint step {step} in {self.dir} cannot be restored ({type(e).__name__}: {e}); " \
                      "falling back to the previous checkpoint"
                warnings.warn(msg, RuntimeWarning, stacklevel=2)
                log.warning(msg)
        return None

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def save_config(run_dir: str, config: dict) -> None:
    """The resolved config beside the checkpoints (atomic)."""
    write_json(os.path.join(run_dir, "config.json"), config)
