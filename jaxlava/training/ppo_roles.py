"""The four PPO roles on one mesh, with one base model in memory per distinct base checkpoint (spec §4.1).

- policy    = the SFT base + a trainable adapter (from the RL-init adapter, or fresh: no change to the base);
- reference = the same base + the RL-init adapter, frozen (or no adapter at all); never a copy of the base;
- reward    = the RM base + the RM adapter + the reward head, frozen (with --reward-ensemble, more adapter + head
              pairs on the same base, their scores averaged);
- value     = the RM base + an adapter initialised from the RM adapter (trainable) + a zero-initialised head.
When the policy and the reward model share a base checkpoint, one model serves all four roles.
"""
from __future__ import annotations

import dataclasses
import json
import os

import jax
import numpy as np

from jaxlava import sharding
from jaxlava.data.processor import LlavaProcessor
from jaxlava.lora import LoraConfig, check_lora, init_lora, lora_shardings
from jaxlava.model.heads import init_scalar_head
from jaxlava.peft_io import load_adapter, load_reward_model_adapter


class RoleError(ValueError):
    """The given models and adapters cannot form the PPO roles (names the files at fault)."""


@dataclasses.dataclass
class Roles:
    policy_base: object  # LlavaModel: policy and reference
    value_base: object  # LlavaModel: reward and value (the same object as policy_base for a shared checkpoint)
    processor: LlavaProcessor  # the policy's (queries, responses)
    reward_processor: LlavaProcessor  # the reward model's (its prompt and images)
    policy_lora: LoraConfig
    value_lora: LoraConfig  # the RM adapter's config, also used by the value adapter
    init_policy: dict  # where the trainable policy adapter starts
    reference: dict | None  # the frozen reference adapter; None = the bare base
    reward_lora: dict
    reward_head: dict
    reward_facts: bool  # the RM was trained with facts in its prompt: the prompts must carry them
    reward_facts_first: bool = False  # ... at the start of the first user turn (RMConfig.facts_first)
    reward_image_pool: int = 0  # the RM sees its images at 1/N of their resolution (RMConfig.image_pool)
    # more reward models on the same base (--reward-ensemble): ({"lora", "head"}, ...); the score is the mean
    reward_extra: tuple = ()

    def bases(self) -> list:
        """The distinct base models held in memory."""
        return [self.policy_base] if self.value_base is self.policy_base else [self.policy_base, self.value_base]

    def initial_params(self) -> dict:
        """The trainable PPO state: {policy adapter, value adapter (a copy of the RM adapter), value head (zeros)}."""
        copy = lambda t: jax.tree.map(lambda a: a.copy(), t)  # noqa: E731
        return {"policy": copy(self.init_policy), "value": copy(self.reward_lora),
                "value_head": init_scalar_head(None, self.value_base.config.text.hidden_size, zero=True)}


def _same_checkpoint(a: str, b: str) -> bool:
    """Whether folders `a` and `b` hold one checkpoint: the same folder, or two whose config and weight files are
    the same files (hard links, as a copied run folder made with `cp -al` has)."""
    a, b = (os.path.realpath(p.rstrip("/")) for p in (a, b))
    if a == b:
        return True
    names = _checkpoint_files(a)
    if not any(n.endswith(".safetensors") for n in names) or names != _checkpoint_files(b):
        return False
    return all(os.path.samefile(os.path.join(a, n), os.path.join(b, n)) for n in names)


def _checkpoint_files(path: str) -> list[str]:
    """The config and weight files of a checkpoint folder (none when it is not a folder), sorted."""
    return sorted(n for n in (os.listdir(path) if os.path.isdir(path) else [])
                  if n.endswith(".safetensors") or n == "config.json")


def reward_base_of(adapter_dir: str, given: str | None, flag: str = "--reward-adapter") -> str:
    """The RM's base checkpoint: the one given, which must agree with the adapter's own record of its base when it
    has one, else that record."""
    path = adapter_dir if os.path.exists(os.path.join(adapter_dir, "adapter_config.json")) else \
        os.path.join(adapter_dir, "adapter_model")
    try:
        with open(os.path.join(path, "adapter_config.json")) as f:
            recorded = json.load(f).get("base_model_name_or_path")
    except FileNotFoundError:
        raise RoleError(f"{flag} {adapter_dir}: no adapter_config.json (train one with train/rm.py)") \
            from None
    if given is None:
        if not recorded:
            raise RoleError(f"{flag} {adapter_dir} does not record its base model: pass --reward-base")
        return recorded
    if recorded and os.path.exists(recorded) and not _same_checkpoint(recorded, given):
        raise RoleError(f"{flag} {adapter_dir} was trained on {recorded}, but --reward-base is {given}; "
                        "a reward adapter only scores correctly on its own base")
    return given


def _reward_reading(adapter_dir: str, default: bool) -> tuple[bool, bool, int]:
    """Whether the RM run behind `adapter_dir` put facts in its prompt, whether before the response, and its image
    pooling (its config.json), else (`default`, False, 0)."""
    cfg = os.path.join(os.path.dirname(os.path.abspath(adapter_dir.rstrip("/"))), "config.json")
    if os.path.exists(cfg):
        with open(cfg) as f:
            rec = json.load(f)
        return not rec.get("no_facts", False), bool(rec.get("facts_first", False)), int(rec.get("image_pool", 0))
    return default, False, 0


def place_adapter(tree, mesh):
    """An adapter tree on `mesh`, each leaf as the rule table shards it."""
    shards = lora_shardings(tree, mesh)
    return jax.tree.map(lambda a, s: jax.device_put(np.asarray(a), s), tree, shards)


def load_roles(cfg, mesh, build_model) -> Roles:
    """Build the roles of a PPO run on `mesh`.  `build_model(init_path)` loads one base model (sharded)."""
    reward_base_path = reward_base_of(cfg.reward_adapter, cfg.reward_base)
    policy_base = build_model(cfg.init)
    shared = _same_checkpoint(reward_base_path, cfg.init)
    value_base = policy_base if shared else build_model(reward_base_path)
    try:
        rlora, rcfg, rhead = load_reward_model_adapter(cfg.reward_adapter, value_base.config)
        check_lora(rlora, value_base.config)
    except ValueError as e:
        raise RoleError(f"--reward-adapter {cfg.reward_adapter} does not fit the base {reward_base_path}: {e}") \
            from None
    if cfg.policy_adapter:
        try:
            init, pcfg = load_adapter(cfg.policy_adapter, policy_base.config)
        except (ValueError, FileNotFoundError) as e:
            raise RoleError(f"--policy-adapter {cfg.policy_adapter}: {e}") from None
        reference = place_adapter(init, mesh)
    else:
        pcfg = cfg.adapter
        init, reference = init_lora(policy_base.config, pcfg, jax.random.key(cfg.seed)), None
    extra = _ensemble(cfg, reward_base_path, value_base, rcfg, mesh)
    processor = LlavaProcessor.from_pretrained(cfg.init)
    reward_processor = processor if shared else LlavaProcessor.from_pretrained(reward_base_path)
    if len(processor.tokenizer) != len(reward_processor.tokenizer):
        raise RoleError(f"the policy ({cfg.init}) and the reward model ({reward_base_path}) use different "
                        "tokenizers; the value model reads the policy's tokens, so they must share one")
    return Roles(policy_base, value_base, processor, reward_processor, pcfg, rcfg, place_adapter(init, mesh), reference,
                 place_adapter(rlora, mesh), jax.device_put(rhead), *_reward_reading(cfg.reward_adapter, True),
                 reward_extra=extra)


def _ensemble(cfg, reward_base_path: str, value_base, rcfg: LoraConfig, mesh) -> tuple:
    """The --reward-ensemble members on `mesh`: each must share the main reward model's base, adapter shape and
    prompt (facts or not, where, image pooling), since one set of reward inputs and one jitted pass serve all."""
    out, reading = [], _reward_reading(cfg.reward_adapter, True)
    for path in cfg.reward_ensemble:
        flag = f"--reward-ensemble {path}"
        base = reward_base_of(path, cfg.reward_base, "--reward-ensemble")
        if not _same_checkpoint(base, reward_base_path):
            raise RoleError(f"{flag} was trained on {base}, the main reward model on {reward_base_path}; "
                            "ensemble members must share one base")
        try:
            lora, lcfg, head = load_reward_model_adapter(path, value_base.config)
            check_lora(lora, value_base.config)
        except (ValueError, FileNotFoundError) as e:
            raise RoleError(f"{flag} does not fit the base {reward_base_path}: {e}") from None
        if lcfg != rcfg:
            raise RoleError(f"{flag}: its adapter ({lcfg}) differs from --reward-adapter's ({rcfg})")
        if (its := _reward_reading(path, True)) != reading:
            raise RoleError(f"{flag} reads a different prompt (facts, facts first, image pooling: {its}) from "
                            f"--reward-adapter ({reading})")
        out.append({"lora": place_adapter(lora, mesh), "head": jax.device_put(head)})
    return tuple(out)


def batch_shards(mesh) -> int:
    """How many ways the rule table splits a batch on `mesh`."""
    axes = sharding.batch_sharding(mesh, 1).spec[0]
    axes = (axes,) if isinstance(axes, str) else (axes or ())
    return int(np.prod([mesh.shape[a] for a in axes]))


def check_mesh_divides(cfg, mesh) -> None:
    """The rollout and update batches must split evenly over the mesh's batch axes."""
    shards = batch_shards(mesh)
    for name in ("rollout_batch_size", "step_batch_size"):
        n = getattr(cfg, name)
        if n % shards:
            raise ValueError(f"--{name.replace('_', '-')} {n} does not split over the mesh's {shards} batch shards "
                             f"(--mesh {cfg.mesh}); choose a multiple of {shards}")
    if cfg.rollout_batch_size % cfg.step_batch_size:
        raise ValueError(f"--rollout-batch-size {cfg.rollout_batch_size} is not a multiple of --step-batch-size "
                         f"{cfg.step_batch_size}")
