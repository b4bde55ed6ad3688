"""Shared machinery of the dataset converters: record validation, reject reporting, report.json, --strict.

A converter (see `convert_sources.py`) turns an input into `Item`s: (file, index, build), where `build()` returns
one record, a list of records, or None.  Anything wrong with one item raises `RecordError`; `run_conversion`
turns it into a named reject `{"file", "index", "reason"}` and goes on (or, with `strict`, stops with a
`ConversionError` naming file, index and reason).  A malformed input file as a whole is a `ConversionError`.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Iterable, Sequence

from jaxlava.data.processor import ImageError, load_image
from jaxlava.data.templates import IMAGE, TemplateError, encode_conversation, normalize_turns


class RecordError(ValueError):
    """One input record is unusable: it is skipped and named in report.json."""


class ConversionError(RuntimeError):
    """The conversion cannot go on: a malformed input file, or a bad record under --strict."""


@dataclasses.dataclass
class Item:
    file: str
    index: int | str
    build: Callable[[], Any]


# ------------------------------------------------------------------------------------------------ files
def load_json(path: str, expect: type, *, keys: Sequence[str] = (), what: str = "input file") -> Any:
    """JSON from `path`; a clear ConversionError (naming the file) when it is missing, unparsable, of the wrong
    top-level type, or lacks one of the top-level `keys`."""
    if not os.path.isfile(path):
        raise ConversionError(f"{path}: {what} not found")
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConversionError(f"{path}: {what} is not valid JSON ({e})") from None
    if not isinstance(data, expect):
        raise ConversionError(f"{path}: {what} should hold a JSON {_tname(expect)} at the top level, "
                              f"found {_tname(type(data))}")
    for k in keys:
        if k not in data:
            raise ConversionError(f"{path}: {what} lacks the top-level key {k!r}")
    return data


def _tname(t) -> str:
    return {list: "list", dict: "object", str: "string", int: "integer", float: "number", bool: "boolean"}.get(
        t, getattr(t, "__name__", str(t)))


# ------------------------------------------------------------------------------------------------ fields
def require(rec: Any, key: str, typ: type | tuple[type, ...]) -> Any:
    """`rec[key]`, checked to exist and be of `typ` (bools are not numbers here)."""
    if not isinstance(rec, dict):
        raise RecordError(f"malformed record: expected an object, found {_tname(type(rec))}")
    if key not in rec:
        raise RecordError(f"malformed record: missing field {key!r}")
    v = rec[key]
    typs = typ if isinstance(typ, tuple) else (typ,)
    if not isinstance(v, typs) or (isinstance(v, bool) and bool not in typs):
        want = "/".join(_tname(t) for t in typs)
        raise RecordError(f"malformed record: field {key!r} should be {want}, found {_tname(type(v))}")
    return v


def record_id(rec: dict, default: Any) -> str:
    v = rec.get("id", default)
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        raise RecordError(f"malformed record: field 'id' should be string/integer, found {_tname(type(v))}")
    return str(v)


def check_turns(turns: Any, *, end_with_gpt: bool = True) -> list[dict]:
    """LLaVA turns -> a clean list of {"from", "value"} (validated with `templates.normalize_turns`)."""
    if not isinstance(turns, list):
        raise RecordError(f"malformed record: 'conversations' should be a list, found {_tname(type(turns))}")
    for i, t in enumerate(turns):
        if not isinstance(t, dict) or t.get("from") not in ("human", "gpt") or not isinstance(t.get("value"), str):
            raise RecordError(f"malformed record: turn {i} should be {{'from': 'human'|'gpt', 'value': str}}")
        if not t["value"].replace(IMAGE, "").strip():
            raise RecordError(f"empty turn {i} ({t['from']})")
    try:
        norm = normalize_turns(turns)
    except TemplateError as e:
        reason = str(e)
        raise RecordError(reason if reason == "empty conversation" else f"wrong turn order: {reason}") from None
    if end_with_gpt and norm[-1]["from"] != "gpt":
        raise RecordError("wrong turn order: the conversation does not end with a gpt turn")
    return [{"from": t["from"], "value": t["value"]} for t in turns]


def with_image_token(turns: list[dict], has_image: bool) -> list[dict]:
    """A record with an image gets `<image>` at the start of its first human turn if no turn holds it (the
    pipelines only splice the image where the token is); a record without one must not hold the token."""
    holds = any(IMAGE in t["value"] for t in turns)
    if has_image and not holds:
        k = next(i for i, t in enumerate(turns) if t["from"] == "human")
        turns = [dict(t) for t in turns]
        turns[k]["value"] = f"{IMAGE}\n{turns[k]['value']}"
    elif holds and not has_image:
        raise RecordError("malformed record: a turn holds <image> but the record names no image")
    return turns


# ------------------------------------------------------------------------------------------------ images
class ImageStore:
    """Image files under one folder, read and decoded (checked) once each; `read` returns the encoded bytes."""

    def __init__(self, image_dir: str | None):
        self.image_dir = image_dir
        self._cache: dict[str, bytes | RecordError] = {}

    def exists(self, name: str) -> bool:
        return self.image_dir is not None and os.path.isfile(os.path.join(self.image_dir, name))

    def read(self, name: str) -> bytes:
        if name not in self._cache:
            self._cache[name] = self._load(name)
        got = self._cache[name]
        if isinstance(got, RecordError):
            raise got
        return got

    def _load(self, name: str) -> bytes | RecordError:
        if self.image_dir is None:
            return RecordError(f"missing image {name!r}: no --image-dir given")
        path = os.path.join(self.image_dir, name)
        if not os.path.isfile(path):
            return RecordError(f"missing image {name!r} (no file {path})")
        with open(path, "rb") as fh:
            data = fh.read()
        try:
            load_image(data)
        except ImageError as e:
            return RecordError(f"undecodable image {name!r}: {str(e).split(': ', 1)[-1]}")
        return data

    def first(self, names: Sequence[str]) -> tuple[str, bytes]:
        """The first candidate file name that exists (e.g. the COCO 2014 and 2017 spellings of one image)."""
        for n in names:
            if self.exists(n):
                return n, self.read(n)
        raise RecordError(f"missing image: none of {list(names)} under {self.image_dir}")


# ------------------------------------------------------------------------------------------------ length
class LengthCheck:
    """Rejects samples longer than `max_tokens` tokens, counted with `templates.encode_conversation` (the image
    as `num_image_tokens` tokens).  Preference records count the longer of the two candidate conversations;
    PPO prompts count the prompt (human turn)."""

    def __init__(self, tokenizer, max_tokens: int, *, num_image_tokens: int = 1, template: str = "v1"):
        if max_tokens < 1:
            raise ConversionError(f"--max-tokens must be positive, got {max_tokens}")
        self.tok, self.max_tokens, self.n_img, self.template = tokenizer, max_tokens, num_image_tokens, template
        tid = tokenizer.convert_tokens_to_ids(IMAGE)
        self.image_id = tid if tid is not None and tid != tokenizer.unk_token_id else len(tokenizer)

    def _count(self, turns: list[dict]) -> int:
        enc = encode_conversation(self.tok, turns, template=self.template, image_token_id=self.image_id,
                                  num_image_tokens=self.n_img)
        return len(enc["input_ids"])

    def count(self, kind: str, rec: dict) -> int:
        turns = rec["conversations"]
        if kind == "preference":
            return max(self._count(turns[:-1] + [{"from": "gpt", "value": rec[k]}]) for k in ("output_1", "output_2"))
        if kind == "ppo_prompt":
            return self._count(turns[:1])
        return self._count(turns)

    def __call__(self, kind: str, rec: dict) -> None:
        n = self.count(kind, rec)
        if n > self.max_tokens:
            raise RecordError(f"over-long sample: {n} tokens > --max-tokens {self.max_tokens}")


def load_length_check(tokenizer_dir: str | None, max_tokens: int | None, num_image_tokens: int = 1,
                      template: str = "v1") -> LengthCheck | None:
    if tokenizer_dir is None and max_tokens is None:
        return None
    if tokenizer_dir is None or max_tokens is None:
        raise ConversionError("--tokenizer and --max-tokens go together (give both or neither)")
    from jaxlava.data.processor import load_tokenizer
    try:
        tok = load_tokenizer(tokenizer_dir)
    except Exception as e:  # transformers raises OSError/ValueError/... for a bad folder
        raise ConversionError(f"{tokenizer_dir}: cannot load a tokenizer ({e})") from None
    return LengthCheck(tok, max_tokens, num_image_tokens=num_image_tokens, template=template)


# ------------------------------------------------------------------------------------------------ report
class Report:
    """Counts written records, names every reject and counts warnings; `strict` makes the first reject fatal."""

    def __init__(self, strict: bool = False):
        self.strict = strict
        self.written = 0
        self.rejects: list[dict] = []
        self.warnings: dict[str, int] = {}

    def reject(self, file: str, index: int | str, reason: str) -> None:
        if self.strict:
            raise ConversionError(f"{file}: record {index}: {reason}")
        self.rejects.append({"file": file, "index": index, "reason": reason})

    def warn(self, what: str) -> None:
        self.warnings[what] = self.warnings.get(what, 0) + 1

    def as_dict(self) -> dict:
        files = list(dict.fromkeys(r["file"] for r in self.rejects))  # in order of appearance
        rejects = sorted(self.rejects, key=lambda r: (files.index(r["file"]), str(type(r["index"])), r["index"]))
        out = {"written": self.written, "skipped": len(rejects), "rejects": rejects}
        if self.warnings:
            out["warnings"] = dict(self.warnings)
        return out

    def save(self, out_dir: str) -> str:
        os.makedirs(out_dir, exist_ok=True)
        path = os.path.join(out_dir, "report.json")
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(self.as_dict(), fh, indent=1, ensure_ascii=False)
        return path

    def summary(self, max_lines: int = 20) -> str:
        lines = [f"written {self.written} records, skipped {len(self.rejects)}"]
        lines += [f"  skipped {r['file']} record {r['index']}: {r['reason']}" for r in self.rejects[:max_lines]]
        if len(self.rejects) > max_lines:
            lines.append(f"  ... and {len(self.rejects) - max_lines} more (see report.json)")
        lines += [f"  warning: {n} x {w}" for w, n in self.warnings.items()]
        return "\n".join(lines)


def run_conversion(kind: str, items: Iterable[Item], out_dir: str, *, split: str = "train", strict: bool = False,
                   length_check: LengthCheck | None = None, report: Report | None = None, quiet: bool = False,
                   total: int | None = None) -> dict:
    """Build every item (RecordErrors -> rejects), write the records with `storage.write_records`, then
    OUT_DIR/report.json; returns the report dict."""
    from tqdm import tqdm

    from jaxlava.data.storage import write_records
    report = report or Report(strict)
    report.strict = strict
    records: list[dict] = []
    for it in tqdm(items, total=total, desc=f"converting {kind}", unit="rec", disable=quiet):
        try:
            got = it.build()
            recs = [] if got is None else got if isinstance(got, list) else [got]
            if length_check is not None:
                for r in recs:
                    length_check(kind, r)
        except RecordError as e:
            report.reject(it.file, it.index, str(e))
            continue
        records.extend(recs)
    report.written = write_records(kind, records, out_dir, split=split) if records else 0
    path = report.save(out_dir)
    if not quiet:
        print(report.summary())
        print(f"report: {path}")
    return report.as_dict()


@dataclasses.dataclass
class Options:
    """Reader options of `data/convert.py` (each reader uses the fields of its format)."""
    image_dir: str | None = None
    facts: str | None = None  # image_to_caption.json
    max_turns: int = 8  # QA rounds per conversation (vqav2, aokvqa)
    variant: str = "mc"  # aokvqa: mc | cot | ppo
    annotations_dir: str | None = None  # flickr30k: folder of <id>.xml (default: ../Annotations next to Sentences)
    per_image: int = 1  # flickr30k: sentences converted per image
    source: str | None = None  # the records' "source" field (default: the format name)
