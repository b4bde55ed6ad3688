"""The SFT run: its config, run presets and `run(cfg)` (data, model, mesh, the loop, the HF export).

The step and the eval metric are the stage's own (`jaxlava.sft`); `train/sft.py` is the command line.
"""
from __future__ import annotations

import dataclasses
import os

import jax
from flax import nnx

from jaxlava import distributed, hf, sft, sharding
from jaxlava.data.pipeline import sft_batches
from jaxlava.data.storage import open_source
from jaxlava.training import runs
from jaxlava.training.cli import parse, preset_default
from jaxlava.training.loop import Hook, fit
from jaxlava.training.metrics import format_row
from jaxlava.training.optim import OptimConfig, make_schedule
from jaxlava.training.step import init_state


@dataclasses.dataclass
class SFTConfig(runs.RunConfig):
    """LLaVA SFT."""
    out: str = "runs/sft"
    epochs: float = 3.0  # used when --steps is not given
    template: str = "v1"


RUN_PRESETS = {
    "shapes": SFTConfig(steps=400, batch_size=16, checkpoint_every=100, eval_every=100,
                        optim=OptimConfig(lr=2e-3, schedule="cosine", warmup_ratio=0.03, max_grad_norm=1.0)),
    "tiny": SFTConfig(preset="tiny", steps=20, batch_size=8, optim=OptimConfig(lr=1e-3)),
    "llava-7b-224": SFTConfig(preset="llava-7b-224", batch_size=128, epochs=3.0, compute_dtype="bfloat16",
                              remat=True, scan_layers=True, checkpoint_every=500,
                              optim=OptimConfig(lr=2e-5, schedule="cosine", warmup_ratio=0.03, max_grad_norm=1.0)),
}
RUN_PRESETS["llava-13b-336"] = dataclasses.replace(RUN_PRESETS["llava-7b-224"], preset="llava-13b-336")


def held_out_batches(cfg: SFTConfig, processor, put, n_batches: int = 2) -> list:
    """The first `n_batches` batches of the conversation test split (none when the data has no test split)."""
    if not os.path.exists(os.path.join(cfg.data, "conversation", "test")):
        return []
    it = sft_batches(open_source(cfg.data, "conversation", "test"), processor, batch_size=cfg.batch_size,
                     template=cfg.template, seed=0, shuffle=False, num_epochs=1, shard_index=jax.process_index(),
                     shard_count=jax.process_count())
    out = []
    for b in it:
        out.append(put(b))
        if len(out) == n_batches:
            break
    return out


def run(cfg: SFTConfig) -> dict:
    """Train; write RUN_DIR/hf (llava-hf layout + processor).  Returns the last metrics row."""
    distributed.maybe_initialize()
    mesh = sharding.make_mesh(cfg.mesh)
    with sharding.use_mesh(mesh):
        model, processor, source, total, tx = runs.setup(cfg, mesh, "conversation", cfg.epochs)
        graphdef, trainable, frozen = sft.split_trainable(model)
        state = init_state(trainable, tx, cfg.seed)
        step = jax.jit(sft.make_step(graphdef, tx, cfg.optim.grad_accum, make_schedule(cfg.optim, total)),
                       donate_argnums=0)
        data = sft_batches(source, processor, batch_size=cfg.batch_size // jax.process_count(),
                           template=cfg.template, seed=cfg.seed, num_workers=cfg.num_workers)
        put = runs.batch_putter(mesh)
        evaluate = sft.eval_loss(graphdef, frozen, held_out_batches(cfg, processor, put))
        state, last = fit(run_dir=cfg.out, step_fn=step, state=state, frozen=frozen, data=data, total_steps=total,
                          checkpoint_every=cfg.checkpoint_every, config={"stage": "sft", **runs.as_dict(cfg)},
                          put=put, hooks=[Hook(cfg.eval_every, lambda _, s: evaluate(s))],
                          keep=cfg.keep_checkpoints)
        model = nnx.merge(graphdef, state.params, frozen)
        if distributed.is_main_process():
            hf.save_pretrained(model, os.path.join(cfg.out, "hf"))
            processor.save_pretrained(os.path.join(cfg.out, "hf"))
    print("final: " + format_row(last))
    print(f"model written to {os.path.join(cfg.out, 'hf')} (llava-hf layout)")
    return last


def main(argv: list[str], description: str | None = None) -> dict:
    return run(parse(SFTConfig, argv, description=description, default=preset_default(argv, RUN_PRESETS)))
