"""Carry a reproduction to another machine: `--carry-to DEST` writes what OUT's stages made that the report and
the stages still to run read, small enough to keep in git; `--restore-from DEST` on the other machine rebuilds the
world, checks that it is the same world record for record, and puts the carried stages back into OUT, so that the
same command goes on where the first machine stopped (a seed takes longer than a machine is lent, decisions 73).

What is carried, per seed:
- every finished stage's own files (stage.json, config.json, metrics.jsonl, the judges' answers and results, the
  audit, the pairs list), not its checkpoints, logs or plots;
- of its models (`hf/`, `adapter/`, a PPO run's folder ...) only the ones a stage still to run reads (its `init`,
  adapters, extra pairs or judged model): once every stage has run, no model at all;
- of a stage that started but did not finish: its own files and its latest checkpoint, so that it resumes there;
- the world's vision tower (stage 0) while a grounding stage still has to start from it.
The world itself is not carried: it is generated again from its flags (about 40 s), and `carry.json` holds a
digest of its decoded records (their bytes on disk differ between two writes of the same records).
"""
from __future__ import annotations

import filecmp
import hashlib
import json
import os
import shutil
import time

from jaxlava.fileio import write_json
from jaxlava.reproduce import report

CARRY_FILE = "carry.json"
SKIPPED_FILES = (".png",)  # plots are drawn again from metrics.jsonl
SKIPPED_DIRS = ("checkpoints", "tb")  # a finished stage's checkpoints and TensorBoard logs
PATH_FIELDS = ("init", "policy_adapter", "reward_adapter", "reward_adapters", "reward_ensemble", "extra_data", "model")
VISION = "vision_tower"  # world/vision_tower: stage 0 of the vision tower, made by the first grounding stage


class CarryError(RuntimeError):
    """A carried folder that cannot be restored here (another world, a file that differs from OUT's)."""


def world_digest(world: str) -> dict[str, str]:
    """sha256 per part of a shapes world: its config, its tokenizer's files and each record dataset's decoded
    records in order (`kind/split`), images by their pixels.  The config's settings at an off value (0, False,
    None, empty) are left out of its digest, so that a generator field added since (whose off value keeps the
    records as they were) leaves the digest of a world written before it unchanged."""
    from jaxlava.data.storage import SCHEMAS, open_source
    with open(os.path.join(world, "world.json")) as f:
        config = {k: v for k, v in json.load(f)["config"].items() if v not in (None, False, 0, "", [], {})}
    out = {"config": _sha(json.dumps(config, sort_keys=True).encode())}
    tok = os.path.join(world, "tokenizer")
    for name in sorted(os.listdir(tok)):
        with open(os.path.join(tok, name), "rb") as f:
            out[f"tokenizer/{name}"] = _sha(f.read())
    for kind in sorted(k for k in os.listdir(world) if k in SCHEMAS):
        for split in sorted(os.listdir(os.path.join(world, kind))):
            h = hashlib.sha256()
            source = open_source(world, kind, split)
            for rec in (source[i] for i in range(len(source))):
                h.update(json.dumps(rec, sort_keys=True, default=_pixels).encode())
            out[f"{kind}/{split}"] = h.hexdigest()
    return out


def _pixels(data: bytes) -> str:
    """An image field by its pixels (another Pillow may encode the same pixels into other PNG bytes)."""
    import io

    import numpy as np
    from PIL import Image
    if not data:
        return ""
    with Image.open(io.BytesIO(data)) as im:
        return f"{im.mode}{im.size}" + _sha(np.asarray(im).tobytes())


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _paths(c) -> list[str]:
    """The paths a stage config reads (its start, adapters, extra pairs, judged model)."""
    out = []
    for field in PATH_FIELDS:
        v = getattr(c, field, None)
        out += [v] if isinstance(v, str) else list(v or ())
    return [p for p in out if p]


def _within(path: str, folder: str) -> bool:
    return os.path.commonpath([os.path.abspath(path), os.path.abspath(folder)]) == os.path.abspath(folder)


def _latest_checkpoint(folder: str) -> str | None:
    steps = [int(n) for n in os.listdir(os.path.join(folder, "checkpoints")) if n.isdigit()] \
        if os.path.isdir(os.path.join(folder, "checkpoints")) else []
    return os.path.join(folder, "checkpoints", str(max(steps))) if steps else None


def plan(out: str, seed_stages: dict[str, tuple[str, object]]) -> dict[str, list[str]]:
    """What `--carry-to` takes of one seed, given its stages as {name: (folder, config)} in order (stages.seed_stages):
    {"finished": stage names, "started": stages cut short, "files": paths relative to OUT}."""
    finished = [n for n, (f, _) in seed_stages.items() if os.path.exists(os.path.join(f, report.MARKER))]
    reads = {os.path.normpath(p) for n, (_, c) in seed_stages.items() if n not in finished for p in _paths(c)}
    # a judged run (a PPO run's folder) is loaded onto the base model its own config names
    reads |= {os.path.normpath(c.init) for f, c in seed_stages.values() if os.path.normpath(f) in reads
              and getattr(c, "init", None)}
    files, started = [], []
    for name, (folder, _) in seed_stages.items():
        if not os.path.isdir(folder):
            continue
        ckpt = None if name in finished else _latest_checkpoint(folder)
        if name not in finished and any(not n.startswith(".") for n in os.listdir(folder)):
            started.append(name)
        files += _stage_files(folder, reads, ckpt)
    return {"finished": finished, "started": started, "files": sorted(os.path.relpath(f, out) for f in files)}


def _stage_files(folder: str, reads: set[str], checkpoint: str | None) -> list[str]:
    """A stage folder's own files, the models in it that `reads` names, and `checkpoint`'s files."""
    whole = os.path.normpath(folder) in reads  # a PPO run judged later: its adapter, value head and config
    out = []
    for root, dirs, names in os.walk(folder):
        rel = os.path.relpath(root, folder)
        top = rel.split(os.sep)[0]
        keep = (rel == "." or any(os.path.normpath(os.path.join(folder, top)) == p for p in reads)
                or (whole and top not in SKIPPED_DIRS)
                or (checkpoint is not None and _within(root, checkpoint)))
        if rel == ".":
            dirs[:] = [d for d in dirs if not d.startswith(".")]
        if keep:
            out += [os.path.join(root, n) for n in sorted(names)
                    if not n.startswith(".") and not n.endswith(SKIPPED_FILES) and ".tmp" not in n]
    return out


def carry_to(cfg, dest: str, stages_by_seed: dict[int, dict[str, tuple[str, object]]]) -> dict:
    """Write the carried part of OUT (`cfg.out`; each seed's stages as `plan` takes them) to `dest` with its
    carry.json; returns that record."""
    world = os.path.join(cfg.out, "world")
    if not os.path.exists(os.path.join(world, "world.json")):
        raise CarryError(f"--carry-to: {cfg.out} holds no world (no {world}/world.json): nothing has run there")
    if os.path.exists(dest) and os.listdir(dest):
        raise CarryError(f"--carry-to {dest}: the folder is not empty; choose a new one (a carry is never merged)")
    seeds = {str(s): plan(cfg.out, st) for s, st in stages_by_seed.items()}
    files = [f for p in seeds.values() for f in p["files"]]
    first = report.GROUND if cfg.ground_steps else report.SFT  # the stage that starts from the vision tower
    if any(first not in p["finished"] for p in seeds.values()):
        files += sorted(os.path.relpath(os.path.join(r, n), cfg.out)
                        for r, _, ns in os.walk(os.path.join(world, VISION)) for n in ns)
    for rel in files:
        os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
        shutil.copy2(os.path.join(cfg.out, rel), os.path.join(dest, rel))
    rec = {"made": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "out": cfg.out,
           "seeds": {s: {k: p[k] for k in ("finished", "started")} for s, p in seeds.items()},
           "files": len(files), "bytes": sum(os.path.getsize(os.path.join(dest, f)) for f in files),
           "world": world_digest(world)}
    write_json(os.path.join(dest, CARRY_FILE), rec, indent=1)
    print(f"carried {len(files)} files ({rec['bytes'] / 2**20:.1f} MiB) of {cfg.out} to {dest}: {_stages(rec)}",
          flush=True)
    return rec


def _stages(rec: dict) -> str:
    return "; ".join(f"seed {s}: {len(p['finished'])} stages finished, {', '.join(p['started']) or 'none'} cut "
                     "short" for s, p in rec["seeds"].items())


def restore_from(out: str, src: str) -> dict:
    """Put a carried folder back into OUT, whose world must be the one the carry was made from (generated here
    again); a file OUT already holds must be the carried one.  Returns the carry's record."""
    path = os.path.join(src, CARRY_FILE)
    if not os.path.isfile(path):
        raise CarryError(f"--restore-from {src}: no {CARRY_FILE} there (not a folder that --carry-to wrote)")
    with open(path) as f:
        rec = json.load(f)
    here = world_digest(os.path.join(out, "world"))
    differ = sorted(k for k in set(rec["world"]) | set(here) if rec["world"].get(k) != here.get(k))
    if differ:
        raise CarryError(f"--restore-from {src}: the world generated in {out}/world is not the one the stages were "
                         f"made on ({', '.join(differ)} differ); the carried stages cannot go on here")
    copied = 0
    for root, _, names in os.walk(src):
        for name in names:
            rel = os.path.relpath(os.path.join(root, name), src)
            if rel == CARRY_FILE:
                continue
            target = os.path.join(out, rel)
            if os.path.exists(target):
                if not filecmp.cmp(target, os.path.join(src, rel), shallow=False):
                    raise CarryError(f"--restore-from {src}: {target} differs from the carried {rel}; restore "
                                     "into a new --out")
                continue
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copy2(os.path.join(src, rel), target)
            copied += 1
    print(f"restored {copied} files from {src} (made {rec['made']}): {_stages(rec)}", flush=True)
    return rec
