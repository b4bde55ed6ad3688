"""The AOT planner's stages: for each training stage, the trainer's own step with abstract sharded arguments.

A builder `build_<stage>(cfg, mesh, batch, seq_len, grad_accum, **opts) -> StepSpec` makes the stage's model(s)
with `nnx.eval_shape`, its trainable state, AdamW state and batch as `jax.ShapeDtypeStruct`s carrying their
`NamedSharding`s (Adam moments sharded like their parameters), and returns the step the trainer jits:

- `sft`: `jaxlava.sft.make_step` (full fine-tune of projector + language model), rows [batch, seq_len + image tokens];
- `rm`: `jaxlava.rm.make_step` (LoRA r 64 / alpha 16 + scalar head over a frozen base), preference pairs
  [batch, 2, seq_len + image tokens];
- `ppo`: ONE optimizer update of `jaxlava.ppo.make_update_step` (policy adapter, value adapter and value head over
  the frozen policy and reward/value bases).  Rollout generation (the KV-cache sampler) and the scoring passes
  are not planned; the report gives the rollout KV cache analytically (`kv_cache_bytes`).

`jaxlava.plan` lowers and compiles `StepSpec.fn` with these arguments; nothing is allocated.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

# the paper's LoRA for the reward model and both PPO adapters (LLaVA-RLHF: r 64, alpha 16)
LORA_R, LORA_ALPHA = 64, 16.0


class PlanError(ValueError):
    """A stage cannot be planned with these sizes (the planner's CLI reports it as a usage error)."""


@dataclasses.dataclass
class StepSpec:
    """What a stage hands to the planner: the step function, its abstract sharded arguments and shardings
    of its outputs, plus the per-chip bytes of the named argument groups."""
    fn: Callable
    args: tuple
    out_shardings: object
    groups: dict[str, object]  # name -> abstract sub-tree (for per-chip byte counts)
    donate_argnums: tuple = (0,)
    model_flops: float | None = None  # analytic FLOPs of one step on all chips (None: the planner's SFT formula)
    report: dict = dataclasses.field(default_factory=dict)  # stage-specific report fields


# ---------------------------------------------------------------------------------------------- helpers
def _sds(tree, sharding_leaves):
    """The abstract `tree` with each leaf a ShapeDtypeStruct carrying the matching sharding."""
    import jax
    leaves, treedef = jax.tree.flatten(tree)
    if len(leaves) != len(sharding_leaves):
        raise ValueError(f"{len(leaves)} leaves but {len(sharding_leaves)} shardings")
    return treedef.unflatten([jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)
                              for x, s in zip(leaves, sharding_leaves)])


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


def kv_cache_bytes(cfg, mesh, rollout_batch: int, tokens: int) -> int:
    """Per-chip bytes of the sampler's KV cache (`jaxlava.generate`): 2 (K and V) x layers x kv_heads x head_dim x
    (query + response tokens) x rows per chip x the compute dtype's bytes; rows split over the batch shards
    (data x fsdp), kv heads over `tensor` when they divide."""
    t = cfg.text
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    heads = t.num_key_value_heads // mesh.shape["tensor"] if t.num_key_value_heads % mesh.shape["tensor"] == 0 \
        else t.num_key_value_heads
    rows = -(-rollout_batch // shards)
    return 2 * t.num_hidden_layers * heads * t.head_dim * tokens * rows * cfg.jnp_dtype.itemsize


def _abstract_base(cfg, mesh):
    """(graphdef, whole model state as sharded ShapeDtypeStructs) of a LlavaModel, allocated nowhere."""
    import jax
    from flax import nnx

    from jaxlava.model import LlavaModel
    from jaxlava.sharding import state_shardings
    abstract = nnx.eval_shape(lambda: LlavaModel(cfg, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    return graphdef, _sds(state, jax.tree.leaves(state_shardings(state, mesh)))


def _train_state(trainable_abs, trainable_sh: list, tx, mesh):
    """The abstract TrainState of `trainable_abs` (params sharded by `trainable_sh`, Adam moments like them)."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec as P

    from jaxlava.sharding import like_params_shardings
    from jaxlava.training.step import init_state
    state_abs = jax.eval_shape(lambda t: init_state(t, tx), trainable_abs)
    return _sds(state_abs, like_params_shardings(state_abs, trainable_abs, trainable_sh, NamedSharding(mesh, P())))


def _batch(mesh, shapes: dict):
    """{name: ((shape), dtype)} -> batch-sharded ShapeDtypeStructs (dim 0 over data x fsdp)."""
    import jax

    from jaxlava.sharding import batch_sharding
    return {k: jax.ShapeDtypeStruct(s, d, sharding=batch_sharding(mesh, len(s))) for k, (s, d) in shapes.items()}


def _spec(step, state, frozen, batch_abs, mesh, groups, **kw) -> StepSpec:
    import jax
    from jax.sharding import NamedSharding, PartitionSpec as P
    repl = NamedSharding(mesh, P())
    _, metrics_abs = jax.eval_shape(step, state, frozen, batch_abs)
    out_sh = (jax.tree.map(lambda x: x.sharding, state), jax.tree.map(lambda _: repl, metrics_abs))
    return StepSpec(step, (state, frozen, batch_abs), out_sh, groups, **kw)


# ---------------------------------------------------------------------------------------------- stages
def build_sft(cfg, mesh, batch: int, seq_len: int, grad_accum: int, **_opts) -> StepSpec:
    """SFT: the trainer's step (`sft.make_step`) on a [batch, seq_len + image tokens]
    batch with one image per row."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from jaxlava import sft
    from jaxlava.model import LlavaModel
    from jaxlava.sharding import state_shardings
    from jaxlava.training.optim import OptimConfig, make_optimizer

    abstract = nnx.eval_shape(lambda: LlavaModel(cfg, rngs=nnx.Rngs(0)))
    graphdef, trainable, frozen = sft.split_trainable(abstract)
    tr_sh = jax.tree.leaves(state_shardings(trainable, mesh))
    fr_sh = jax.tree.leaves(state_shardings(frozen, mesh))

    tx = make_optimizer(OptimConfig(grad_accum=grad_accum), total_steps=1000)
    state = _train_state(trainable, tr_sh, tx, mesh)
    frozen_abs = _sds(frozen, fr_sh)

    T = seq_len + cfg.num_image_tokens
    v = cfg.vision
    batch_abs = _batch(mesh, {"input_ids": ((batch, T), jnp.int32), "attention_mask": ((batch, T), jnp.int32),
                              "labels": ((batch, T), jnp.int32),
                              "pixel_values": ((batch, v.num_channels, v.image_size, v.image_size), jnp.float32)})
    step = sft.make_step(graphdef, tx, grad_accum)
    groups = {"params": (state["params"], frozen_abs), "opt": state["opt_state"], "batch": batch_abs}
    return _spec(step, state, frozen_abs, batch_abs, mesh, groups, model_flops=model_flops(cfg, batch, T))


def build_rm(cfg, mesh, batch: int, seq_len: int, grad_accum: int, **_opts) -> StepSpec:
    """Reward model: the trainer's step (`rm.make_step`): LoRA r 64 / alpha 16 (sharded by the rule table) and a
    replicated scalar head trained over the frozen base, on `batch` preference pairs [batch, 2, seq_len + image
    tokens] sharing one image each."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec as P

    from jaxlava import rm
    from jaxlava.lora import LoraConfig, init_lora, lora_shardings
    from jaxlava.model.heads import init_scalar_head
    from jaxlava.training.optim import OptimConfig, make_optimizer, make_schedule

    graphdef, base = _abstract_base(cfg, mesh)
    lora_cfg = LoraConfig(r=LORA_R, alpha=LORA_ALPHA)
    # keys made inside eval_shape: a concrete key cannot be placed on an abstract (topology) mesh
    trainable = jax.eval_shape(lambda: {"lora": init_lora(cfg, lora_cfg, jax.random.key(0)),
                                        "head": init_scalar_head(jax.random.key(1), cfg.text.hidden_size)})
    repl = NamedSharding(mesh, P())
    tr_sh = jax.tree.leaves({"lora": lora_shardings(trainable["lora"], mesh), "head": {"w": repl, "b": repl}})
    # the 13B RM run's optimizer (jaxlava.training.run_rm): the memory does not depend on the numbers
    optim = OptimConfig(lr=2e-5, schedule="constant_with_warmup", max_grad_norm=0.3, grad_accum=grad_accum)
    tx = make_optimizer(optim, total_steps=1000)
    state = _train_state(trainable, tr_sh, tx, mesh)

    T = seq_len + cfg.num_image_tokens
    v = cfg.vision
    batch_abs = _batch(mesh, {"input_ids": ((batch, 2, T), jnp.int32), "attention_mask": ((batch, 2, T), jnp.int32),
                              "pixel_values": ((batch, v.num_channels, v.image_size, v.image_size), jnp.float32),
                              "choice": ((batch,), jnp.int32)})
    step = rm.make_step(graphdef, lora_cfg, tx, grad_accum, make_schedule(optim, 1000))
    groups = {"params": (state["params"], base), "opt": state["opt_state"], "batch": batch_abs}
    # both candidates of a pair run the whole model (the image is repeated for each); 6ND over the base's
    # matmuls although only the adapter trains (the backward still runs through every layer): approximate
    return _spec(step, state, base, batch_abs, mesh, groups, model_flops=model_flops(cfg, 2 * batch, T),
                 report={"shape": f"{batch} pairs x 2 x {T}"})


def build_ppo(cfg, mesh, batch: int, seq_len: int, grad_accum: int, reward_cfg=None, response_len: int = 896,
              rollout_batch: int | None = None, **_opts) -> StepSpec:
    """PPO: ONE optimizer update of the trainer's update step (`ppo.make_update_step`, the paper's LossConfig) on
    `batch` rollouts (the paper's step batch: 256 global), each `seq_len` text tokens (query + response, the paper
    128 + 896) of which the last `response_len` are response slots.

    Trainable: the policy adapter (over `cfg`), the value adapter (over `reward_cfg`, the reward model's base)
    and a zero value head, all AdamW; frozen: both bases.  `reward_cfg` None: one base serves both roles and is
    passed (and counted) once, as the trainer holds it once.  Rollout generation is not part of the step; the
    report carries its KV cache (`kv_cache_bytes`, per chip, for `rollout_batch` rows: default 2 x batch, the
    paper's 512 rollouts per 256-row update)."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec as P

    from jaxlava import ppo
    from jaxlava.lora import LoraConfig, init_lora, lora_shardings
    from jaxlava.model.heads import init_scalar_head
    from jaxlava.training.optim import OptimConfig, make_optimizer, make_schedule

    if not 0 < response_len < seq_len:
        raise PlanError(f"--response-len {response_len} must be positive and shorter than --seq-len {seq_len} "
                        "(the query + response text tokens)")
    shared = reward_cfg is None
    rcfg = cfg if shared else reward_cfg
    if rcfg.text.vocab_size < cfg.text.vocab_size:
        raise PlanError(f"the reward model's vocabulary ({rcfg.text.vocab_size}) is smaller than the policy's "
                        f"({cfg.text.vocab_size}); the value model reads the policy's tokens")
    p_graph, p_base = _abstract_base(cfg, mesh)
    v_graph, v_base = (p_graph, p_base) if shared else _abstract_base(rcfg, mesh)
    lora_cfg = LoraConfig(r=LORA_R, alpha=LORA_ALPHA)
    trainable = jax.eval_shape(lambda: {"policy": init_lora(cfg, lora_cfg, jax.random.key(0)),
                                        "value": init_lora(rcfg, lora_cfg, jax.random.key(1)),
                                        "value_head": init_scalar_head(None, rcfg.text.hidden_size, zero=True)})
    repl = NamedSharding(mesh, P())
    tr_sh = jax.tree.leaves({"policy": lora_shardings(trainable["policy"], mesh),
                             "value": lora_shardings(trainable["value"], mesh),
                             "value_head": {"w": repl, "b": repl}})
    # the paper run's optimizer (jaxlava.training.run_ppo): the memory does not depend on the numbers
    optim = OptimConfig(lr=3e-5, schedule="cosine", warmup_steps=5, max_grad_norm=1.0, grad_accum=grad_accum)
    tx = make_optimizer(optim, total_steps=1000, updates_per_step=4)
    state = _train_state(trainable, tr_sh, tx, mesh)

    Tp, Tv, N = seq_len + cfg.num_image_tokens, seq_len + rcfg.num_image_tokens, response_len
    hp, hr = cfg.vision.image_size, rcfg.vision.image_size
    i32, f32 = jnp.int32, jnp.float32
    batch_abs = _batch(mesh, {
        "input_ids": ((batch, Tp), i32), "attention_mask": ((batch, Tp), i32),
        "value_input_ids": ((batch, Tv), i32), "value_attention_mask": ((batch, Tv), i32),
        "pixel_values": ((batch, cfg.vision.num_channels, hp, hp), f32),
        "reward_pixel_values": ((batch, rcfg.vision.num_channels, hr, hr), f32),
        "response": ((batch, N), i32), "response_mask": ((batch, N), i32),
        **{k: ((batch, N), f32) for k in ("old_logprobs", "old_values", "advantages", "returns")}})
    graphs = ppo.Graphs(p_graph, v_graph, lora_cfg, lora_cfg)
    update = ppo.make_update_step(graphs, ppo.LossConfig(), tx, grad_accum, make_schedule(optim, 1000))
    if shared:
        # the trainer passes the one base state as both "policy_base" and "value_base" (the same buffers); a
        # jitted argument given twice would be counted twice, so the planned step takes it once
        def step(state_, frozen, mb):
            return update(state_, {"policy_base": frozen["base"], "value_base": frozen["base"]}, mb)
        frozen_abs = {"base": p_base}
    else:
        step, frozen_abs = update, {"policy_base": p_base, "value_base": v_base}
    groups = {"params": (state["params"], frozen_abs), "opt": state["opt_state"], "batch": batch_abs,
              "policy_base": p_base, "value_base": v_base, "adapters": state["params"]}
    # 6ND over each base's matmuls for the policy (over Tp) and the value model (over Tv), although only the
    # adapters train: approximate (the frozen weights need no weight gradient; the value model needs no LM head)
    flops = model_flops(cfg, batch, Tp) + model_flops(rcfg, batch, Tv)
    rollout_batch = 2 * batch if rollout_batch is None else rollout_batch
    return _spec(step, state, frozen_abs, batch_abs, mesh, groups, model_flops=flops, report={
        "shape": f"{batch} x {Tp} (value model: {Tv}; {N} response slots)", "value_seq": Tv, "response_len": N,
        "shared_base": shared, "rollout_batch": rollout_batch,
        "kv_cache_bytes": kv_cache_bytes(cfg, mesh, rollout_batch, Tp)})


STAGES: dict[str, Callable[..., StepSpec]] = {"sft": build_sft, "rm": build_rm, "ppo": build_ppo}
