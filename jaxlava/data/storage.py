"""Record storage: TFDS GeneratorBasedBuilders writing ArrayRecord, read back without TensorFlow.

Each (kind, split) is one small TFDS dataset under `out_dir/<kind>/<split>/`.  Lists and dicts
are stored as JSON text and restored on read; images are stored as their encoded bytes.
"""
from __future__ import annotations

import contextlib
import glob
import io
import json
import os
from typing import Any, Iterable, Sequence

import numpy as np

# field -> storage type ("text", "bytes", "json", "int", "float", "bool")
SCHEMAS: dict[str, dict[str, str]] = {
    "conversation": {"id": "text", "image": "bytes", "conversations": "json", "source": "text"},
    "preference": {"id": "text", "image": "bytes", "conversations": "json", "source": "text",
                   "output_1": "text", "output_2": "text", "preference": "int", "hallucination": "bool",
                   "facts": "json"},
    "ppo_prompt": {"id": "text", "image": "bytes", "conversations": "json", "source": "text",
                   "caption_type": "int", "length_bonus": "float", "facts": "json"},
    "probe": {"id": "text", "image": "bytes", "question": "text", "answer": "text", "benchmark": "text",
              "split": "text", "facts": "json", "extra": "json"},
}
DEFAULTS = {"source": "", "facts": [], "extra": {}, "image": b""}
VERSION = "1.0.0"


class StorageError(ValueError):
    pass


def _feature(kind: str):
    import tensorflow_datasets as tfds
    f = tfds.features
    table = {"text": f.Text(), "bytes": f.Tensor(shape=(), dtype=np.object_), "json": f.Text(),
             "int": f.Scalar(dtype=np.int64), "float": f.Scalar(dtype=np.float32), "bool": f.Scalar(dtype=np.bool_)}
    return f.FeaturesDict({k: table[t] for k, t in SCHEMAS[kind].items()})


def encode(kind: str, rec: dict, where: str) -> dict:
    """Validate one record against its schema and convert it to storable values."""
    schema = SCHEMAS[kind]
    extra = set(rec) - set(schema)
    if extra:
        raise StorageError(f"{where}: unknown field(s) {sorted(extra)} for a {kind} record")
    out = {}
    for k, t in schema.items():
        v = rec.get(k, DEFAULTS.get(k))
        if v is None:
            raise StorageError(f"{where}: missing field {k!r} of a {kind} record")
        if t == "json":
            v = json.dumps(v, ensure_ascii=False)
        elif t == "bytes":
            if not isinstance(v, (bytes, bytearray)):
                raise StorageError(f"{where}: field {k!r} must be encoded image bytes, got {type(v).__name__}")
            v = bytes(v)
        elif t == "text" and not isinstance(v, str):
            raise StorageError(f"{where}: field {k!r} must be a string, got {type(v).__name__}")
        out[k] = v
    return out


def decode(kind: str, ex: dict) -> dict:
    out = {}
    for k, t in SCHEMAS[kind].items():
        v = ex[k]
        if t in ("text", "json"):
            v = v.decode("utf-8") if isinstance(v, bytes) else str(v)
            if t == "json":
                v = json.loads(v)
        elif t == "bytes":
            v = bytes(v)
        elif t == "int":
            v = int(v)
        elif t == "float":
            v = float(v)
        elif t == "bool":
            v = bool(v)
        out[k] = v
    return out


_BUILDERS: dict = {}


def _builder_cls(kind: str):
    if kind in _BUILDERS:
        return _BUILDERS[kind]
    import tensorflow_datasets as tfds

    class Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version(globals()["VERSION"])
        name = f"jaxlava_{kind}"

        def __init__(self, *, records=None, split="train", **kw):
            self._records, self._split = records, split
            super().__init__(**kw)

        def _info(self):
            # disable_shuffling: records keep the order they were written in (tfds otherwise orders by key hash)
            return tfds.core.DatasetInfo(builder=self, features=_feature(kind), disable_shuffling=True,
                                         description=f"jaxlava {kind} records")

        def _split_generators(self, dl_manager):
            return {self._split: self._generate_examples()}

        def _generate_examples(self):
            for i, rec in enumerate(self._records):
                yield i, encode(kind, rec, f"{kind} record {i}")

    Builder.__name__ = f"jaxlava_{kind}"
    _BUILDERS[kind] = Builder
    return Builder


def dataset_dir(out_dir: str, kind: str, split: str) -> str:
    return os.path.join(out_dir, kind, split)


def write_records(kind: str, records: Iterable[dict], out_dir: str, split: str = "train") -> int:
    """Write records of `kind` as an ArrayRecord TFDS dataset; returns how many were written."""
    if kind not in SCHEMAS:
        raise StorageError(f"unknown record kind {kind!r}; kinds: {sorted(SCHEMAS)}")
    import tensorflow_datasets as tfds
    from absl import logging as absl_logging
    tfds.disable_progress_bar()
    absl_logging.set_verbosity(absl_logging.WARNING)  # tfds announces every prepare at INFO
    records = list(records)
    for i, r in enumerate(records):  # validate before anything is written
        encode(kind, r, f"{kind} record {i}")
    data_dir = dataset_dir(out_dir, kind, split)
    if os.path.exists(data_dir):
        import shutil
        shutil.rmtree(data_dir)
    builder = _builder_cls(kind)(records=records, split=split, data_dir=data_dir, file_format="array_record")
    # tfds prints "Downloading and preparing dataset ..." for every build, although nothing is downloaded
    with contextlib.redirect_stdout(io.StringIO()):
        builder.download_and_prepare()
    return len(records)


class RecordSource:
    """Random-access, picklable source of decoded records (plugs into grain.MapDataset.source)."""

    def __init__(self, out_dir: str, kind: str, split: str = "train"):
        self.out_dir, self.kind, self.split = out_dir, kind, split
        self._src = None
        self._open()

    def _open(self):
        import tensorflow_datasets as tfds
        base = dataset_dir(self.out_dir, self.kind, self.split)
        found = sorted(glob.glob(os.path.join(base, "*", "*", "dataset_info.json")))
        if not found:
            raise StorageError(f"no {self.kind}/{self.split} dataset under {self.out_dir} (looked in {base})")
        self._src = tfds.builder_from_directory(os.path.dirname(found[0])).as_data_source(split=self.split)

    def __len__(self) -> int:
        return len(self._src)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return decode(self.kind, self._src[int(i)])

    def __getstate__(self):
        return {"out_dir": self.out_dir, "kind": self.kind, "split": self.split}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._open()

    def __repr__(self):
        return f"RecordSource({self.out_dir!r}, {self.kind!r}, {self.split!r}, n={len(self)})"


def open_source(out_dir: str, kind: str, split: str = "train") -> RecordSource:
    return RecordSource(out_dir, kind, split)


class ConcatSource:
    """Random-access sources one after another (record i of the second is record len(first) + i)."""

    def __init__(self, sources):
        self.sources = list(sources)
        self._ends = np.cumsum([len(s) for s in self.sources]).tolist()

    def __len__(self) -> int:
        return self._ends[-1] if self._ends else 0

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = int(i)
        if not 0 <= i < len(self):
            raise IndexError(f"record {i} of {len(self)}")
        k = int(np.searchsorted(self._ends, i, side="right"))
        return self.sources[k][i - (self._ends[k - 1] if k else 0)]

    def __repr__(self):
        return f"ConcatSource({self.sources!r})"


class HeadSource:
    """The first `n` records of a random-access source (all of them when it holds fewer)."""

    def __init__(self, source, n: int):
        if n < 1:
            raise ValueError(f"HeadSource: n must be 1 or more, got {n}")
        self.source, self.n = source, min(int(n), len(source))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = int(i)
        if not 0 <= i < self.n:
            raise IndexError(f"record {i} of {self.n}")
        return self.source[i]

    def __repr__(self):
        return f"HeadSource({self.source!r}, n={self.n})"


class SubsetSource:
    """The records of a random-access source at the given indices, in that order."""

    def __init__(self, source, indices: Sequence[int]):
        self.source, self.indices = source, [int(i) for i in indices]
        if not self.indices:
            raise ValueError(f"SubsetSource: no records selected from {source!r}")

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = int(i)
        if not 0 <= i < len(self.indices):
            raise IndexError(f"record {i} of {len(self.indices)}")
        return self.source[self.indices[i]]

    def __repr__(self):
        return f"SubsetSource({self.source!r}, n={len(self.indices)})"


def open_sources(out_dirs: Iterable[str], kind: str, split: str = "train"):
    """One source over the `split` of `kind` in each folder, in order (the only one's own source if one)."""
    found = [open_source(d, kind, split) for d in out_dirs]
    return found[0] if len(found) == 1 else ConcatSource(found)
