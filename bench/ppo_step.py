"""One PPO step of the shapes preset, split into generate, score, update and host work, CPU.

    JAX_PLATFORMS=cpu .venv/bin/python bench/ppo_step.py --out bench/results/ppo_step.json

The inputs are built once and cached in --work (like tests/test_ppo_run.py's `stack`): a small shapes world, a
3-step SFT model, a 3-step RL-init adapter (LoRA r 4) and a 3-step reward model (LoRA r 4); quality is not the
point.  The step is `jaxlava.training.run_ppo.make_ppo_step` with the `shapes` run preset (rollout batch 32, step
batch 16, 2 PPO epochs = 4 updates, 40 response slots, queries padded to 191 = --max-prompt-len 128 with the image
counted once, reward inputs to 512), one device.
The phases are the rollout's own timers: generate (`jaxlava.generate`, tokens back on the host), score (reference,
values and reward model in one jitted pass), update (the minibatch updates); host = the rest of the step's wall time
(decoding the responses, correctness, building the reward-model prompts, device transfers).  The first step
(compilation) is reported apart; the others give medians.

The generate phase is compared with bench/decode.py's roofline (`common.decode_roofline`) at the rollout batch:
the prefill's FLOPs at the f32 matmul ceiling plus, per decode step, max(weights + live KV cache bytes / copy
bandwidth, FLOPs / matmul ceiling), for the real prompt length and the number of decode steps the sampler ran
(the longest response of the batch), both ceilings measured in the same run.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, replace
from typing import Annotated

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import tyro  # noqa: E402
from flax import nnx  # noqa: E402

from common import copy_bandwidth, decode_roofline, machine, matmul_ceiling, param_count, table, \
    write_json  # noqa: E402
from jaxlava import distributed, ppo, sharding  # noqa: E402
from jaxlava.data.pipeline import ppo_prompt_batches  # noqa: E402
from jaxlava.data.storage import open_source  # noqa: E402
from jaxlava.training import ppo_roles, rollout, run_ppo, runs  # noqa: E402
from jaxlava.training.metrics import compile_count  # noqa: E402
from jaxlava.training.optim import make_optimizer  # noqa: E402
from jaxlava.training.step import init_state  # noqa: E402
from jaxlava.hostenv import reexec_with_hugepages  # noqa: E402

PHASES = ("generate", "score", "update", "host")


def build_inputs(work: str) -> dict:
    """The world, SFT model, RL-init adapter and reward model under `work` (each built only when missing)."""
    from jaxlava.lora import LoraConfig
    from jaxlava.shapes.world import preset, write_world
    from jaxlava.training import run_rm, run_sft
    p = {"world": os.path.join(work, "world"), "init": os.path.join(work, "sft", "hf"),
         "rlinit": os.path.join(work, "rlinit", "adapter"), "rm": os.path.join(work, "rm", "adapter")}
    small = dict(data=p["world"], steps=3, batch_size=4, eval_every=100, checkpoint_every=100)
    if not os.path.exists(os.path.join(p["world"], "world.json")):
        write_world(p["world"], preset("small"), progress=False)
    if not os.path.exists(os.path.join(p["init"], "config.json")):
        run_sft.run(run_sft.SFTConfig(out=os.path.dirname(p["init"]), vision_pretrain_steps=10, **small))
    if not os.path.exists(os.path.join(p["rlinit"], "adapter_config.json")):
        run_sft.run(run_sft.SFTConfig(out=os.path.dirname(p["rlinit"]), init=p["init"], lora=True,
                                      adapter=LoraConfig(r=4, alpha=8), **small))
    if not os.path.isdir(os.path.join(p["rm"], "adapter_model")):
        run_rm.run(run_rm.RMConfig(out=os.path.dirname(p["rm"]), init=p["init"], lora=LoraConfig(r=4, alpha=8),
                                   **small))
    return p


class GenerateProbe:
    """Wraps the rollout's `generate` to keep its last call and output (the number of decode steps it ran), and
    replays that call with a stream callback to split it into prefill and decode, as bench/decode.py does."""

    def __init__(self):
        self.inner, self.call, self.last, self.prompt_len = rollout.generate, None, None, 0
        rollout.generate = self

    def __call__(self, model, input_ids, pixel_values, attention_mask, **kw):
        self.prompt_len = int(distributed.local_rows(attention_mask).sum(axis=1).max())
        self.last = self.inner(model, input_ids, pixel_values, attention_mask, **kw)
        # the updates donate the policy adapter the call read: keep a copy for the replay (a few small arrays)
        self.call = ((model, input_ids, pixel_values, attention_mask), kw | {"lora": jax.tree.map(
            lambda a: a.copy(), kw["lora"])})
        return self.last

    def split(self) -> tuple[float, float]:
        """(prefill incl. the vision tower, decode) seconds of the last call, replayed (same programs, same rng)."""
        (args, kw), marks, t0 = self.call, [], time.perf_counter()
        out = self.inner(*args, **kw, chunk=kw["max_new_tokens"],
                         stream=lambda tokens, done: marks.append(time.perf_counter() - t0))
        jax.block_until_ready(out.tokens)
        return marks[0], marks[-1] - marks[0]


def run(args) -> dict:
    start = machine()
    paths = build_inputs(args.work)
    cfg = replace(run_ppo.RUN_PRESETS["shapes"], data=paths["world"], init=paths["init"],
                              policy_adapter=paths["rlinit"], reward_adapter=paths["rm"],
                              out=os.path.join(args.work, "ppo"), steps=args.steps + 1, eval_prompts=0)
    R, S = cfg.rollout_batch_size, cfg.step_batch_size
    per_step = cfg.noptepochs * (R // S)
    mesh = sharding.make_mesh(None)
    probe = GenerateProbe()
    with sharding.use_mesh(mesh):
        roles = ppo_roles.load_roles(cfg, mesh, lambda path: runs.build_model(
            replace(cfg, init=path), mesh))
        tx = make_optimizer(cfg.optim, cfg.steps, per_step)
        graphs = ppo.Graphs(nnx.graphdef(roles.policy_base), nnx.graphdef(roles.value_base), roles.policy_lora,
                            roles.value_lora)
        scorer = rollout.make_scorer(roles, graphs, run_ppo.rollout_config(cfg))
        frozen = run_ppo.frozen_tree(roles)
        state = init_state(roles.initial_params(), tx, cfg.seed)
        put = run_ppo.prompt_putter(mesh)
        # --max-prompt-len with the image counted once, as the run does
        width = run_ppo.query_width(cfg, roles.processor)
        data = ppo_prompt_batches(open_source(cfg.data, "ppo_prompt", "train"), roles.processor, batch_size=R,
                                  seed=cfg.seed, buckets=(width,), max_prompt_len=width,
                                  reward_processor=None if roles.reward_processor is roles.processor
                                  else roles.reward_processor)
        step = run_ppo.make_ppo_step(cfg, roles, graphs, scorer, tx, cfg.steps, mesh)
        bw, peak = copy_bandwidth(), matmul_ceiling()
        print(f"copy bandwidth {bw / 1e9:.1f} GB/s (read+write), f32 matmul ceiling {peak / 1e9:.0f} GFLOP/s; "
              f"policy {param_count(nnx.state(roles.policy_base, nnx.Param)) / 1e6:.2f}M parameters", flush=True)
        rows = []
        for i in range(cfg.steps):
            batch = next(data)
            c0, t0 = compile_count(), time.perf_counter()
            state, out = step(state, frozen, put(batch))
            jax.block_until_ready(state.params)
            wall = time.perf_counter() - t0
            m = out.metrics
            new = int(np.asarray(probe.last.lengths).max())
            roof = decode_roofline(roles.policy_base, R, probe.prompt_len, new, bw, peak)
            r = {"step": i + 1, "total_s": wall, "generate_s": m["seconds_generate"], "score_s": m["seconds_score"],
                 "update_s": m["seconds_update"], "rollout_host_s": m["seconds_host"],
                 "decode_steps": new, "prompt_len": probe.prompt_len, "response_length": m["response_length"],
                 "generate_roofline_s": roof["prefill_s"] + roof["decode_s"], "roofline_prefill_s": roof["prefill_s"],
                 "roofline_decode_s": roof["decode_s"], "compiles": compile_count() - c0}
            r["host_s"] = wall - r["generate_s"] - r["score_s"] - r["update_s"]
            r["replay_prefill_s"], r["replay_decode_s"] = probe.split()
            r["decode_ms_per_step"] = 1e3 * r["replay_decode_s"] / max(new - 1, 1)
            r["roofline_decode_ms_per_step"] = 1e3 * roof["decode_s"] / max(new - 1, 1)
            r["decode_roofline_fraction"] = roof["decode_s"] / r["replay_decode_s"]
            r["prefill_roofline_fraction"] = roof["prefill_s"] / r["replay_prefill_s"]
            r["generate_roofline_fraction"] = r["generate_roofline_s"] / r["generate_s"]
            # whole calls (vision + prefill + decode) per sampled position
            r["generate_ms_per_token_step"] = 1e3 * r["generate_s"] / new
            r["roofline_ms_per_token_step"] = 1e3 * r["generate_roofline_s"] / new
            rows.append(r)
            print(table([r], list(r)), flush=True)
    steady = rows[1:] or rows
    med = {k: float(np.median([r[k] for r in steady])) for k in rows[0] if k != "step"}
    med.update({f"{p}_share": med[f"{p}_s"] / med["total_s"] for p in PHASES})
    return {"_machine": {**start, "copy_bandwidth_Bps": bw, "matmul_flops": peak, "command": " ".join(sys.argv),
                         "load_avg_end": os.getloadavg()},
            "config": {"rollout_batch_size": R, "step_batch_size": S, "noptepochs": cfg.noptepochs,
                       "updates_per_step": per_step, "max_new_tokens": cfg.max_new_tokens,
                       "max_prompt_len": cfg.max_prompt_len, "query_width": width, "rm_seq_len": cfg.rm_seq_len,
                       "work": args.work},
            "first_step": rows[0], "steps": rows, "median": med}


@dataclass(kw_only=True)
class PPOStepArgs:
    """Where the cached inputs live and how many PPO steps to time."""
    out: Annotated[str | None, tyro.conf.arg(metavar="PATH")] = None
    """write the results as JSON here"""
    work: str = "runs/bench_ppo_step"
    """folder for the world, SFT model, RL-init adapter and reward model (built on first use, then reused)"""
    steps: int = 3
    """timed PPO steps after the first (compiling) one"""


def main(argv=None):
    args = tyro.cli(PPOStepArgs, args=argv, prog="bench/ppo_step.py", description=__doc__)
    res = run(args)
    med = res["median"]
    print("\nmedian over the steps after the first:")
    print(table([{"phase": p, "seconds": med[f"{p}_s"], "share": med[f"{p}_share"]} for p in PHASES]
                + [{"phase": "total", "seconds": med["total_s"], "share": 1.0}], ["phase", "seconds", "share"]))
    print(f"generate: {med['generate_s']:.3f} s vs roofline {med['generate_roofline_s']:.4f} s "
          f"(fraction {med['generate_roofline_fraction']:.3f}); replayed: prefill {med['replay_prefill_s']:.3f} s "
          f"(roofline {med['roofline_prefill_s']:.3f}), decode {med['decode_ms_per_step']:.2f} ms/step (roofline "
          f"{med['roofline_decode_ms_per_step']:.3f}, fraction {med['decode_roofline_fraction']:.3f})")
    write_json(args.out, res)


if __name__ == "__main__":
    reexec_with_hugepages()
    main()
