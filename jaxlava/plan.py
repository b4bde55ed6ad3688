"""AOT planner: compile a stage's training step for a device topology and report per-chip memory and FLOPs.

Nothing is allocated: the model comes from `nnx.eval_shape`, parameters, optimizer state and the batch are
`jax.ShapeDtypeStruct`s carrying their `NamedSharding`s, and the trainer's own step (accumulation, AdamW with
gradient clipping and the NaN guard) is lowered and compiled.  Stages (`jaxlava.plan_stages`): `sft`
(`sft.make_step`), `rm` (`rm.make_step`: LoRA r 64 / alpha 16 + reward head on preference pairs) and `ppo` (ONE
optimizer update of `ppo.make_update_step` over the policy and the reward/value base; rollout generation and
its KV cache are NOT compiled: the report gives the KV cache's size analytically).

    python -m jaxlava.plan --preset llava-13b-336 --stage sft --topology v5p:2x2x4 --batch 32 --seq-len 1280
    python -m jaxlava.plan --preset llava-7b-224 --stage ppo --topology v5p:2x2x1 --batch 64 --seq-len 1024
    python -m jaxlava.plan --preset tiny --stage rm --cpu-devices 8 --mesh fsdp=4,tensor=2

TPU topologies need libtpu (`pip install libtpu`) but no TPU: XLA's TPU compiler runs on this CPU host.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
import time
from typing import Annotated, Literal

import tyro

from jaxlava.fileio import write_json
from jaxlava.plan_stages import STAGES, PlanError, StepSpec, build_ppo, build_rm, build_sft, model_flops
from jaxlava.presets import MODEL_PRESETS
from jaxlava.training.cli import normalize_argv

GIB = 1024 ** 3
# HBM per chip (GiB) by TPU generation (the prefix of the topology name)
HBM_GIB = {"v4": 32, "v5e": 16, "v5litepod": 16, "v5p": 95, "v6e": 32}


__all__ = ["STAGES", "StepSpec", "build_ppo", "build_rm", "build_sft", "main", "model_flops", "plan"]
# the paper's PPO pairs its 7B policy with the 13B reward model (and value model initialised from it)
PAPER_REWARD_PRESET = {"llava-7b-224": "llava-13b-336"}


# ---------------------------------------------------------------------------------------------- helpers
def per_chip_bytes(abstract_tree) -> int:
    """Bytes one device holds of a tree of sharded ShapeDtypeStructs (the largest shard, i.e. the per-chip
    figure for an even layout)."""
    import jax
    total = 0
    for x in jax.tree.leaves(abstract_tree):
        shape = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
        total += math.prod(shape) * x.dtype.itemsize
    return total


def global_bytes(abstract_tree) -> int:
    import jax
    return sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(abstract_tree))


# ---------------------------------------------------------------------------------------------- topology
def topology_devices(name: str):
    """Abstract TPU devices of a topology such as 'v5p:2x2x1' (needs libtpu, not a TPU)."""
    try:
        import libtpu  # noqa: F401
    except ImportError:
        raise SystemExit(f"--topology {name!r} needs libtpu to compile for TPU on this host, and it is not "
                         "installed: `pip install libtpu` (or plan on fake CPU devices with --cpu-devices N)") from None
    from jax.experimental import topologies
    try:
        return list(topologies.get_topology_desc(platform="tpu", topology_name=name).devices)
    except Exception as e:  # libtpu's errors are plain RuntimeErrors/XlaRuntimeErrors
        raise SystemExit(f"--topology {name!r}: libtpu could not describe this topology ({e}). Use names like "
                         "v4:2x2x1, v5e:4x4, v5p:2x2x4, v6e:4x4") from None


def chip_hbm_gib(topology: str | None, override: float | None) -> float | None:
    if override is not None:
        return override
    if topology is None:
        return None
    gen = topology.split(":")[0].lower()
    if gen not in HBM_GIB:
        raise SystemExit(f"--topology {topology!r}: unknown TPU generation {gen!r} (known: {', '.join(HBM_GIB)}); "
                         "pass --hbm-gib")
    return float(HBM_GIB[gen])


# ---------------------------------------------------------------------------------------------- planning
def plan(args) -> dict:
    import jax

    from jaxlava.presets import get_preset
    from jaxlava.sharding import make_mesh, use_mesh

    if args.stage not in STAGES:
        raise SystemExit(f"unknown --stage {args.stage!r}; stages: {', '.join(STAGES)}")
    devices = topology_devices(args.topology) if args.topology else jax.devices()
    mesh = make_mesh(args.mesh, devices)
    runtime = dict(param_dtype=args.param_dtype, dtype=args.compute_dtype, remat=args.remat, scan_layers=True)
    cfg = get_preset(args.preset, **runtime)
    opts = {}
    reward = reward_preset(args)
    if reward is not None:
        opts["reward_cfg"] = None if reward == "same" else get_preset(reward, **runtime)
        opts["response_len"] = args.response_len
        opts["rollout_batch"] = args.rollout_batch
    nb = mesh.shape["data"] * mesh.shape["fsdp"]
    if args.batch % nb:
        raise SystemExit(f"--batch {args.batch} does not divide over the {nb} batch shards (data x fsdp) of the mesh")
    t0 = time.time()
    with use_mesh(mesh):
        spec = STAGES[args.stage](cfg, mesh, args.batch, args.seq_len, args.grad_accum, **opts)
        lowered = jax.jit(spec.fn, out_shardings=spec.out_shardings,
                          donate_argnums=spec.donate_argnums).lower(*spec.args)
        oom = None
        try:
            compiled = lowered.compile()
        except Exception as e:  # the TPU compiler refuses programs that exceed the chip's HBM
            if "RESOURCE_EXHAUSTED" not in str(e) and "Ran out of memory" not in str(e):
                raise
            oom, compiled = str(e), None
    seconds = time.time() - t0
    groups = {k: per_chip_bytes(v) for k, v in spec.groups.items()}
    held = groups["params"] + groups["opt"] + groups["batch"]  # the other groups are parts of these
    hbm = chip_hbm_gib(args.topology, args.hbm_gib)
    mem = compiled.memory_analysis() if compiled is not None else None
    cost = compiled.cost_analysis() if compiled is not None else None
    cost = cost[0] if isinstance(cost, (list, tuple)) else (cost or {})
    if mem is not None:
        temp = int(mem.temp_size_in_bytes)
        total = int(mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes + temp)
    else:  # the compiler stopped at its own estimate, e.g. "memory required for HLO temporaries (58.22G)",
        # which on the cases checked is close to arguments + temporaries: report it as the total (a lower bound)
        m = re.search(r"temporaries \(([\d.]+)([KMGT])\)", oom or "")
        need = int(float(m.group(1)) * 1024 ** " KMGT".index(m.group(2))) if m else 0
        total = max(need, held)
        temp = total - held
    leaves = jax.tree.leaves(spec.groups["params"])
    return {
        "preset": args.preset, "stage": args.stage, "topology": args.topology or f"cpu:{len(devices)}",
        "device_kind": devices[0].device_kind, "chips": mesh.size,
        "mesh": ",".join(f"{k}={v}" for k, v in mesh.shape.items()),
        "batch": args.batch, "seq": args.seq_len + cfg.num_image_tokens, "reward_preset": reward,
        "param_count": sum(math.prod(x.shape) for x in leaves),
        "params_global_bytes": global_bytes(spec.groups["params"]),
        "params_bytes": groups["params"], "opt_bytes": groups["opt"], "batch_bytes": groups["batch"],
        "temp_bytes": temp, "total_bytes": total, "flops": float(cost.get("flops", float("nan"))),
        "model_flops_per_chip": (spec.model_flops if spec.model_flops is not None else
                                 model_flops(cfg, args.batch, args.seq_len + cfg.num_image_tokens)) / mesh.size,
        "hbm_gib": hbm, "fits": False if oom else (None if hbm is None else total <= hbm * GIB),
        "compile_s": seconds, "compiler_oom": oom.splitlines()[0][:400] if oom else None,
        **{f"{k}_bytes": v for k, v in groups.items() if k not in ("params", "opt", "batch")}, **spec.report,
    }


def reward_preset(args) -> str | None:
    """The reward/value base of a `ppo` plan: --reward-preset, else the paper's pairing (llava-7b-224 policy with
    the llava-13b-336 reward model), else "same" (the policy's base serves both roles); None for other stages."""
    if args.stage != "ppo":
        if args.reward_preset is not None:
            raise SystemExit(f"--reward-preset is for --stage ppo (the reward/value base), not --stage {args.stage}")
        return None
    if args.reward_preset not in (None, "same", *MODEL_PRESETS):
        raise SystemExit(f"--reward-preset {args.reward_preset!r}: not a preset ({', '.join(MODEL_PRESETS)}) "
                         "nor 'same'")
    name = args.reward_preset or PAPER_REWARD_PRESET.get(args.preset, "same")
    return "same" if name == args.preset else name


def format_report(r: dict) -> str:
    def g(b):
        return f"{b / GIB:9.3f} GiB" if b >= GIB / 10 else f"{b / 2 ** 20:9.3f} MiB"
    rows = [
        ("preset / stage", f"{r['preset']} / {r['stage']}"),
        ("topology", f"{r['topology']} ({r['chips']} x {r['device_kind']}), mesh {r['mesh']}"),
        ("batch x seq", r.get("shape") or f"{r['batch']} x {r['seq']}"),
        ("parameters (all chips)", f"{r['param_count']:,} = {r['params_global_bytes'] / GIB:.2f} GiB"),
        ("per chip: parameters", g(r["params_bytes"])),
        ("per chip: optimizer state", g(r["opt_bytes"])),
        ("per chip: batch", g(r["batch_bytes"])),
        ("per chip: temporaries", g(r["temp_bytes"])),
        ("per chip: total", g(r["total_bytes"])),
        ("per chip: model FLOPs / step", f"{r['model_flops_per_chip']:.4g} (analytic 6ND + attention"
                                         + ("; approximate for LoRA stages)" if r["stage"] != "sft" else ")")),
        ("per chip: XLA FLOPs / step", f"{r['flops']:.4g} (cost_analysis; a scanned layer counts once)"),
        ("chip HBM", "n/a (pass --hbm-gib)" if r["hbm_gib"] is None else f"{r['hbm_gib']:9.3f} GiB"),
        ("verdict", "n/a" if r["fits"] is None else ("fits" if r["fits"] else "does not fit")),
        ("compile time", f"{r['compile_s']:.1f} s"),
    ]
    if "adapters_bytes" in r:  # ppo: what the parameters are
        at = [k for k, _ in rows].index("per chip: parameters") + 1
        rows[at:at] = [("  policy base", g(r["policy_base_bytes"]) + (" (also the reward/value base)" if
                                                                      r["shared_base"] else "")),
                       *([] if r["shared_base"] else
                         [(f"  reward/value base ({r['reward_preset']})", g(r["value_base_bytes"]))]),
                       ("  adapters + value head", g(r["adapters_bytes"]))]
    if r.get("compiler_oom"):
        rows.insert(-1, ("compiler", r["compiler_oom"]))
    if "kv_cache_bytes" in r:
        kv = (f"{g(r['kv_cache_bytes']).strip()} per chip for {r['rollout_batch']} rollouts (analytic: 2 x layers x "
              "kv heads x head dim x query+response x rows/chip x dtype bytes)")
        rows.insert(-1, ("rollout KV cache (not planned)", kv))
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)


Dtype = Literal["float32", "bfloat16"]
PresetName = Literal[tuple(MODEL_PRESETS)]  # type: ignore[valid-type]  # the choices of --preset


@dataclasses.dataclass(kw_only=True)
class PlanArgs:
    """What to plan: a model preset and stage, the devices and mesh, and the batch."""
    preset: PresetName
    """model preset"""
    stage: Annotated[str, tyro.conf.arg(help=f"training stage to plan: {', '.join(STAGES)}. ppo plans ONE "
                                        "optimizer update (policy + value adapters); rollout generation (the "
                                        "KV-cache sampler) is not in the plan, its KV cache is reported "
                                        "analytically")] = "sft"
    reward_preset: Annotated[str | None, tyro.conf.arg(
        help="--stage ppo: the reward model's base (also the value model's): a preset name, or 'same' for the "
             "policy's own base (held once). Default: llava-13b-336 for a llava-7b-224 policy (the paper's "
             "pairing), else 'same'")] = None
    response_len: int = 896
    """--stage ppo: response slots per rollout (the paper's 896), part of --seq-len (query + response)"""
    rollout_batch: Annotated[int | None, tyro.conf.arg(
        help="--stage ppo: rollouts generated per PPO step, for the KV-cache line only (default 2 x --batch: the "
             "paper samples 512 and updates on 256 at a time)")] = None
    topology: Annotated[str | None, tyro.conf.arg(
        help="TPU topology to compile for, e.g. v5p:2x2x1 (4 chips), v5p:2x2x4 (16), v5e:4x4, v4:2x2x2, v6e:4x4 "
             "(needs libtpu, not a TPU); not with --cpu-devices")] = None
    cpu_devices: Annotated[int | None, tyro.conf.arg(metavar="N")] = None
    """compile for N fake CPU devices instead (no libtpu needed); not with --topology"""
    mesh: str = "all"
    """mesh spec over the devices, e.g. 'data=2,fsdp=-1,tensor=2'; 'all' (or the flag alone): all devices on fsdp"""
    batch: int = 8
    """global batch (rows per optimizer step; rm: preference pairs; ppo: rollouts per update)"""
    seq_len: int = 1280
    """text tokens per row (ppo: query + response); the preset's image tokens are added"""
    grad_accum: int = 1
    """microbatches per step"""
    param_dtype: Dtype = "float32"
    """parameter (and optimizer state) dtype"""
    compute_dtype: Dtype = "bfloat16"
    """activation dtype"""
    remat: bool = True
    """rematerialize each layer in the backward pass"""
    hbm_gib: Annotated[float | None, tyro.conf.arg(
        help="per-chip memory to compare with (default: the TPU generation's HBM: "
             + ", ".join(f"{k} {v}" for k, v in HBM_GIB.items()) + " GiB)")] = None
    json: Annotated[str | None, tyro.conf.arg(metavar="PATH")] = None
    """also write the report as JSON to PATH"""


def parse_args(argv: list[str] | None = None) -> PlanArgs:
    """The command line (`sys.argv[1:]` when None) as PlanArgs; a bare `--mesh` means all devices on fsdp."""
    argv = sys.argv[1:] if argv is None else argv
    args = tyro.cli(PlanArgs, args=normalize_argv(argv), prog="python -m jaxlava.plan", description=__doc__)
    if args.topology and args.cpu_devices is not None:
        raise SystemExit("--topology and --cpu-devices are mutually exclusive: compile either for a TPU topology "
                         "(--topology v5p:2x2x1) or for N fake CPU devices (--cpu-devices N)")
    return args


class _Parser:
    """`build_parser().parse_args(argv)`, as when the planner's command line was an argparse parser."""

    def parse_args(self, argv: list[str] | None = None) -> PlanArgs:
        return parse_args(argv)


def build_parser() -> _Parser:
    return _Parser()


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.cpu_devices is not None:
        if args.cpu_devices < 1:
            raise SystemExit("--cpu-devices must be >= 1")
        flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
        os.environ["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={args.cpu_devices}"])
    if args.topology:
        # libtpu looks for TPU hosts in the environment; this host has none, say so to keep it quiet
        os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
        os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    import jax
    if args.cpu_devices is not None and jax.device_count() != args.cpu_devices:
        raise SystemExit(f"--cpu-devices {args.cpu_devices}: jax already has {jax.device_count()} devices "
                         "(the backend was started before the planner set XLA_FLAGS)")
    try:
        report = plan(args)
    except (NotImplementedError, PlanError) as e:
        raise SystemExit(f"--stage {args.stage}: {e}") from None
    print(format_report(report))
    if args.json:
        write_json(args.json, report)
    return report


if __name__ == "__main__":
    main()
