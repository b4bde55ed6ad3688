"""The reward-model run: its config, run presets and `run(cfg)` (data, base model, adapter + head, the loop, the
PEFT export).  The step and the held-out accuracy are the stage's own (`jaxlava.rm`); `train/rm.py` is the
command line.
"""
from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np
from flax import nnx

from jaxlava import distributed, rm, sharding
from jaxlava.data.pipeline import OtherFacts, preference_batches, preference_padding
from jaxlava.data.storage import HeadSource, open_source
from jaxlava.lora import LoraConfig, init_lora
from jaxlava.model.heads import init_scalar_head
from jaxlava.peft_io import save_reward_model_adapter
from jaxlava.training import run_sft, runs
from jaxlava.training.cli import parse, preset_default
from jaxlava.training.loop import Hook, fit
from jaxlava.training.metrics import format_row
from jaxlava.training.optim import OptimConfig, make_schedule
from jaxlava.training.step import init_state


@dataclasses.dataclass
class RMConfig(runs.RunConfig):
    """Reward model training."""
    init: str | None = run_sft.DEFAULT_MODEL
    out: str = "runs/rm"
    no_facts: bool = False  # ablation: the reward prompt without the image's facts
    facts_first: bool = False
    """put the facts at the start of the first user turn, before the response, instead of in the reward prompt
    after it (the paper); PPO reads this from the run's config.json (docs/decisions.md 25)"""
    epochs: float = 1.0
    image_dropout: float = 0.0
    """blank each training pair's image with this probability, so that on those pairs only the facts decide
    (0: off, the paper); the held-out accuracy is then also reported with every image blanked"""
    image_pool: int = 0
    """coarse sight: the reward model sees each image at 1/N of its resolution (N x N pixel blocks averaged), in
    training, evaluation and PPO (which reads it from the run's config.json); 0 (off) or 1: the full image, the
    paper (docs/decisions.md 45)"""
    eval_pairs: int | None = None
    """held-out accuracy on the first N pairs of the test split only (None: all of them; the demo recipe takes 200)"""
    extra_data: tuple[str, ...] = ()
    """more training pairs: folders holding a preference/train split (such as data/onpolicy_pairs.py writes),
    read after --data's; the held-out pairs stay --data's"""
    lora: LoraConfig = dataclasses.field(default_factory=LoraConfig)


RUN_PRESETS = {
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
RUN_PRESETS["llava-7b-224"] = dataclasses.replace(RUN_PRESETS["llava-13b-336"], preset="llava-7b-224")


def prompt_layout(cfg: RMConfig) -> dict:
    """The reward prompt's facts settings of this run, as `preference_batches` keywords."""
    return {"with_facts": not cfg.no_facts, "facts_first": cfg.facts_first}


def held_out_sets(cfg: RMConfig, processor, put) -> dict[str, list]:
    """Held-out preference batches: with each pair's own facts, (with facts) with another pair's, and (with image
    dropout) with every image blanked."""
    source = open_source(cfg.data, "preference", "test")
    if cfg.eval_pairs is not None:
        source = HeadSource(source, cfg.eval_pairs)

    def batches(src):
        return list(preference_batches(src, processor, batch_size=min(cfg.batch_size, len(src)), seed=0,
                                       shuffle=False, num_epochs=1, buckets=cfg.buckets,
                                       shard_index=jax.process_index(), shard_count=jax.process_count(),
                                       **prompt_layout(cfg)))
    own = batches(source)
    sets = {"eval_accuracy": [put(b) for b in own]}
    if not cfg.no_facts and len(source) >= 2:
        sets["eval_accuracy_other_facts"] = [put(b) for b in batches(OtherFacts(source))]
    if cfg.image_dropout > 0:  # the same batches, every image blanked
        sets["eval_accuracy_blank_image"] = [
            put({**b, "pixel_values": np.zeros_like(b["pixel_values"])} if "pixel_values" in b else b) for b in own]
    return sets


def run(cfg: RMConfig) -> dict:
    """Train the adapter and head; write RUN_DIR/adapter (PEFT + reward_head).  Returns the last metrics row."""
    if not 0.0 <= cfg.image_dropout < 1.0:
        raise SystemExit(f"--image-dropout must be in [0, 1); got {cfg.image_dropout}")
    if cfg.image_pool < 0:
        raise SystemExit(f"--image-pool must be 0 (off) or a divisor of the image size; got {cfg.image_pool}")
    distributed.maybe_initialize()
    run_sft.ensure_sft(cfg)
    mesh = sharding.make_mesh(cfg.mesh)
    with sharding.use_mesh(mesh):
        model, processor, source, total, tx = runs.setup(cfg, mesh, "preference", cfg.epochs,
                                                             extra=tuple(cfg.extra_data))
        if cfg.extra_data and distributed.is_main_process():
            print(f"{len(source)} training pairs: " + ", ".join(f"{len(s)} of {d}" for s, d in zip(
                source.sources, (cfg.data, *cfg.extra_data))), flush=True)
        graphdef, base = nnx.split(model)
        key = jax.random.key(cfg.seed)
        trainable = {"lora": init_lora(model.config, cfg.lora, key),
                     "head": init_scalar_head(jax.random.fold_in(key, 1), model.config.text.hidden_size)}
        state = init_state(trainable, tx, cfg.seed)
        step = jax.jit(rm.make_step(graphdef, cfg.lora, tx, cfg.optim.grad_accum, make_schedule(cfg.optim, total),
                                    image_dropout=cfg.image_dropout, image_pool=cfg.image_pool), donate_argnums=0)
        data = preference_batches(source, processor, batch_size=cfg.batch_size // jax.process_count(),
                                  seed=cfg.seed, num_workers=cfg.num_workers, buckets=cfg.buckets,
                                  **prompt_layout(cfg))
        put = runs.batch_putter(mesh, preference_padding(processor))
        evaluate = rm.eval_accuracy(graphdef, base, cfg.lora, held_out_sets(cfg, processor, put), cfg.image_pool)
        state, last = fit(run_dir=cfg.out, step_fn=step, state=state, frozen=base, data=data, total_steps=total,
                          checkpoint_every=cfg.checkpoint_every, config={"stage": "rm", **runs.as_dict(cfg)},
                          put=put, hooks=[Hook(cfg.eval_every, lambda _, s: evaluate(s))],
                          keep=cfg.keep_checkpoints, stop_after=cfg.stop_after)
        params = jax.device_get(distributed.host_copy(state.params))  # a collective; process 0 writes
        if distributed.is_main_process():
            save_reward_model_adapter(os.path.join(cfg.out, "adapter"), params["lora"], cfg.lora, params["head"],
                                      base_model_name_or_path=cfg.init)
    print("final: " + format_row(last))
    return last


def main(argv: list[str], description: str | None = None) -> dict:
    return run(parse(RMConfig, argv, description=description, default=preset_default(argv, RUN_PRESETS)))
