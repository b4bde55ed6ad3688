"""Atomic file output: the one place that writes a file (or a folder) so that a kill never leaves half of it.

Every writer in jaxlava goes through these helpers: a reader sees either the old file or the complete new one.
- `atomic_open(path, mode="w")`: a context manager yielding a handle on `path + ".tmp"`, renamed over `path` on a
  clean exit (removed on an exception).
- `write_json(path, obj)`, `write_text(path, text)`, `save_safetensors(path, tensors, metadata=None)`.
- `atomic_dir(path)`: a context manager yielding a sibling temporary folder, which replaces `path` on a clean exit.
"""
from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager


def _tmp(path: str) -> str:
    return f"{path}.tmp{os.getpid()}"


@contextmanager
def atomic_open(path: str, mode: str = "w"):
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = _tmp(path)
    try:
        with open(tmp, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def jsonable(obj):
    """`obj` with numpy/jax scalars and arrays turned into lists and numbers (anything else into its str)."""
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def write_json(path: str, obj, *, indent: int | None = 2, sort_keys: bool = False) -> None:
    with atomic_open(path) as fh:
        json.dump(jsonable(obj), fh, indent=indent, sort_keys=sort_keys)


def write_text(path: str, text: str) -> None:
    with atomic_open(path) as fh:
        fh.write(text)


def save_safetensors(path: str, tensors: dict, metadata: dict | None = None) -> None:
    """numpy arrays -> a safetensors file, atomically."""
    from safetensors.numpy import save
    data = save(tensors, metadata=metadata)
    with atomic_open(path, "wb") as fh:
        fh.write(data)


@contextmanager
def atomic_dir(path: str):
    """Build a folder in a sibling temporary folder; on success it replaces `path` (an old `path` is removed)."""
    path = os.path.abspath(path)
    tmp = _tmp(path)
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    os.makedirs(tmp)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if os.path.exists(path):
        old = path + ".old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)
