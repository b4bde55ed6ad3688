"""Multi-host JAX: cluster detection, `jax.distributed.initialize`, process-local batches -> global arrays (at one
width every process agrees on), and the way back for host work (`local_rows`, `all_process_rows`, `host_copy`).

Every process runs the same program (SPMD).  `maybe_initialize()` must be called before anything touches a
device.  It initializes the distributed runtime when several processes are present:

- TPU pod slices (one process per TPU VM host): detected from the TPU runtime's environment
  (`TPU_WORKER_HOSTNAMES` with more than one host, `MEGASCALE_COORDINATOR_ADDRESS`, `CLOUD_TPU_TASK_ID`);
  jax finds the coordinator itself.
- GPU clusters: explicit `JAX_COORDINATOR_ADDRESS` (host:port), `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`
  (and optionally `JAX_LOCAL_DEVICE_IDS`), or SLURM (`SLURM_NTASKS` > 1 under `srun`; jax reads `SLURM_*`).
- `JAXLAVA_DISTRIBUTED=1` forces initialization (jax auto-detects the cluster), `JAXLAVA_DISTRIBUTED=0` forbids it.

With one process it does nothing.  See docs/distributed.md for launch recipes.
"""
from __future__ import annotations

import functools
import logging
import os
from typing import Any, Mapping

import jax
import numpy as np
from jax.sharding import Mesh

from jaxlava.sharding import batch_sharding

log = logging.getLogger("jaxlava.distributed")


def _int_env(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def detect_cluster(env: Mapping[str, str] | None = None) -> tuple[str | None, dict[str, Any]]:
    """(kind, kwargs for jax.distributed.initialize) from the environment; kind None = single process.

    kind is one of "forced", "explicit", "slurm", "tpu"."""
    env = os.environ if env is None else env
    forced = env.get("JAXLAVA_DISTRIBUTED", "").strip().lower()
    if forced in ("0", "false", "no", "off"):
        return None, {}
    if env.get("JAX_COORDINATOR_ADDRESS"):
        n, pid = _int_env(env, "JAX_NUM_PROCESSES"), _int_env(env, "JAX_PROCESS_ID")
        missing = [k for k, v in (("JAX_NUM_PROCESSES", n), ("JAX_PROCESS_ID", pid)) if v is None]
        if missing:
            raise ValueError(f"JAX_COORDINATOR_ADDRESS is set but {', '.join(missing)} is not; set all three "
                             "(coordinator host:port, number of processes, this process's id)")
        if not 0 <= pid < n:
            raise ValueError(f"JAX_PROCESS_ID={pid} is outside 0..JAX_NUM_PROCESSES-1={n - 1}")
        kw: dict[str, Any] = dict(coordinator_address=env["JAX_COORDINATOR_ADDRESS"], num_processes=n,
                                  process_id=pid)
        if env.get("JAX_LOCAL_DEVICE_IDS"):
            kw["local_device_ids"] = [int(x) for x in env["JAX_LOCAL_DEVICE_IDS"].split(",")]
        return ("explicit" if n > 1 else None), (kw if n > 1 else {})
    if forced in ("1", "true", "yes", "on"):
        return "forced", {}
    if (_int_env(env, "SLURM_NTASKS") or 1) > 1 and env.get("SLURM_STEP_ID") is not None:
        return "slurm", {}
    hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
    if len(hosts) > 1 or env.get("MEGASCALE_COORDINATOR_ADDRESS") or env.get("CLOUD_TPU_TASK_ID"):
        return "tpu", {}
    return None, {}


def maybe_initialize(env: Mapping[str, str] | None = None) -> bool:
    """Call jax.distributed.initialize() when the environment describes several processes. Returns whether
    the distributed runtime is (now) initialized.  Safe to call twice."""
    if jax.distributed.is_initialized():
        return True
    kind, kw = detect_cluster(env)
    if kind is None:
        return False
    log.info("initializing jax.distributed (%s cluster) %s", kind, kw or "")
    jax.distributed.initialize(**kw)
    log.info("process %d of %d, %d local / %d global devices", jax.process_index(), jax.process_count(),
             jax.local_device_count(), jax.device_count())
    return True


def is_main_process() -> bool:
    """True on process 0 (the one that writes logs, checkpoint metadata and exported models)."""
    return jax.process_index() == 0


def max_over_processes(value: int) -> int:
    """The largest of every process's `value`.  A collective when there are several processes (call it on every
    process, in the same order); one process gets its own value back."""
    if jax.process_count() == 1:
        return int(value)
    from jax.experimental import multihost_utils
    return int(np.max(multihost_utils.process_allgather(np.int32(value))))


def all_process_rows(tree):
    """Host (numpy) arrays of this process's rows -> every process's rows, concatenated in process order (the global
    batch's rows, for statistics over the whole batch).  A collective when there are several processes; one
    process gets its own arrays back."""
    if jax.process_count() == 1:
        return tree
    from jax.experimental import multihost_utils
    return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))


def global_batch(local_batch: Mapping[str, Any], mesh: Mesh, padding=None) -> dict[str, Any]:
    """This process's rows (numpy, batch-major) -> global jax arrays with dim 0 sharded on (data, fsdp).

    Every process passes the same keys with the same per-process row count; the global batch is their
    concatenation in process order.  Values that are not numeric numpy arrays (host-side lists such as
    PPO `facts`) are returned unchanged.

    `padding` (a `jaxlava.data.pipeline.Padding`): the processes may have padded their rows to different widths
    (each to its own length bucket); they agree on the widest (a collective) and widen their rows to it, so that
    every process builds arrays of one global shape (and compiles the same programs).  One process keeps its
    batch as it is."""
    if padding is not None and jax.process_count() > 1:
        local_batch = padding.widen(dict(local_batch), max_over_processes(padding.width(local_batch)))
    out: dict[str, Any] = {}
    for key, value in local_batch.items():
        if isinstance(value, np.ndarray) and value.dtype != object:
            if value.ndim == 0:
                raise ValueError(f"batch entry {key!r} is a scalar; batch entries must have a leading batch dim")
            try:
                out[key] = jax.make_array_from_process_local_data(batch_sharding(mesh, value.ndim), value)
            except ValueError as e:
                raise ValueError(f"batch entry {key!r} of shape {value.shape}: {e}") from e
        else:
            out[key] = value
    return out


@functools.lru_cache(maxsize=None)
def _reshard(sharding):
    return jax.jit(lambda x: x, out_shardings=sharding)


def local_rows(x, mesh: Mesh | None = None) -> np.ndarray:
    """This process's rows of a global array whose dim 0 is the batch (the rows `global_batch` took from this
    process), as numpy: host work on a global batch goes through this.  An array this process holds whole (one
    process, numpy) is returned whole.  Other layouts are first resharded to the batch layout on `mesh` (default:
    the array's own mesh), a collective: call it on every process."""
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
        return np.asarray(x)
    target = batch_sharding(mesh if mesh is not None else x.sharding.mesh, x.ndim)
    if not x.sharding.is_equivalent_to(target, x.ndim):
        x = _reshard(target)(x)
    blocks: dict[int, Any] = {}
    for shard in x.addressable_shards:  # devices that replicate a block (other mesh axes) hold the same rows
        blocks.setdefault(shard.index[0].start or 0, shard.data)
    return np.concatenate([np.asarray(blocks[start]) for start in sorted(blocks)])


def host_copy(tree):
    """The pytree with every array that spans other processes' devices gathered whole onto this host (numpy).
    A collective when any array does: call it on every process, then write from process 0.  Arrays this process
    holds whole are returned as they are."""
    from jax.experimental import multihost_utils

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return x
    return jax.tree.map(one, tree)
