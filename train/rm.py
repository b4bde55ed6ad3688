"""Fact-augmented reward model (LLaVA-RLHF §3): the SFT model + LoRA + a scalar head read at the last token.

Each preference pair is scored twice (output_1, output_2), each time as the conversation with the candidate
answer followed by the reward prompt, whose Accurate criterion lists the image's facts (shuffled at each
use).  Loss: BCE on the score difference + 1e-3 * |mean(r0 + r1)|.  `--no-facts` trains the ablation
without facts.  Held-out accuracy is logged as `eval_accuracy` in metrics.jsonl, and, with facts, as
`eval_accuracy_other_facts` with every held-out pair given another pair's facts: if the two are close, the
model does not use the facts (docs/decisions.md 10).

With no flags it trains on the shapes world, starting from runs/sft/hf (running `train/sft.py` first if
that model is missing).  The adapter is written in PEFT format with the head beside it (RUN_DIR/adapter).

Examples:
  python train/rm.py
  python train/rm.py --no-facts --out runs/rm_nofacts
  python train/rm.py --preset llava-13b-336 --init runs/sft13b/hf --data data/preference --mesh
"""
from __future__ import annotations

import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from jaxlava import distributed, rm, runs, sharding  # noqa: E402
from jaxlava.cli import parse, preset_default  # noqa: E402
from jaxlava.data.pipeline import OtherFacts, preference_batches  # noqa: E402
from jaxlava.data.storage import open_source  # noqa: E402
from jaxlava.lora import LoraConfig, init_lora, make_lora  # noqa: E402
from jaxlava.model.heads import init_scalar_head  # noqa: E402
from jaxlava.optim import OptimConfig, init_state, make_schedule, make_train_step  # noqa: E402
from jaxlava.trainer import fit  # noqa: E402


@dataclasses.dataclass
class RMConfig(runs.RunConfig):
    """Reward model training."""
    init: str | None = "runs/sft/hf"
    out: str = "runs/rm"
    no_facts: bool = False  # ablation: the reward prompt without the image's facts
    epochs: float = 1.0
    lora: LoraConfig = dataclasses.field(default_factory=LoraConfig)


PRESETS = {
    "shapes": RMConfig(steps=200, batch_size=8, checkpoint_every=100, eval_every=50,
                       lora=LoraConfig(r=64, alpha=128, dropout=0.0),
                       optim=OptimConfig(lr=5e-4, schedule="constant_with_warmup", warmup_ratio=0.03,
                                         max_grad_norm=1.0)),
    "llava-13b-336": RMConfig(preset="llava-13b-336", batch_size=32, epochs=1.0, compute_dtype="bfloat16",
                              remat=True, scan_layers=True, checkpoint_every=50, eval_every=50,
                              lora=LoraConfig(r=64, alpha=16, dropout=0.0),
                              optim=OptimConfig(lr=2e-5, schedule="constant_with_warmup", warmup_ratio=0.03,
                                                max_grad_norm=0.3)),
}
PRESETS["llava-7b-224"] = dataclasses.replace(PRESETS["llava-13b-336"], preset="llava-7b-224")


def accuracy_fn(graphdef, base, processor, source, cfg, put, lora_cfg):
    """Held-out accuracy (`eval_accuracy`); with facts, also with each pair given another pair's facts
    (`eval_accuracy_other_facts`): near `eval_accuracy` means the model judges without reading the facts."""
    def batches(src):
        it = preference_batches(src, processor, batch_size=min(cfg.batch_size, len(src)),
                                with_facts=not cfg.no_facts, seed=0, shuffle=False, num_epochs=1,
                                shard_index=jax.process_index(), shard_count=jax.process_count())
        return [put(b) for b in it]
    sets = {"eval_accuracy": batches(source)}
    if not cfg.no_facts and len(source) >= 2:
        sets["eval_accuracy_other_facts"] = batches(OtherFacts(source))

    @jax.jit
    def scores(params, base_, b):
        model = nnx.merge(graphdef, base_)
        lora = make_lora(params["lora"], lora_cfg)
        r = rm.pair_scores(model, params["head"], b, lora=lora)
        return rm.preference_loss(r, b["choice"])[1]["accuracy"]

    def evaluate(state):
        return {name: float(np.mean([float(scores(state["params"], base, b)) for b in bs]))
                for name, bs in sets.items() if bs}
    return evaluate


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    cfg = parse(RMConfig, argv, description=__doc__, default=preset_default(argv, PRESETS))
    distributed.maybe_initialize()
    if cfg.preset == "shapes":
        runs.ensure_shapes_world(cfg.data)
        if not os.path.exists(os.path.join(cfg.init, "config.json")):
            print(f"no SFT model at {cfg.init}: running train/sft.py first", flush=True)
            from train.sft import main as sft_main
            sft_main(["--data", cfg.data, "--out", os.path.dirname(cfg.init.rstrip("/"))])
    mesh = sharding.make_mesh(cfg.mesh)
    with sharding.use_mesh(mesh):
        model, processor, source, total, tx = runs.setup(cfg, mesh, "preference", cfg.epochs)
        graphdef, base = nnx.split(model)
        key = jax.random.key(cfg.seed)
        trainable = {"lora": init_lora(model.config, cfg.lora, key),
                     "head": init_scalar_head(jax.random.fold_in(key, 1), model.config.text.hidden_size)}
        state = init_state(trainable, tx, cfg.seed)

        def lag(params, base_, batch, rng):
            return rm.loss_and_grad(graphdef, base_, params, batch, lora_scale=cfg.lora.scale,
                                    lora_dropout=cfg.lora.dropout, rng=rng if cfg.lora.dropout > 0 else None)

        step = jax.jit(make_train_step(lag, tx, cfg.optim.grad_accum, make_schedule(cfg.optim, total)),
                       donate_argnums=0)
        data = preference_batches(source, processor, batch_size=cfg.batch_size // jax.process_count(),
                                  with_facts=not cfg.no_facts, seed=cfg.seed, num_workers=cfg.num_workers)
        put = runs.batch_putter(mesh)
        evaluate = accuracy_fn(graphdef, base, processor, open_source(cfg.data, "preference", "test"), cfg, put,
                               cfg.lora)
        state, last = fit(run_dir=cfg.out, step_fn=step, state=state, frozen=base, data=data, total_steps=total,
                          checkpoint_every=cfg.checkpoint_every, config={"stage": "rm", **runs.as_dict(cfg)},
                          put=put, eval_fn=evaluate, eval_every=cfg.eval_every, keep=cfg.keep_checkpoints)
        if distributed.is_main_process():
            from jaxlava.peft_io import save_reward_model_adapter
            save_reward_model_adapter(os.path.join(cfg.out, "adapter"), jax.device_get(state["params"]["lora"]),
                                      cfg.lora, jax.device_get(state["params"]["head"]),
                                      base_model_name_or_path=cfg.init)
    print("final: " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in last.items()))
    return last


if __name__ == "__main__":
    main()
