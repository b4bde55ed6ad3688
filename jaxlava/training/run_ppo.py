"""The PPO run (LLaVA-RLHF §4): its config, run presets, the PPO step (a rollout, then epochs of minibatch updates)
and `run(cfg)`, on the shared loop (`jaxlava.training.loop.fit`: resume, checkpoints, metrics, NaN guard).

The math and the jitted update are the stage's own (`jaxlava.ppo`); roles are `ppo_roles`, rollouts `rollout`;
`train/ppo.py` is the command line.  On the shapes world a default run builds what it lacks first (SFT, RL-init,
reward model), each cached under runs/.
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
import tyro
from flax import nnx

from jaxlava import distributed, ppo, sharding
from jaxlava.data.pipeline import ppo_prompt_batches
from jaxlava.data.storage import SubsetSource, open_source
from jaxlava.eval import shapes as shapes_eval
from jaxlava.lora import LoraConfig
from jaxlava.peft_io import save_adapter, save_reward_head
from jaxlava.shapes.assets import world_exists
from jaxlava.training import ppo_roles, rollout, run_rm, run_sft, runs
from jaxlava.training.cli import parse, preset_default
from jaxlava.training.loop import Hook, fit
from jaxlava.training.metrics import compile_count, format_row
from jaxlava.training.optim import OptimConfig, make_optimizer, make_schedule, per_run_step
from jaxlava.training.step import StepOutput, init_state

PLOT_KEYS = ("score", "kl", "response_length", "reward_total", "value_loss", "eval_score", "eval_kl",
             "eval_chair_i")
# held-out object hallucination of the describe prompts (shapes world): jaxlava.eval.shapes.description_scores
HALLUCINATION_KEYS = ("chair_i", "chair_s", "recall", "repeats")
DEFAULT_RLINIT = "runs/rlinit/adapter"
DEFAULT_RM = "runs/rm/adapter"


@dataclasses.dataclass
class PPOConfig(runs.RunConfig):
    """PPO with the fact-augmented reward model (spec §4); defaults are the paper's."""
    init: str | None = run_sft.DEFAULT_MODEL  # the policy's base: an SFT model (llava-hf folder)
    out: str = "runs/ppo"
    steps: int | None = None  # PPO steps (each: one rollout batch and its epochs of updates); default: --epochs
    batch_size: tyro.conf.Suppress[int] = 0  # unused: PPO's batches are --rollout-batch-size / --step-batch-size
    # the RL-init adapter (PEFT, train/sft.py --lora): the policy starts from it and it is the frozen reference;
    # 'None': both start as the bare base
    policy_adapter: str | None = DEFAULT_RLINIT
    reward_adapter: str = DEFAULT_RM  # the reward model (train/rm.py RUN_DIR/adapter)
    reward_base: str | None = None  # the RM's base model (default: the one its adapter records)
    # ours, empty by default (the paper scores with one reward model): more reward models (train/rm.py
    # RUN_DIR/adapter, e.g. trained with other seeds) on the same base and prompt; the score is the mean of
    # --reward-adapter's and theirs
    reward_ensemble: tuple[str, ...] = ()
    epochs: float = 4.0  # passes over the prompts when --steps is not given
    rollout_batch_size: int = 512  # responses sampled per PPO step (global): prompts × max(--prompt-group, 1)
    # ours, off by default (the paper samples each prompt once): sample each prompt this many times in one rollout
    # batch and subtract the mean reward-model score of its responses from each (a per-prompt baseline, so that
    # PPO learns which response to an image is better rather than which images score high); 0 = off
    prompt_group: int = 0
    step_batch_size: int = 256  # rollouts per optimizer update (global); microbatches: --optim.grad-accum
    noptepochs: int = 2  # passes over each rollout batch
    max_new_tokens: int = 896  # response slots T (also the length normaliser)
    # ours, empty by default (the paper's mix): train on the PPO prompts of these types only: general (open
    # questions and descriptions, caption_type 1), mc (multiple choice, 2-5), yesno (6-7); the held-out
    # evaluation keeps every type
    prompt_types: tuple[Literal["general", "mc", "yesno"], ...] = ()
    # queries longer than this, counting the image as one token as the paper does (spec §4.2), are dropped with
    # their data; the rest are left padded to this width plus the image placeholders
    max_prompt_len: int = 128
    rm_seq_len: int = 1536  # reward-model inputs are left padded to this width
    temperature: float = 1.0  # sampling temperature of rollouts (also divides the logits of every logprob)
    kl_coef: float = 0.1  # β of the per-token penalty −β·max(log π − log π_ref, 0)
    stop_penalty: float = -8.0  # added to the reward of a response without EOS
    length_score: float = -10.0  # length term (n / T) · length_bonus · this
    correct_score: float = 2.0  # symbolic correctness term c · this (c by the prompt's caption_type)
    reward_scale: float = 10.0  # shaped rewards are multiplied by this before GAE
    gamma: float = 1.0  # GAE discount
    lam: float = 1.0  # GAE λ
    clip: float = 0.2  # policy ratio clip
    value_clip: float = 0.2  # value clip (absolute, in the scaled reward units)
    vf_coef: float = 0.1  # weight of the value loss
    # ours, off by default: clip the policy adapter's gradient and the value's (adapter and head) each by its own
    # norm; the paper clips one norm over both, so a large value-loss gradient shrinks the policy's step
    clip_per_role: bool = False
    # fixes of the original's quirks (spec §8); the paper presets keep the paper's behaviour
    terminal_at_eos: bool = False  # terminal reward at the response's last token (paper: at slot T-1, quirk 2)
    mask_pads: bool = False  # average losses and whiten over response tokens only (paper: all slots, quirk 2)
    question_stop: bool = False  # the paper's rule: a '?' ends the response and costs the no-EOS penalty (quirk 4)
    # ours: a yes/no prompt's symbolic reward reads the answer as POPE's parser does ("red circle no." is a No),
    # for a policy that names the object before its verdict; off: the paper's rule (its first word, "No" / "Yes")
    yesno_pope: bool = False
    score_chunk: int | None = None  # rows per scoring pass (the paper: 16 per device); None: all at once
    eval_prompts: int = 64  # held-out prompts for the before/after comparison (greedy responses); 0: off
    adapter: LoraConfig = dataclasses.field(default_factory=LoraConfig)
    """A fresh policy adapter's shape, when --policy-adapter None."""
    optim: OptimConfig = dataclasses.field(default_factory=lambda: OptimConfig(
        lr=3e-5, schedule="cosine", warmup_steps=5, max_grad_norm=1.0))
    """AdamW over {policy adapter, value adapter, value head}; the schedule steps once per PPO step."""


_PAPER = dict(compute_dtype="bfloat16", remat=True, scan_layers=True, checkpoint_every=10, eval_every=50,
              question_stop=True, score_chunk=16, optim=OptimConfig(lr=3e-5, schedule="cosine", warmup_steps=5,
                                                                     max_grad_norm=1.0, grad_accum=2))
RUN_PRESETS = {
    # the CPU miniature; lr from docs/decisions.md 15 (2e-4 barely moves in 30 steps, 3e-3 collapses to empty answers);
    # 96 response slots hold the world's longest descriptions (40 cut a quarter of them: decisions 42)
    "shapes": PPOConfig(steps=40, rollout_batch_size=32, step_batch_size=16, max_new_tokens=96, rm_seq_len=512,
                        checkpoint_every=10, eval_every=20, eval_prompts=96,
                        optim=OptimConfig(lr=1e-3, schedule="cosine", warmup_steps=3, max_grad_norm=1.0)),
    "llava-7b-224": PPOConfig(preset="llava-7b-224", **_PAPER),  # 7B policy, 13B reward/value (--reward-base)
    "llava-13b-336": PPOConfig(preset="llava-13b-336", **_PAPER),
}


def ensure_inputs(cfg: PPOConfig) -> None:
    """On an embedded world with the default paths (or --build-missing), build the SFT model, the RL-init adapter
    and the reward model when missing; any other missing input is an error naming it."""
    run_sft.ensure_sft(cfg)
    upstream = [("policy_adapter", DEFAULT_RLINIT, run_sft.run, run_sft.LORA_PRESETS, "RL-init adapter",
                 "train/sft.py --lora, or pass --policy-adapter None"),
                ("reward_adapter", DEFAULT_RM, run_rm.run, run_rm.RUN_PRESETS, "reward model", "train/rm.py")]
    for field, default, train, presets, what, how in upstream:
        path = getattr(cfg, field)
        if not path or os.path.isdir(path):
            continue
        flag = "--" + field.replace("_", "-")
        if not (cfg.preset in runs.EMBEDDED_WORLDS and (cfg.build_missing or path == default)):
            raise FileNotFoundError(f"{flag} {path}: no {what} there (train one with {how})")
        print(f"no {what} at {path}: training it first", flush=True)
        train(dataclasses.replace(presets[cfg.preset], data=cfg.data, init=cfg.init,
                                  out=os.path.dirname(path.rstrip("/")), mesh=cfg.mesh))


def rollout_config(cfg: PPOConfig) -> rollout.RolloutConfig:
    names = {f.name for f in dataclasses.fields(rollout.RolloutConfig)}
    return rollout.RolloutConfig(**{n: getattr(cfg, n) for n in names})


def repeat_prompts(batch: dict, group: int) -> dict:
    """Each prompt of a host batch `group` times in a row (arrays and lists along their first axis)."""
    if group <= 1:
        return batch

    def rep(v):
        if isinstance(v, np.ndarray):
            return np.repeat(v, group, axis=0)
        return [x for x in v for _ in range(group)] if isinstance(v, (list, tuple)) else v
    return {k: rep(v) for k, v in batch.items()}


def prompt_putter(mesh, group: int = 0):
    """Host prompt batch -> {"device": global arrays, "host": metadata lists and numpy}; with `group` > 1 each
    prompt is repeated that many times first (--prompt-group)."""
    device_keys = ("input_ids", "attention_mask", "pixel_values", "reward_pixel_values")

    def put(batch: dict) -> dict:
        batch = repeat_prompts(batch, group)
        dev = distributed.global_batch({k: batch[k] for k in device_keys if k in batch}, mesh)
        return {"device": dev, "host": {k: v for k, v in batch.items() if k not in device_keys}}
    return put


def prompts_per_step(cfg: PPOConfig) -> int:
    """Distinct prompts in one rollout batch (each sampled max(--prompt-group, 1) times)."""
    k, procs = max(cfg.prompt_group, 1), jax.process_count()
    if cfg.prompt_group == 1 or cfg.rollout_batch_size % (k * procs):
        raise ValueError(f"--prompt-group {cfg.prompt_group}: it must be 0 (off) or at least 2, and "
                         f"--rollout-batch-size {cfg.rollout_batch_size} must split into groups of {k} on each of "
                         f"{procs} processes")
    return cfg.rollout_batch_size // k


def updates_per_step(cfg: PPOConfig) -> int:
    """Optimizer updates in one PPO step: `noptepochs` passes of rollout/step-batch minibatches."""
    return cfg.noptepochs * (cfg.rollout_batch_size // cfg.step_batch_size)


def make_ppo_step(cfg: PPOConfig, roles, graphs, scorer, tx, total: int, mesh):
    """`step(state, frozen, batch) -> (TrainState, StepOutput)`: one rollout, then `noptepochs` shuffled passes of
    minibatch updates (one optimizer update each).  Everything random is a function of (seed, PPO step)."""
    R, S = cfg.rollout_batch_size, cfg.step_batch_size
    per_step = updates_per_step(cfg)
    loss_cfg = ppo.LossConfig(cfg.clip, cfg.value_clip, cfg.vf_coef, cfg.temperature, cfg.mask_pads)
    schedule = per_run_step(make_schedule(cfg.optim, total), per_step)
    update = jax.jit(ppo.make_update_step(graphs, loss_cfg, tx, cfg.optim.grad_accum, schedule), donate_argnums=0)

    @jax.jit
    def take(rows, idx):
        return jax.tree.map(lambda x: sharding.constrain(jnp.take(x, idx, axis=0), ("batch",) + (None,) * (x.ndim - 1)),
                            rows)

    rcfg = rollout_config(cfg)

    def step(state, frozen, batch):
        ppo_step = int(state.step) // per_step
        rows, stats = rollout.rollout(roles, state.params, frozen, batch["device"], batch["host"], ppo_step, rcfg,
                                      scorer, mesh)
        t0 = time.perf_counter()
        outs = []
        for epoch in range(cfg.noptepochs):
            perm = np.random.default_rng([cfg.seed, ppo_step, epoch]).permutation(R)
            for i in range(R // S):
                state, out = update(state, frozen, take(rows, jnp.asarray(perm[i * S:(i + 1) * S])))
                outs.append(out)
        outs = jax.device_get(outs)
        stats["seconds_update"] = time.perf_counter() - t0
        metrics = {k: float(np.mean([o.metrics[k] for o in outs])) for k in outs[0].metrics}
        metrics.update(stats, compiles=compile_count())
        return state, StepOutput(loss=float(np.mean([o.loss for o in outs])),
                                 finite=bool(all(o.finite for o in outs)), metrics=metrics)
    return step


def query_width(cfg, processor) -> int:
    """Tokens of a padded query: `cfg.max_prompt_len` with the image counted once, plus the other placeholders."""
    return cfg.max_prompt_len + processor.num_image_tokens - 1


PROMPT_TYPES = {"general": (ppo.AnswerType.GENERAL,),
                "mc": tuple(ppo.AnswerType(c) for c in range(ppo.AnswerType.A_IN_ABCD, ppo.AnswerType.D_IN_ABCD + 1)),
                "yesno": (ppo.AnswerType.NO_IN_YESNO, ppo.AnswerType.YES_IN_YESNO)}


def select_prompt_types(source, types, data: str):
    """The PPO prompts whose caption_type is of `types` (names of PROMPT_TYPES; empty: every prompt)."""
    if not types:
        return source
    wanted = {int(c) for t in types for c in PROMPT_TYPES[t]}
    keep = [i for i in range(len(source)) if int(source[i].get("caption_type", 1)) in wanted]
    names = " ".join(types)
    if not keep:
        raise ValueError(f"--prompt-types {names}: none of the {len(source)} PPO prompts in {data} is of these types")
    print(f"--prompt-types {names}: PPO trains on {len(keep)} of the {len(source)} prompts in {data}", flush=True)
    return SubsetSource(source, keep)


def check_prompts(source, roles, cfg: PPOConfig, sample: int = 256) -> None:
    """How many of the first prompts fit --max-prompt-len: none is an error (the pipeline would wait forever for
    a batch), some is a printed count (they are dropped with their metadata, spec §4.2)."""
    from jaxlava.data.templates import encode_prompt
    p, n = roles.processor, min(sample, len(source))
    width = query_width(cfg, roles.processor)
    too_long = 0
    for i in range(n):
        turns = [t for t in source[i]["conversations"] if t["from"] == "human"][:1]
        ids = encode_prompt(p.tokenizer, turns, image_token_id=p.image_token_id, num_image_tokens=p.num_image_tokens)
        too_long += len(ids) > width
    if too_long == n:
        raise ValueError(f"none of the first {n} PPO prompts in {cfg.data} fits --max-prompt-len {cfg.max_prompt_len} "
                         "(the image counted as one token); raise it")
    if too_long:
        print(f"{too_long} of the first {n} PPO prompts exceed --max-prompt-len {cfg.max_prompt_len} and are dropped")


def describe_judgements(tokenizer, response, host: dict, mesh) -> list:
    """The shapes judges' verdicts (`jaxlava.eval.shapes.prompt_judgement`) on the responses of one rollout
    (`response`: its truncated response tokens) to the world's describe prompts, against each record's objects.
    This process's rows (those of `host`); on several processes each judges its own share."""
    texts = tokenizer.batch_decode(distributed.local_rows(response, mesh), skip_special_tokens=True)
    found = (shapes_eval.prompt_judgement(turns, text, facts)
             for text, turns, facts in zip(texts, host["conversations"], host["facts"]))
    return [j for j in found if j is not None]


def held_out_eval(cfg: PPOConfig, roles, scorer, frozen, mesh, put):
    """`evaluate(params) -> {score, kl, response_length, ...}`: greedy responses to held-out prompts (the
    ppo_prompt test split, else the first train prompts), scored like rollouts.  On a shapes world it adds the
    object hallucination of the responses to the describe prompts (`HALLUCINATION_KEYS`: CHAIR-i, CHAIR-s,
    recall against each image's objects, and repeats) and how many there were (`descriptions`)."""
    if cfg.eval_prompts <= 0:
        print("held-out evaluation off (--eval-prompts 0)")
        return lambda params: {}
    split = "test" if os.path.isdir(os.path.join(cfg.data, "ppo_prompt", "test")) else "train"
    source = open_source(cfg.data, "ppo_prompt", split)
    shards = ppo_roles.batch_shards(mesh)
    unit = math.lcm(shards, max(cfg.prompt_group, 1))  # the scorer centres groups of --prompt-group rows
    size = min(cfg.rollout_batch_size, cfg.eval_prompts, len(source)) // unit * unit
    if size == 0:
        print(f"held-out evaluation off: {len(source)} {split} prompts do not fill one batch on {shards} shards")
        return lambda params: {}
    n = min(cfg.eval_prompts, len(source)) // size
    it = ppo_prompt_batches(source, roles.processor, batch_size=size // jax.process_count(),
                            shuffle=False, num_epochs=1, buckets=(query_width(cfg, roles.processor),),
                            max_prompt_len=query_width(cfg, roles.processor),
                            reward_processor=separate_reward_processor(roles))
    batches = [put(b) for _, b in zip(range(n), it)]  # prompts over --max-prompt-len are dropped
    if not batches:
        print(f"held-out evaluation off: no {split} prompt fits --max-prompt-len {cfg.max_prompt_len}")
        return lambda params: {}
    rcfg = dataclasses.replace(rollout_config(cfg), prompt_group=0)  # distinct prompts, greedy: no groups
    keys = ("score", "kl", "response_length", "stop_rate", "correct")
    judge = world_exists(cfg.data)

    def evaluate(params) -> dict:
        rows, judged = [], []
        for b in batches:
            updates, stats = rollout.rollout(roles, params, frozen, b["device"], b["host"], 0, rcfg, scorer, mesh,
                                             temperature=0.0)
            rows.append(stats)
            if judge:
                judged += describe_judgements(roles.processor.tokenizer, updates["response"], b["host"], mesh)
        out = {k: float(np.mean([r[k] for r in rows])) for k in keys}
        if judged:
            scores = shapes_eval.description_scores(judged)
            out.update({k: float(scores[k]) for k in HALLUCINATION_KEYS}, descriptions=scores["count"])
        return out
    return evaluate


def separate_reward_processor(roles):
    """The reward model's processor where it differs from the policy's (another image size), else None."""
    return None if roles.reward_processor is roles.processor else roles.reward_processor


def frozen_tree(roles) -> dict:
    """What the jitted passes read but never train: the bases' states, the reference and the reward adapter."""
    _, policy_state = nnx.split(roles.policy_base)
    value_state = policy_state if roles.value_base is roles.policy_base else nnx.split(roles.value_base)[1]
    return {"policy_base": policy_state, "value_base": value_state, "reference": roles.reference,
            "reward_lora": roles.reward_lora, "reward_head": roles.reward_head,
            "reward_extra": list(roles.reward_extra)}


def write_outputs(cfg: PPOConfig, roles, params) -> None:
    """RUN_DIR/adapter (the policy, PEFT), RUN_DIR/value/ (value adapter + head)."""
    params = jax.device_get(params)
    save_adapter(os.path.join(cfg.out, "adapter"), params["policy"], roles.policy_lora,
                 base_model_name_or_path=cfg.init)
    save_adapter(os.path.join(cfg.out, "value", "adapter_model"), params["value"], roles.value_lora,
                 base_model_name_or_path=cfg.reward_base or ppo_roles.reward_base_of(cfg.reward_adapter, None))
    save_reward_head(os.path.join(cfg.out, "value"), {"w": params["value_head"]["w"],
                                                      "b": params["value_head"]["b"]})


def run(cfg: PPOConfig) -> dict:
    """PPO; writes RUN_DIR/adapter (policy), RUN_DIR/value/, metrics.  Returns {"before", "after", "last"}."""
    distributed.maybe_initialize()
    compile_count()  # start counting compilations now
    prompts_per_step(cfg)  # a --prompt-group that does not divide the batch fails before anything loads
    ensure_inputs(cfg)
    mesh = sharding.make_mesh(cfg.mesh)
    ppo_roles.check_mesh_divides(cfg, mesh)
    with sharding.use_mesh(mesh):
        world = runs.world_for(cfg)
        roles = ppo_roles.load_roles(cfg, mesh, lambda path: runs.build_model(
            dataclasses.replace(cfg, init=path), mesh, world))
        source = select_prompt_types(open_source(cfg.data, "ppo_prompt", "train"), cfg.prompt_types, cfg.data)
        check_prompts(source, roles, cfg)
        total = cfg.steps or max(1, int(cfg.epochs * len(source) // prompts_per_step(cfg)))
        tx = make_optimizer(cfg.optim, total, updates_per_step(cfg),
                            clip_groups=ppo.ROLES if cfg.clip_per_role else None)
        graphs = ppo.Graphs(nnx.graphdef(roles.policy_base), nnx.graphdef(roles.value_base), roles.policy_lora,
                            roles.value_lora)
        scorer = rollout.make_scorer(roles, graphs, rollout_config(cfg))
        frozen = frozen_tree(roles)
        state = init_state(roles.initial_params(), tx, cfg.seed)
        put = prompt_putter(mesh, cfg.prompt_group)
        data = ppo_prompt_batches(source, roles.processor, batch_size=prompts_per_step(cfg) // jax.process_count(),
                                  seed=cfg.seed, buckets=(query_width(cfg, roles.processor),),
                                  max_prompt_len=query_width(cfg, roles.processor),
                                  num_workers=cfg.num_workers,
                                  reward_processor=separate_reward_processor(roles))
        evaluate = held_out_eval(cfg, roles, scorer, frozen, mesh, prompt_putter(mesh))
        before = evaluate(state.params)
        print("before PPO (held out): " + format_row(before), flush=True)
        step = make_ppo_step(cfg, roles, graphs, scorer, tx, total, mesh)
        state, last = fit(run_dir=cfg.out, step_fn=step, state=state, frozen=frozen, data=data, total_steps=total,
                          checkpoint_every=cfg.checkpoint_every, config={"stage": "ppo", **runs.as_dict(cfg)},
                          put=put, hooks=[Hook(cfg.eval_every, lambda _, s: {
                              f"eval_{k}": v for k, v in evaluate(s.params).items()})], keep=cfg.keep_checkpoints,
                          stop_after=cfg.stop_after, plot_keys=PLOT_KEYS)
        after = {k[len("eval_"):]: v for k, v in last.items() if k.startswith("eval_")}
        params = distributed.host_copy(state.params)  # a collective; process 0 writes
        if distributed.is_main_process():
            write_outputs(cfg, roles, params)
    print_comparison(before, after)
    return {"before": before, "after": after, "last": last}


def print_comparison(before: dict, after: dict) -> None:
    keys = [k for k in ("score", "kl", "response_length", "stop_rate", "correct", *HALLUCINATION_KEYS)
            if k in before and k in after]
    if not keys:
        return
    print("\nheld-out prompts, greedy responses: before PPO -> after PPO")
    for k in keys:
        print(f"  {k:16s} {before[k]:+9.4f} -> {after[k]:+9.4f}")


def main(argv: list[str], description: str | None = None) -> dict:
    return run(parse(PPOConfig, argv, description=description, default=preset_default(argv, RUN_PRESETS)))
