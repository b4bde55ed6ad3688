"""Orchestration shared by the stage CLIs: data, processor, model, mesh placement and batch feeding."""
from __future__ import annotations

import dataclasses
import os

import jax
from flax import nnx

from jaxlava import sharding
from jaxlava.data.buckets import DEFAULT_BUCKETS
from jaxlava.data.processor import LlavaProcessor
from jaxlava.shapes import open_world
from jaxlava.training.optim import OptimConfig


DEFAULT_DATA = "runs/shapes_world"


@dataclasses.dataclass
class RunConfig:
    """Options shared by every trainer."""
    preset: str = "shapes"  # shapes (embedded world, CPU-sized) | llava-7b-224 | llava-13b-336 | tiny
    data: str = DEFAULT_DATA  # data folder: converted data, or the shapes world (generated here if missing)
    init: str | None = None  # HF model folder to start from (llava-hf layout); None = preset's random init
    out: str = "runs/run"  # RUN_DIR: checkpoints, metrics.jsonl, tb/, config.json, hf/
    steps: int | None = None  # optimizer steps (default: the preset's)
    batch_size: int = 16  # global batch (rows per optimizer step)
    mesh: str | None = None  # device mesh: omit = 1 device; '--mesh' alone = all devices on fsdp; 'data=2,fsdp=-1'
    checkpoint_every: int = 100
    keep_checkpoints: int = 3
    seed: int = 42
    num_workers: int = 0  # grain worker processes (0 = in-process)
    param_dtype: str = "float32"
    compute_dtype: str = "float32"  # bfloat16 on accelerators: fp32 master weights, bf16 compute
    remat: bool = False
    scan_layers: bool = False
    eval_every: int = 50
    # SFT and RM sequence-length buckets: a batch pads to the smallest that holds its longest row (PPO pads to its
    # fixed widths instead). Finer buckets waste less compute on padding and compile one more step program each,
    # e.g. --buckets 64 128 192 256 320 384 512 1024 2048
    buckets: tuple[int, ...] = DEFAULT_BUCKETS
    stop_after: int | None = None  # end after this many steps of this process, as a preemption would (rerun to resume)
    build_missing: bool = False
    """Build a missing shapes world (or upstream stage) at a path you gave; default paths are built anyway."""
    # shapes preset without --init: steps of the vision tower's stage 0 (jaxlava/shapes/vision.py; 0 = random tower)
    vision_pretrain_steps: int = 3000
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    """AdamW, learning-rate schedule, gradient clipping and accumulation."""


# model presets that come with an embedded dataset: their data folder is a generated world (jaxlava.shapes)
EMBEDDED_WORLDS = {"shapes": open_world}


def is_default(cfg, name: str) -> bool:
    """Whether field `name` of `cfg` still holds its dataclass default (the user did not give a path)."""
    field = {f.name: f for f in dataclasses.fields(cfg)}[name]
    return getattr(cfg, name) == field.default


def may_build(cfg, name: str) -> bool:
    """Missing inputs are built only for the default paths, or when --build-missing asks for it."""
    return cfg.build_missing or is_default(cfg, name)


def world_for(cfg: RunConfig):
    """The embedded world of `cfg.preset` (built when missing and allowed), or None for converted data, whose
    folder must exist."""
    opener = EMBEDDED_WORLDS.get(cfg.preset)
    if opener is None:
        if not os.path.isdir(cfg.data):
            raise FileNotFoundError(f"--data {cfg.data}: no such folder (convert data with data/convert.py)")
        return None
    return opener(cfg.data, build=may_build(cfg, "data"), vision_pretrain_steps=cfg.vision_pretrain_steps)


def processor_for(cfg: RunConfig, model_config, world=None) -> LlavaProcessor:
    """The processor saved with `cfg.init`, else the embedded world's (opened from `cfg` when not given)."""
    if cfg.init and os.path.exists(os.path.join(cfg.init, "preprocessor_config.json")):
        return LlavaProcessor.from_pretrained(cfg.init)
    world = world or world_for(cfg)
    if world is None:
        raise FileNotFoundError(f"--init {cfg.init!r} has no preprocessor_config.json / tokenizer files")
    return world.processor(model_config)


def build_model(cfg: RunConfig, mesh, world=None):
    """The base model, created or loaded directly sharded on `mesh` (a fresh one from the embedded world's
    config, opened from `cfg` when not given, or from the model preset)."""
    rt = dict(param_dtype=cfg.param_dtype, dtype=cfg.compute_dtype, remat=cfg.remat, scan_layers=cfg.scan_layers)
    if cfg.init:
        from jaxlava.hf import from_pretrained
        if not os.path.exists(os.path.join(cfg.init, "config.json")):
            raise FileNotFoundError(f"--init {cfg.init}: no config.json there (expected an llava-hf model folder)")
        return from_pretrained(cfg.init, dtype=cfg.param_dtype, compute_dtype=cfg.compute_dtype, remat=cfg.remat,
                               scan_layers=cfg.scan_layers,
                               shardings=lambda st: sharding.state_shardings(st, mesh))
    from jaxlava.model import LlavaModel
    from jaxlava.presets import get_preset
    world = world or world_for(cfg)
    mc = world.model_config(**rt) if world is not None else get_preset(cfg.preset, **rt)
    model = sharding.create_sharded(lambda: LlavaModel(mc, rngs=nnx.Rngs(cfg.seed)), mesh)
    if world is not None:
        stage0 = world.prepare_model(model)
        if stage0:
            from jaxlava.training.metrics import format_row
            print("vision stage 0 (held-out object patches): " + format_row(stage0), flush=True)
    return model


def batch_putter(mesh, padding=None):
    """Host batch (numpy, this process's rows) -> global arrays sharded on the batch axis (host-only
    entries such as lists are dropped: the jitted steps take arrays only).  `padding`: how the pipeline pads
    (`jaxlava.data.pipeline.sft_padding` ...): on several processes every batch is widened to the widest
    process's width (see `jaxlava.distributed.global_batch`)."""
    from jaxlava.distributed import global_batch

    def put(batch: dict) -> dict:
        return {k: v for k, v in global_batch(batch, mesh, padding).items() if isinstance(v, jax.Array)}
    return put


def resolve_steps(cfg: RunConfig, n_records: int, epochs: float) -> int:
    if cfg.steps is not None:
        return cfg.steps
    return max(1, int(epochs * n_records // cfg.batch_size))


def setup(cfg, mesh, kind: str, epochs: float, split: str = "train", extra: tuple[str, ...] = ()):
    """What every trainer builds inside its mesh: (model, processor, `split` source of `kind` (then that of each
    `extra` folder), total steps, optimizer)."""
    from jaxlava.data.storage import open_sources
    from jaxlava.training.optim import make_optimizer
    world = world_for(cfg)
    model = build_model(cfg, mesh, world)
    processor = processor_for(cfg, model.config, world)
    source = open_sources([cfg.data, *extra], kind, split)
    total = resolve_steps(cfg, len(source), epochs)
    return model, processor, source, total, make_optimizer(cfg.optim, total)


def as_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)
