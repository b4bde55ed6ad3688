"""Training-step throughput: the SFT step, the RM step and the PPO update against the f32 matmul ceiling, CPU.

    JAX_PLATFORMS=cpu .venv/bin/python bench/train_step.py --out bench/results/train_step.json

Each case builds a random-weight model, the stage's own jitted step (`jaxlava.sft.make_step`, `jaxlava.rm.make_step`,
`jaxlava.ppo.make_update_step`, donated state, AdamW with global-norm clipping) and a synthetic batch of the stage's
shapes.  FLOPs per step are XLA's cost analysis of the compiled step (`jit(step).lower(...).compile()`); the layer
stacks run unrolled (`scan_layers=False`, the default), so every layer is counted, and the timed program is the same
one.  `fraction` = (FLOPs per step / seconds per step) / the f32 matmul ceiling (a jitted 2048^3 matmul), the best
of its measurements at the start of the run and just before and after the case's timed steps (the load drifts).
`compiles_after_warmup` counts XLA compilations (`compile_count()`) over the timed steps (0 means the step never
recompiles after its first call).  For the SFT cases the same weights are exported with
`jaxlava.save_pretrained`, loaded into transformers' `LlavaForConditionalGeneration` (PyTorch, fp32) and trained on the
same batch: forward + backward + `torch.optim.AdamW` (vision tower frozen, gradient clipping at 1.0, as in jaxlava),
its steps alternating with jaxlava's in blocks (`--block`); `torch_ratio` = torch seconds / jaxlava seconds per step
(medians; `torch_ratio_best` from the best steps; `torch_fraction`: torch's step at jaxlava's FLOP count, over the
ceiling).
"""
from __future__ import annotations

import dataclasses
import os
import statistics
import sys
import time
from typing import Annotated

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import tyro  # noqa: E402
from flax import nnx  # noqa: E402

from common import machine, matmul_ceiling, param_count, table, timed, transformers_twin, write_json, \
    xla_flops  # noqa: E402
from jaxlava import ppo, rm, sft  # noqa: E402
from jaxlava.config import LlavaConfig, TextConfig, VisionConfig  # noqa: E402
from jaxlava.data.templates import IGNORE_INDEX  # noqa: E402
from jaxlava.lora import LoraConfig, init_lora  # noqa: E402
from jaxlava.model import LlavaModel  # noqa: E402
from jaxlava.model.heads import init_scalar_head  # noqa: E402
from jaxlava.presets import get_preset  # noqa: E402
from jaxlava.training.metrics import compile_count  # noqa: E402
from jaxlava.training.optim import OptimConfig, make_optimizer, make_schedule  # noqa: E402
from jaxlava.training.step import init_state  # noqa: E402
from jaxlava.hostenv import reexec_with_hugepages  # noqa: E402

OPTIM = OptimConfig(lr=1e-4, schedule="constant_with_warmup", warmup_steps=0, max_grad_norm=1.0)


def m150_config() -> LlavaConfig:
    """About 150M parameters: CLIP 6 x 384 at 224 px / patch 16 (196 image tokens), LLaMA 12 x 768, vocab 32000."""
    return LlavaConfig(vision=VisionConfig(hidden_size=384, intermediate_size=1536, num_hidden_layers=6,
                                           num_attention_heads=6, image_size=224, patch_size=16,
                                           projection_dim=384),
                       text=TextConfig(vocab_size=32000, hidden_size=768, intermediate_size=2048,
                                       num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=2048),
                       image_token_index=31999, projector_type="mlp2x_gelu")


# case -> (model, stage, batch rows, sequence length (SFT/RM) or query + response widths (PPO), LoRA rank)
CASES = {
    "shapes_sft": ("shapes", "sft", 16, 256, None),  # the shapes SFT preset: batch 16, 256-token bucket
    "shapes_rm": ("shapes", "rm", 8, 256, 64),  # shapes RM preset: 8 pairs, LoRA r 64
    # the shapes PPO preset: step batch 16, a 191-token query (128 + the image's 64 placeholders - 1) + 40 slots
    "shapes_ppo_update": ("shapes", "ppo", 16, (191, 40), 16),
    "m150_sft": ("m150", "sft", 2, 512, None),
    "m150_rm": ("m150", "rm", 2, 512, 64),
    "m150_ppo_update": ("m150", "ppo", 2, (384, 128), 64),
}
DEFAULT_CASES = "shapes_sft,shapes_rm,shapes_ppo_update,m150_sft"


def make_model(name: str) -> LlavaModel:
    cfg = get_preset("shapes") if name == "shapes" else m150_config()
    return LlavaModel(cfg, rngs=nnx.Rngs(0))


def token_rows(cfg: LlavaConfig, rows: int, length: int, rng) -> np.ndarray:
    """[rows, length]: BOS, 8 text tokens, the image placeholders, text to the end (no padding)."""
    n_img = cfg.num_image_tokens
    vocab = min(cfg.text.vocab_size, cfg.image_token_index) - 1
    text = rng.integers(3, vocab, (rows, length - 9 - n_img))
    return np.concatenate([np.ones((rows, 1)), rng.integers(3, vocab, (rows, 8)), np.full((rows, n_img),
                           cfg.image_token_index), text], axis=1).astype(np.int32)


def pixels(cfg: LlavaConfig, rows: int, rng) -> np.ndarray:
    return rng.standard_normal((rows, 3, cfg.vision.image_size, cfg.vision.image_size)).astype(np.float32)


def sft_setup(model, rows, length, _rank, tx, rng):
    cfg = model.config
    ids = token_rows(cfg, rows, length, rng)
    labels = ids.copy()
    labels[:, :9 + cfg.num_image_tokens] = IGNORE_INDEX  # the loss is on the text after the image
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids), "labels": labels,
             "pixel_values": pixels(cfg, rows, rng)}
    graphdef, trainable, frozen = sft.split_trainable(model)
    return sft.make_step(graphdef, tx, 1, make_schedule(OPTIM, 1000)), trainable, frozen, batch


def rm_setup(model, rows, length, rank, tx, rng):
    cfg = model.config
    lora = LoraConfig(r=rank, alpha=2.0 * rank)
    ids = token_rows(cfg, 2 * rows, length, rng).reshape(rows, 2, length)
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids), "pixel_values": pixels(cfg, rows, rng),
             "choice": rng.integers(0, 2, rows).astype(np.int32)}
    graphdef, frozen = nnx.split(model)
    trainable = {"lora": init_lora(cfg, lora, jax.random.key(1)),
                 "head": init_scalar_head(jax.random.key(2), cfg.text.hidden_size)}
    return rm.make_step(graphdef, lora, tx, 1, make_schedule(OPTIM, 1000)), trainable, frozen, batch


def ppo_setup(model, rows, widths, rank, tx, rng):
    cfg = model.config
    tq, n = widths
    lora = LoraConfig(r=rank, alpha=2.0 * rank)
    ids = token_rows(cfg, rows, tq + n, rng)
    px = pixels(cfg, rows, rng)
    f32 = lambda: rng.standard_normal((rows, n)).astype(np.float32)  # noqa: E731
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids), "value_input_ids": ids,
             "value_attention_mask": np.ones_like(ids), "pixel_values": px, "reward_pixel_values": px,
             "response": ids[:, tq:], "response_mask": np.ones((rows, n), np.int32),
             "old_logprobs": -np.abs(f32()) - 5.0, "old_values": f32(), "advantages": f32(), "returns": f32()}
    graphdef, base = nnx.split(model)
    graphs = ppo.Graphs(graphdef, graphdef, lora, lora)
    params = {"policy": init_lora(cfg, lora, jax.random.key(1)), "value": init_lora(cfg, lora, jax.random.key(2)),
              "value_head": init_scalar_head(None, cfg.text.hidden_size, zero=True)}
    step = ppo.make_update_step(graphs, ppo.LossConfig(), tx, 1)
    return step, params, {"policy_base": base, "value_base": base}, batch


SETUPS = {"sft": sft_setup, "rm": rm_setup, "ppo": ppo_setup}


def tokens_of(batch: dict) -> int:
    return int(np.asarray(batch["attention_mask"]).sum())


def jax_runner(step_fn, tx, trainable, frozen, batch):
    """Compile (AOT, which also fills the jit cache), read the FLOPs, run one warm-up step.  Returns (facts, `one()`:
    the seconds of one more step, `loss()`: the last step's loss)."""
    state = init_state(trainable, tx)
    batch = jax.tree.map(jnp.asarray, batch)
    step = jax.jit(step_fn, donate_argnums=0)
    compiled, compile_s = timed(lambda: step.lower(state, frozen, batch).compile())
    box = list(step(state, frozen, batch))
    facts = {"flops_per_step": xla_flops(compiled), "compile_s": compile_s, "loss_first": float(box[1].loss)}

    def one() -> float:
        t = time.perf_counter()
        box[:] = step(box[0], frozen, batch)
        jax.block_until_ready((box[0].params, box[1].loss))
        return time.perf_counter() - t
    return facts, one, lambda: float(box[1].loss)


def torch_runner(hf, batch: dict):
    """transformers + torch AdamW on the same weights and batch (forward, backward, clip, update), one warm-up
    step.  Returns (facts, `one()`: the seconds of one more step)."""
    import torch
    hf.train()
    for p in hf.model.vision_tower.parameters():
        p.requires_grad_(False)
    params = [p for p in hf.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=OPTIM.lr, betas=(OPTIM.b1, OPTIM.b2), eps=OPTIM.eps, weight_decay=0.0)
    tb = {k: torch.tensor(np.asarray(v)).long() if k != "pixel_values" else torch.tensor(v) for k, v in batch.items()}

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        loss = hf(input_ids=tb["input_ids"], attention_mask=tb["attention_mask"], pixel_values=tb["pixel_values"],
                  labels=tb["labels"]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, OPTIM.max_grad_norm)
        opt.step()
        return float(loss.detach())

    first_loss, warm_s = timed(step)
    return {"torch_first_step_s": warm_s, "torch_loss_first": first_loss}, lambda: timed(step)[1]


def run_case(name: str, args, peak: float) -> dict:
    model_name, stage, rows, length, rank = CASES[name]
    model = make_model(model_name)
    tx = make_optimizer(OPTIM, 1000)
    step_fn, trainable, frozen, batch = SETUPS[stage](model, rows, length, rank, tx, np.random.default_rng(0))
    r = {"model": model_name, "stage": stage, "parameters": param_count(nnx.state(model, nnx.Param)),
         "trainable_parameters": param_count(trainable), "batch_rows": rows, "tokens_per_step": tokens_of(batch),
         "scan_layers": model.config.scan_layers}
    print(f"\n== {name}: {r['parameters'] / 1e6:.1f}M parameters ({r['trainable_parameters'] / 1e6:.2f}M trained), "
          f"{rows} rows, {r['tokens_per_step']} tokens per step", flush=True)
    # the twin is made first: the jitted step donates (deletes) the arrays the model started with
    hf = transformers_twin(model) if stage == "sft" and args.torch else None
    facts, jax_one, loss = jax_runner(step_fn, tx, trainable, frozen, batch)
    r.update(facts)
    torch_one = None
    if hf is not None:
        torch_facts, torch_one = torch_runner(hf, batch)
        r.update(torch_facts)
    # jaxlava and torch steps alternate in blocks, so that both see the same (shared, drifting) machine load, while
    # each side's steps run back to back as in training (a step that directly follows the other library's runs
    # slower); the ceiling is measured again around them and the best of those measurements is the case's ceiling
    ceilings = [peak, matmul_ceiling()]
    c0, times, torch_times = compile_count(), [], []
    while len(times) < args.steps:
        n = min(args.block, args.steps - len(times))
        times += [jax_one() for _ in range(n)]
        if torch_one is not None:
            torch_times += [torch_one() for _ in range(n)]
    compiles = compile_count() - c0
    ceilings.append(matmul_ceiling())
    peak = max(ceilings)
    r.update(seconds_per_step=statistics.median(times), best_s=min(times), all_s=times,
             compiles_after_warmup=compiles, loss_last=loss(), ceiling_flops_per_s=peak,
             ceilings_measured=ceilings)
    r["achieved_flops_per_s"] = r["flops_per_step"] / r["seconds_per_step"]
    r["fraction"] = r["achieved_flops_per_s"] / peak
    r["tokens_per_s"] = r["tokens_per_step"] / r["seconds_per_step"]
    if torch_times:
        r.update(torch_seconds_per_step=statistics.median(torch_times), torch_best_s=min(torch_times),
                 torch_all_s=torch_times, torch_ratio=statistics.median(torch_times) / r["seconds_per_step"],
                 torch_ratio_best=min(torch_times) / min(times),
                 torch_fraction=r["flops_per_step"] / statistics.median(torch_times) / peak)
    return r


@dataclasses.dataclass(kw_only=True)
class TrainStepArgs:
    """Which training steps to time, and how."""
    out: Annotated[str | None, tyro.conf.arg(metavar="PATH")] = None
    """write the results as JSON here"""
    cases: Annotated[str, tyro.conf.arg(help="comma-separated subset of: " + ", ".join(CASES))] = DEFAULT_CASES
    steps: int = 10
    """timed steps per case, after the compile and one warm-up step (SFT: as many transformers steps, alternating);
    the median is reported"""
    block: int = 3
    """with the transformers comparison: steps of one side run back to back in blocks of this many, then the other
    side's (1 alternates every step)"""
    torch: bool = True
    """run the transformers comparison for the SFT cases (--no-torch skips it)"""


def main(argv=None):
    args = tyro.cli(TrainStepArgs, args=argv, prog="bench/train_step.py", description=__doc__)
    import torch
    torch.set_num_threads(os.cpu_count())
    compile_count()  # start counting
    peak = matmul_ceiling()
    print(f"f32 matmul ceiling {peak / 1e9:.0f} GFLOP/s, torch threads {torch.get_num_threads()}", flush=True)
    results = {"_machine": {**machine(), "matmul_flops": peak, "steps": args.steps, "command": " ".join(sys.argv),
                            "flops_source": "XLA cost_analysis of the compiled step, unrolled layers"}}
    rows = []
    for name in args.cases.split(","):
        r = results[name] = run_case(name, args, peak)
        rows.append({"case": name, **{k: v for k, v in r.items() if not isinstance(v, (list, dict))}})
        print(table(rows[-1:], [k for k in rows[-1] if k not in ("model", "stage", "scan_layers")]), flush=True)
    cols = ["case", "parameters", "tokens_per_step", "seconds_per_step", "flops_per_step", "fraction", "compile_s",
            "compiles_after_warmup", "torch_seconds_per_step", "torch_ratio", "torch_ratio_best", "torch_fraction"]
    print("\n" + table(rows, cols))
    results["_machine"]["load_avg_end"] = os.getloadavg()
    results["_machine"]["matmul_flops_end"] = matmul_ceiling()
    write_json(args.out, results)


if __name__ == "__main__":
    reexec_with_hugepages()
    main()
