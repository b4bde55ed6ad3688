"""AOT planner: compile a stage's training step for a device topology and report per-chip memory and FLOPs.

Nothing is allocated: the model comes from `nnx.eval_shape`, parameters, optimizer state and the batch are
`jax.ShapeDtypeStruct`s carrying their `NamedSharding`s, and the trainer's own step (`jaxlava.sft.make_step`:
accumulation, AdamW with gradient clipping and the NaN guard) is lowered and compiled.

    python -m jaxlava.plan --preset llava-13b-336 --stage sft --topology v5p:2x2x4 --batch 32 --seq-len 1280
    python -m jaxlava.plan --preset tiny --stage sft --cpu-devices 8 --mesh fsdp=4,tensor=2

TPU topologies need libtpu (`pip install libtpu`) but no TPU: XLA's TPU compiler runs on this CPU host.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
import time
from typing import Annotated, Callable, Literal

import tyro

from jaxlava.fileio import write_json
from jaxlava.presets import MODEL_PRESETS
from jaxlava.training.cli import normalize_argv

GIB = 1024 ** 3
# HBM per chip (GiB) by TPU generation (the prefix of the topology name)
HBM_GIB = {"v4": 32, "v5e": 16, "v5litepod": 16, "v5p": 95, "v6e": 32}


@dataclasses.dataclass
class StepSpec:
    """What a stage hands to the planner: the step function, its abstract sharded arguments and shardings
    of its outputs, plus the per-chip bytes of the named argument groups."""
    fn: Callable
    args: tuple
    out_shardings: object
    groups: dict[str, object]  # name -> abstract sub-tree (for per-chip byte counts)
    donate_argnums: tuple = (0,)


# ---------------------------------------------------------------------------------------------- helpers
def _sds(tree, sharding_leaves):
    """The abstract `tree` with each leaf a ShapeDtypeStruct carrying the matching sharding."""
    import jax
    leaves, treedef = jax.tree.flatten(tree)
    if len(leaves) != len(sharding_leaves):
        raise ValueError(f"{len(leaves)} leaves but {len(sharding_leaves)} shardings")
    return treedef.unflatten([jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)
                              for x, s in zip(leaves, sharding_leaves)])


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


def model_flops(cfg, batch: int, seq: int, trained: bool = True) -> float:
    """Analytic FLOPs of one step on the whole batch (all chips): 6 N D for the trained matmuls (2 N D forward
    only for the frozen vision tower) plus attention scores, without remat's recomputation (the usual MFU
    convention)."""
    t, v = cfg.text, cfg.vision
    hd = t.head_dim
    layer = t.hidden_size * hd * (2 * t.num_attention_heads + 2 * t.num_key_value_heads) \
        + 3 * t.hidden_size * t.intermediate_size
    dec = t.num_hidden_layers * layer + t.hidden_size * t.vocab_size
    proj = cfg.vision_feature_dim * t.hidden_size + (t.hidden_size ** 2 if cfg.projector_type == "mlp2x_gelu" else 0)
    k = 6 if trained else 2
    tokens, n_img = batch * seq, cfg.num_image_tokens
    flops = k * dec * tokens + k * proj * batch * n_img
    flops += k * 2 * t.num_hidden_layers * batch * seq * seq * t.num_attention_heads * hd  # QK^T and AV
    p = v.num_patches + 1
    vis_layer = 4 * v.hidden_size ** 2 + 2 * v.hidden_size * v.intermediate_size
    flops += 2 * v.num_hidden_layers * (vis_layer * batch * p + 2 * batch * p * p * v.hidden_size)
    return float(flops)


# ---------------------------------------------------------------------------------------------- stages
def build_sft(cfg, mesh, batch: int, seq_len: int, grad_accum: int) -> StepSpec:
    """SFT: the trainer's step (`sft.make_step`) on a [batch, seq_len + image tokens]
    batch with one image per row."""
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from jax.sharding import NamedSharding, PartitionSpec as P

    from jaxlava import sft
    from jaxlava.model import LlavaModel
    from jaxlava.sharding import batch_sharding, like_params_shardings, state_shardings
    from jaxlava.training.optim import OptimConfig, make_optimizer
    from jaxlava.training.step import init_state

    abstract = nnx.eval_shape(lambda: LlavaModel(cfg, rngs=nnx.Rngs(0)))
    graphdef, trainable, frozen = sft.split_trainable(abstract)
    repl = NamedSharding(mesh, P())
    tr_sh = jax.tree.leaves(state_shardings(trainable, mesh))
    fr_sh = jax.tree.leaves(state_shardings(frozen, mesh))

    tx = make_optimizer(OptimConfig(grad_accum=grad_accum), total_steps=1000)
    state_abs = jax.eval_shape(lambda t: init_state(t, tx), trainable)
    state = _sds(state_abs, like_params_shardings(state_abs, trainable, tr_sh, repl))
    frozen_abs = _sds(frozen, fr_sh)

    T = seq_len + cfg.num_image_tokens
    v = cfg.vision
    shapes = {"input_ids": ((batch, T), jnp.int32), "attention_mask": ((batch, T), jnp.int32),
              "labels": ((batch, T), jnp.int32),
              "pixel_values": ((batch, v.num_channels, v.image_size, v.image_size), jnp.float32)}
    batch_abs = {k: jax.ShapeDtypeStruct(s, d, sharding=batch_sharding(mesh, len(s))) for k, (s, d) in shapes.items()}

    step = sft.make_step(graphdef, tx, grad_accum)
    _, metrics_abs = jax.eval_shape(step, state, frozen_abs, batch_abs)
    state_out = jax.tree.map(lambda x: x.sharding, state)
    out_sh = (state_out, jax.tree.map(lambda _: repl, metrics_abs))
    groups = {"params": (state["params"], frozen_abs), "opt": state["opt_state"], "batch": batch_abs}
    return StepSpec(step, (state, frozen_abs, batch_abs), out_sh, groups)


def _not_yet(stage: str, what: str):
    def build(*_a, **_k):
        raise NotImplementedError(
            f"planning the {stage!r} stage is not implemented yet: {what}. Only 'sft' can be planned today; "
            f"add a builder to jaxlava.plan.STAGES (see build_sft) to plan it.")
    return build


STAGES: dict[str, Callable[..., StepSpec]] = {
    "sft": build_sft,
    "rm": _not_yet("rm", "the planner needs a builder around jaxlava.rm.loss_and_grad (LoRA adapter + reward "
                   "head trained on preference pairs [B,2,T])"),
    "ppo": _not_yet("ppo", "the PPO step (rollout + policy/value update, jaxlava.ppo) has no builder"),
}


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
    cfg = get_preset(args.preset, param_dtype=args.param_dtype, dtype=args.compute_dtype, remat=args.remat,
                     scan_layers=True)
    nb = mesh.shape["data"] * mesh.shape["fsdp"]
    if args.batch % nb:
        raise SystemExit(f"--batch {args.batch} does not divide over the {nb} batch shards (data x fsdp) of the mesh")
    t0 = time.time()
    with use_mesh(mesh):
        spec = STAGES[args.stage](cfg, mesh, args.batch, args.seq_len, args.grad_accum)
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
        total = max(need, sum(groups.values()))
        temp = total - sum(groups.values())
    return {
        "preset": args.preset, "stage": args.stage, "topology": args.topology or f"cpu:{len(devices)}",
        "device_kind": devices[0].device_kind, "chips": mesh.size,
        "mesh": ",".join(f"{k}={v}" for k, v in mesh.shape.items()),
        "batch": args.batch, "seq": args.seq_len + cfg.num_image_tokens,
        "param_count": global_bytes(spec.groups["params"]) // cfg.jnp_param_dtype.itemsize,
        "params_global_bytes": global_bytes(spec.groups["params"]),
        "params_bytes": groups["params"], "opt_bytes": groups["opt"], "batch_bytes": groups["batch"],
        "temp_bytes": temp, "total_bytes": total, "flops": float(cost.get("flops", float("nan"))),
        "model_flops_per_chip": model_flops(cfg, args.batch, args.seq_len + cfg.num_image_tokens) / mesh.size,
        "hbm_gib": hbm, "fits": False if oom else (None if hbm is None else total <= hbm * GIB),
        "compile_s": seconds, "compiler_oom": oom.splitlines()[0][:400] if oom else None,
    }


def format_report(r: dict) -> str:
    def g(b):
        return f"{b / GIB:9.3f} GiB" if b >= GIB / 10 else f"{b / 2 ** 20:9.3f} MiB"
    rows = [
        ("preset / stage", f"{r['preset']} / {r['stage']}"),
        ("topology", f"{r['topology']} ({r['chips']} x {r['device_kind']}), mesh {r['mesh']}"),
        ("batch x seq", f"{r['batch']} x {r['seq']}"),
        ("parameters (all chips)", f"{r['param_count']:,} = {r['params_global_bytes'] / GIB:.2f} GiB"),
        ("per chip: parameters", g(r["params_bytes"])),
        ("per chip: optimizer state", g(r["opt_bytes"])),
        ("per chip: batch", g(r["batch_bytes"])),
        ("per chip: temporaries", g(r["temp_bytes"])),
        ("per chip: total", g(r["total_bytes"])),
        ("per chip: model FLOPs / step", f"{r['model_flops_per_chip']:.4g} (analytic 6ND + attention)"),
        ("per chip: XLA FLOPs / step", f"{r['flops']:.4g} (cost_analysis; a scanned layer counts once)"),
        ("chip HBM", "n/a (pass --hbm-gib)" if r["hbm_gib"] is None else f"{r['hbm_gib']:9.3f} GiB"),
        ("verdict", "n/a" if r["fits"] is None else ("fits" if r["fits"] else "does not fit")),
        ("compile time", f"{r['compile_s']:.1f} s"),
    ]
    if r.get("compiler_oom"):
        rows.insert(-1, ("compiler", r["compiler_oom"]))
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)


Dtype = Literal["float32", "bfloat16"]
PresetName = Literal[tuple(MODEL_PRESETS)]  # type: ignore[valid-type]  # the choices of --preset


@dataclasses.dataclass(kw_only=True)
class PlanArgs:
    """What to plan: a model preset and stage, the devices and mesh, and the batch."""
    preset: PresetName
    """model preset"""
    stage: Annotated[str, tyro.conf.arg(help=f"training stage to plan: {', '.join(STAGES)}")] = "sft"
    topology: Annotated[str | None, tyro.conf.arg(
        help="TPU topology to compile for, e.g. v5p:2x2x1 (4 chips), v5p:2x2x4 (16), v5e:4x4, v4:2x2x2, v6e:4x4 "
             "(needs libtpu, not a TPU); not with --cpu-devices")] = None
    cpu_devices: Annotated[int | None, tyro.conf.arg(metavar="N")] = None
    """compile for N fake CPU devices instead (no libtpu needed); not with --topology"""
    mesh: str = "all"
    """mesh spec over the devices, e.g. 'data=2,fsdp=-1,tensor=2'; 'all' (or the flag alone): all devices on fsdp"""
    batch: int = 8
    """global batch (rows per optimizer step)"""
    seq_len: int = 1280
    """text tokens per row; the preset's image tokens are added"""
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
    except NotImplementedError as e:
        raise SystemExit(f"--stage {args.stage}: {e}") from None
    print(format_report(report))
    if args.json:
        write_json(args.json, report)
    return report


if __name__ == "__main__":
    main()
