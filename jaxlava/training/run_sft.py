"""The SFT run: its config, run presets and `run(cfg)` (data, model, mesh, the loop, the HF export).

The step and the eval metric are the stage's own (`jaxlava.sft`); `train/sft.py` is the command line.
"""
from __future__ import annotations

import dataclasses
import os

import jax
from flax import nnx

from jaxlava import distributed, hf, sft, sharding
from jaxlava.data.pipeline import sft_batches, sft_padding
from jaxlava.data.storage import open_source
from jaxlava.lora import LoraConfig, init_lora, lora_shardings
from jaxlava.peft_io import save_adapter
from jaxlava.training import runs
from jaxlava.training.cli import parse, preset_default
from jaxlava.training.loop import Hook, fit
from jaxlava.training.metrics import format_row
from jaxlava.training.optim import OptimConfig, make_schedule
from jaxlava.training.step import init_state


DEFAULT_MODEL = "runs/sft/hf"  # where the default SFT run writes its model, and later stages look for it


@dataclasses.dataclass
class SFTConfig(runs.RunConfig):
    """LLaVA SFT."""
    out: str = "runs/sft"
    epochs: float = 3.0  # used when --steps is not given
    template: str = "v1"
    split: str = "train"
    """conversation split to train on; the held-out one is `test` for `train`, else SPLIT_test (the shapes
    world's grounding stage: `--split ground`, docs/decisions.md 24)"""
    # train a LoRA adapter on the frozen --init model instead of the full model (the RL-init policy that PPO
    # starts from, spec §4.10); writes RUN_DIR/adapter in PEFT format instead of RUN_DIR/hf
    lora: bool = False
    adapter: LoraConfig = dataclasses.field(default_factory=LoraConfig)
    """The adapter of --lora (rank, alpha, dropout, target projections)."""


RUN_PRESETS = {
    "shapes": SFTConfig(steps=400, batch_size=16, checkpoint_every=100, eval_every=100,
                        optim=OptimConfig(lr=2e-3, schedule="cosine", warmup_ratio=0.03, max_grad_norm=1.0)),
    "tiny": SFTConfig(preset="tiny", steps=20, batch_size=8, optim=OptimConfig(lr=1e-3)),
    "llava-7b-224": SFTConfig(preset="llava-7b-224", batch_size=128, epochs=3.0, compute_dtype="bfloat16",
                              remat=True, scan_layers=True, checkpoint_every=500,
                              optim=OptimConfig(lr=2e-5, schedule="cosine", warmup_ratio=0.03, max_grad_norm=1.0)),
}
RUN_PRESETS["llava-13b-336"] = dataclasses.replace(RUN_PRESETS["llava-7b-224"], preset="llava-13b-336")

# `--lora` (the RL-init stage): the paper's P3 settings (lr 1e-4, cosine, warmup 3%, clip 0.3, r 64 / alpha 16,
# batch 128, 1 epoch) and the shapes miniature
LORA_PRESETS = {
    "shapes": SFTConfig(lora=True, init=DEFAULT_MODEL, out="runs/rlinit", steps=150, batch_size=16,
                        checkpoint_every=50, eval_every=50, adapter=LoraConfig(r=16, alpha=32),
                        optim=OptimConfig(lr=5e-4, schedule="cosine", warmup_ratio=0.03, max_grad_norm=1.0)),
    "llava-7b-224": SFTConfig(preset="llava-7b-224", lora=True, batch_size=128, epochs=1.0,
                              compute_dtype="bfloat16", remat=True, scan_layers=True, checkpoint_every=500,
                              adapter=LoraConfig(r=64, alpha=16),
                              optim=OptimConfig(lr=1e-4, schedule="cosine", warmup_ratio=0.03, max_grad_norm=0.3)),
}
LORA_PRESETS["llava-13b-336"] = dataclasses.replace(LORA_PRESETS["llava-7b-224"], preset="llava-13b-336")


def ensure_sft(cfg) -> None:
    """The SFT model a later stage starts from (`cfg.init`): the default one (runs/sft/hf) is trained when missing;
    a path the user gave must exist, unless --build-missing asks to train SFT into its parent folder."""
    if not cfg.init or os.path.exists(os.path.join(cfg.init, "config.json")):
        return
    if not (cfg.build_missing or cfg.init == DEFAULT_MODEL) or os.path.basename(cfg.init.rstrip("/")) != "hf":
        raise FileNotFoundError(f"--init {cfg.init}: no model there (no config.json). Train SFT first "
                                "(python train/sft.py --out DIR, then --init DIR/hf), or check the path")
    print(f"no SFT model at {cfg.init}: training it first", flush=True)
    preset = RUN_PRESETS.get(cfg.preset, SFTConfig(preset=cfg.preset))
    run(dataclasses.replace(preset, data=cfg.data, out=os.path.dirname(cfg.init.rstrip("/")),
                            build_missing=cfg.build_missing, mesh=cfg.mesh))


def held_out_split(split: str) -> str:
    return "test" if split == "train" else f"{split}_test"


def held_out_batches(cfg: SFTConfig, processor, put, n_batches: int = 2) -> list:
    """The first `n_batches` batches of the held-out split of `cfg.split` (none when the data has none)."""
    held = held_out_split(cfg.split)
    if not os.path.exists(os.path.join(cfg.data, "conversation", held)):
        return []
    it = sft_batches(open_source(cfg.data, "conversation", held), processor, batch_size=cfg.batch_size,
                     template=cfg.template, seed=0, shuffle=False, num_epochs=1, shard_index=jax.process_index(),
                     shard_count=jax.process_count(), buckets=cfg.buckets)
    out = []
    for b in it:
        out.append(put(b))
        if len(out) == n_batches:
            break
    return out


def lora_shardings_for(model, lora_cfg: LoraConfig, mesh):
    shapes = jax.eval_shape(lambda: init_lora(model.config, lora_cfg, jax.random.key(0)))
    return lora_shardings(shapes, mesh)


def write_outputs(cfg: SFTConfig, model, params, processor) -> None:
    """RUN_DIR/hf (the model in the llava-hf layout, with its processor), or RUN_DIR/adapter (PEFT) with --lora."""
    if cfg.lora:
        save_adapter(os.path.join(cfg.out, "adapter"), jax.device_get(params), cfg.adapter,
                     base_model_name_or_path=cfg.init)
    else:
        hf.save_pretrained(model, os.path.join(cfg.out, "hf"))
        processor.save_pretrained(os.path.join(cfg.out, "hf"))


def run(cfg: SFTConfig) -> dict:
    """Train; write RUN_DIR/hf (llava-hf layout + processor), or with --lora RUN_DIR/adapter (PEFT).
    Returns the last metrics row."""
    distributed.maybe_initialize()
    if cfg.lora:
        if not cfg.init:
            raise ValueError("--lora trains an adapter on a frozen model: give it with --init (an SFT model)")
        ensure_sft(cfg)
    mesh = sharding.make_mesh(cfg.mesh)
    with sharding.use_mesh(mesh):
        model, processor, source, total, tx = runs.setup(cfg, mesh, "conversation", cfg.epochs, cfg.split)
        lora_cfg = cfg.adapter if cfg.lora else None
        if cfg.lora:
            graphdef, frozen = nnx.split(model)
            trainable = jax.device_put(init_lora(model.config, cfg.adapter, jax.random.key(cfg.seed)),
                                       lora_shardings_for(model, cfg.adapter, mesh))
        else:
            graphdef, trainable, frozen = sft.split_trainable(model)
        state = init_state(trainable, tx, cfg.seed)
        step = jax.jit(sft.make_step(graphdef, tx, cfg.optim.grad_accum, make_schedule(cfg.optim, total), lora_cfg),
                       donate_argnums=0)
        data = sft_batches(source, processor, batch_size=cfg.batch_size // jax.process_count(),
                           template=cfg.template, seed=cfg.seed, num_workers=cfg.num_workers, buckets=cfg.buckets)
        put = runs.batch_putter(mesh, sft_padding(processor))
        evaluate = sft.eval_loss(graphdef, frozen, held_out_batches(cfg, processor, put), lora_cfg)
        state, last = fit(run_dir=cfg.out, step_fn=step, state=state, frozen=frozen, data=data, total_steps=total,
                          checkpoint_every=cfg.checkpoint_every,
                          config={"stage": "rlinit" if cfg.lora else "sft", **runs.as_dict(cfg)},
                          put=put, hooks=[Hook(cfg.eval_every, lambda _, s: evaluate(s))],
                          keep=cfg.keep_checkpoints, stop_after=cfg.stop_after)
        params = distributed.host_copy(state.params)  # every process takes part; process 0 writes
        frozen_whole = distributed.host_copy(frozen) if not cfg.lora else None
        if distributed.is_main_process():
            write_outputs(cfg, nnx.merge(graphdef, params, frozen_whole) if not cfg.lora else None, params,
                          processor)
    print("final: " + format_row(last))
    out = os.path.join(cfg.out, "adapter" if cfg.lora else "hf")
    print(f"{'adapter' if cfg.lora else 'model'} written to {out} ({'PEFT' if cfg.lora else 'llava-hf'} layout)")
    return last


def main(argv: list[str], description: str | None = None) -> dict:
    presets = LORA_PRESETS if "--lora" in argv else RUN_PRESETS
    return run(parse(SFTConfig, argv, description=description, default=preset_default(argv, presets)))
