"""Orchestration shared by the stage CLIs: data, processor, model, mesh placement and batch feeding."""
from __future__ import annotations

import dataclasses
import os

import jax
from flax import nnx

from jaxlava import sharding
from jaxlava.data.processor import ImagePrep, LlavaProcessor
from jaxlava.optim import OptimConfig


@dataclasses.dataclass
class RunConfig:
    """Options shared by every trainer."""
    preset: str = "shapes"  # shapes (embedded world, CPU-sized) | llava-7b-224 | llava-13b-336 | tiny
    data: str = "runs/shapes_world"  # data folder (converted data or the shapes world; generated if missing)
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
    # shapes preset without --init: steps of the vision tower's stage 0 (jaxlava/shapes_vision.py; 0 = random tower)
    vision_pretrain_steps: int = 3000
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    """AdamW, learning-rate schedule, gradient clipping and accumulation."""


def ensure_shapes_world(data_dir: str) -> None:
    if os.path.exists(os.path.join(data_dir, "world.json")):
        return
    from jaxlava.data.shapes import write_world
    print(f"generating the shapes world in {data_dir} ...", flush=True)
    write_world(data_dir)


def processor_for(cfg: RunConfig, model_config=None) -> LlavaProcessor:
    """The processor of `cfg.init` if it has one, else the shapes world's tokenizer with CLIP-style images."""
    if cfg.init and os.path.exists(os.path.join(cfg.init, "preprocessor_config.json")):
        return LlavaProcessor.from_pretrained(cfg.init)
    if cfg.preset != "shapes":
        raise FileNotFoundError(f"--init {cfg.init!r} has no preprocessor_config.json / tokenizer files")
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(os.path.join(cfg.data, "tokenizer"))
    mc = model_config
    return LlavaProcessor(tok, ImagePrep(mc.vision.image_size, pad_to_square=True), mc.num_image_tokens,
                          image_token_id=mc.image_token_index)


def model_config_for(cfg: RunConfig):
    from jaxlava.presets import get_preset, shapes_config
    rt = dict(param_dtype=cfg.param_dtype, dtype=cfg.compute_dtype, remat=cfg.remat, scan_layers=cfg.scan_layers)
    if cfg.init:
        from jaxlava.hf import load_config
        return load_config(cfg.init, **rt)[0]
    if cfg.preset == "shapes":
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(os.path.join(cfg.data, "tokenizer"))
        return shapes_config(len(tok), tok.convert_tokens_to_ids("<image>")).replace(**rt)
    return get_preset(cfg.preset).replace(**rt)


def build_model(cfg: RunConfig, mesh):
    """The base model, created or loaded directly sharded on `mesh`."""
    mc = model_config_for(cfg)
    if cfg.init:
        from jaxlava.hf import from_pretrained
        return from_pretrained(cfg.init, dtype=cfg.param_dtype, compute_dtype=cfg.compute_dtype, remat=cfg.remat,
                               scan_layers=cfg.scan_layers,
                               shardings=lambda st: sharding.state_shardings(st, mesh))
    from jaxlava.model import LlavaModel
    model = sharding.create_sharded(lambda: LlavaModel(mc, rngs=nnx.Rngs(cfg.seed)), mesh)
    if cfg.preset == "shapes":
        from jaxlava.shapes_vision import VisionPretrainConfig, ensure_pretrained
        ensure_pretrained(model, cfg.data, VisionPretrainConfig(steps=cfg.vision_pretrain_steps))
    return model


def batch_putter(mesh):
    """Host batch (numpy, this process's rows) -> global arrays sharded on the batch axis (host-only
    entries such as lists are dropped: the jitted steps take arrays only)."""
    from jaxlava.distributed import global_batch

    def put(batch: dict) -> dict:
        return {k: v for k, v in global_batch(batch, mesh).items() if isinstance(v, jax.Array)}
    return put


def resolve_steps(cfg: RunConfig, n_records: int, epochs: float) -> int:
    if cfg.steps is not None:
        return cfg.steps
    return max(1, int(epochs * n_records // cfg.batch_size))


def setup(cfg, mesh, kind: str, epochs: float):
    """What every trainer builds inside its mesh: (model, processor, train source of `kind`, total steps, optimizer)."""
    from jaxlava.data.storage import open_source
    from jaxlava.optim import make_optimizer
    model = build_model(cfg, mesh)
    processor = processor_for(cfg, model.config)
    source = open_source(cfg.data, kind, "train")
    total = resolve_steps(cfg, len(source), epochs)
    return model, processor, source, total, make_optimizer(cfg.optim, total)


def as_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)
