"""Supervised fine-tuning (LLaVA SFT / SFT+): full fine-tune of the projector and language model,
vision tower frozen, loss on assistant tokens only (template `v1`).

With no flags it trains the small `shapes` model on the embedded shapes world (generated on first
use) in a few minutes on a CPU.  `--preset llava-7b-224 --init HF_DIR --data DATA_DIR` uses the
paper's settings (lr 2e-5, cosine, warmup 3%, global batch 128, 3 epochs).  A RUN_DIR that already
holds checkpoints resumes exactly.

Examples:
  python train/sft.py
  python train/sft.py --steps 50 --out runs/sft_try --mesh
  python train/sft.py --preset llava-13b-336 --init ckpt/llava-13b --data data/sftplus --mesh fsdp=-1,tensor=4
"""
from __future__ import annotations

import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from jaxlava import distributed, hf, runs, sft, sharding  # noqa: E402
from jaxlava.cli import parse, preset_default  # noqa: E402
from jaxlava.data.pipeline import sft_batches  # noqa: E402
from jaxlava.data.storage import open_source  # noqa: E402
from jaxlava.optim import OptimConfig, init_state, make_schedule, make_train_step  # noqa: E402
from jaxlava.trainer import fit  # noqa: E402


@dataclasses.dataclass
class SFTConfig(runs.RunConfig):
    """LLaVA SFT."""
    out: str = "runs/sft"
    epochs: float = 3.0  # used when --steps is not given
    template: str = "v1"


PRESETS = {
    "shapes": SFTConfig(steps=400, batch_size=16, checkpoint_every=100, eval_every=100,
                        optim=OptimConfig(lr=2e-3, schedule="cosine", warmup_ratio=0.03, max_grad_norm=1.0)),
    "tiny": SFTConfig(preset="tiny", steps=20, batch_size=8, optim=OptimConfig(lr=1e-3)),
    "llava-7b-224": SFTConfig(preset="llava-7b-224", batch_size=128, epochs=3.0, compute_dtype="bfloat16",
                              remat=True, scan_layers=True, checkpoint_every=500,
                              optim=OptimConfig(lr=2e-5, schedule="cosine", warmup_ratio=0.03, max_grad_norm=1.0)),
    "llava-13b-336": SFTConfig(preset="llava-13b-336", batch_size=128, epochs=3.0, compute_dtype="bfloat16",
                               remat=True, scan_layers=True, checkpoint_every=500,
                               optim=OptimConfig(lr=2e-5, schedule="cosine", warmup_ratio=0.03, max_grad_norm=1.0)),
}


def eval_loss_fn(graphdef, frozen, source, processor, cfg, put, n_batches=2):
    batches = []
    it = sft_batches(source, processor, batch_size=cfg.batch_size, template=cfg.template, seed=0, shuffle=False,
                     num_epochs=1, shard_index=jax.process_index(), shard_count=jax.process_count())
    for _ in range(n_batches):
        try:
            batches.append(put(next(it)))
        except StopIteration:
            break
    loss_fn = jax.jit(lambda p, fr, b: sft.sft_loss(nnx.merge(graphdef, p, fr), b)[0])

    def evaluate(state):
        return {"eval_loss": float(np.mean([loss_fn(state["params"], frozen, b) for b in batches]))} if batches else {}
    return evaluate


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    cfg = parse(SFTConfig, argv, description=__doc__, default=preset_default(argv, PRESETS))
    distributed.maybe_initialize()
    if cfg.preset == "shapes" and not cfg.init:
        runs.ensure_shapes_world(cfg.data)
    mesh = sharding.make_mesh(cfg.mesh)
    with sharding.use_mesh(mesh):
        model, processor, source, total, tx = runs.setup(cfg, mesh, "conversation", cfg.epochs)
        graphdef, trainable, frozen = sft.split_trainable(model)
        state = init_state(trainable, tx, cfg.seed)

        def lag(params, frozen_, batch, rng):
            return sft.loss_and_grad(graphdef, params, frozen_, batch)

        step = jax.jit(make_train_step(lag, tx, cfg.optim.grad_accum, make_schedule(cfg.optim, total)),
                       donate_argnums=0)
        local_bs = cfg.batch_size // jax.process_count()
        data = sft_batches(source, processor, batch_size=local_bs, template=cfg.template, seed=cfg.seed,
                           num_workers=cfg.num_workers)
        put = runs.batch_putter(mesh)
        evaluate = None
        if os.path.exists(os.path.join(cfg.data, "conversation", "test")):
            evaluate = eval_loss_fn(graphdef, frozen, open_source(cfg.data, "conversation", "test"), processor,
                                    cfg, put)
        state, last = fit(run_dir=cfg.out, step_fn=step, state=state, frozen=frozen, data=data, total_steps=total,
                          checkpoint_every=cfg.checkpoint_every, config={"stage": "sft", **runs.as_dict(cfg)},
                          put=put, eval_fn=evaluate, eval_every=cfg.eval_every, keep=cfg.keep_checkpoints)
        model = nnx.merge(graphdef, state["params"], frozen)
        if distributed.is_main_process():
            hf.save_pretrained(model, os.path.join(cfg.out, "hf"))
            processor.save_pretrained(os.path.join(cfg.out, "hf"))
    print("final: " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in last.items()))
    print(f"model written to {os.path.join(cfg.out, 'hf')} (llava-hf layout)")
    return last


if __name__ == "__main__":
    main()
