"""The reproduction's stages: one shapes world, then per seed the grounding stage (when the recipe has one), SFT,
RL-init, the reward models with and without facts, their on-policy audit (when the recipe has one), PPO with
each, and the shapes judges on SFT and both PPO policies; then the report (`report.py`).

Every stage runs the library's own entry point (`run_sft.run`, `run_rm.run`, `run_ppo.run`,
`jaxlava.eval.shapes.run`) on its folder OUT/seed<S>/<stage>.  A stage that finished leaves `stage.json` there
(its settings, wall time and returned numbers) and is skipped by a rerun; one with other settings is an error
that names what changed (a cached stage never mixes recipes).  A stage cut short (a time limit) resumes: the
trainers from their checkpoints, the judges from their answers.jsonl.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import time

from jaxlava.eval import shapes as shapes_eval
from jaxlava.fileio import jsonable, write_json
from jaxlava.reproduce import carry, report
from jaxlava.reproduce.recipe import ReproduceConfig, parse_config, recipe_of
from jaxlava.shapes.assets import world_exists
from jaxlava.shapes.cli import parse_args, world_config
from jaxlava.shapes.world import FACTCHECK_SPLITS, GROUND_SPLITS, ShapesConfig, load_world_info, write_world
from jaxlava.training import rm_audit, rm_pairs, run_ppo, run_rm, run_sft

# the SFT model is judged right after its last phase, so that the SFT bar is known before RLHF starts
STAGES = ("ground", "sft", "judge_sft", "rlinit", report.PAIRS, "rm_read", "rm_facts", "rm_nofacts", report.AUDIT,
          "ppo_facts", "ppo_nofacts", *(f"judge_{key}" for key, _, run in report.SYSTEMS if run))
REPEAT_STRIDE = 100  # PPO repeat r of seed S runs with seed S + --ppo-seed-offset + REPEAT_STRIDE * r
REPEATED = ("ppo_facts", "ppo_nofacts", "judge_rlhf_nofacts", "judge_fact_rlhf")  # the stages a PPO repeat reruns


def stage_names(repeats: int = 1, sft_more: int = 0, ensemble: int = 1, ground_more: int = 0) -> list[str]:
    """Every stage of a seed in order: STAGES with the further grounding phases after the grounding stage, the
    further SFT phases after SFT and the further reward models of each kind after the first ones, then each further
    PPO repeat's runs and judges."""
    at, rm_at = STAGES.index(report.SFT) + 1, STAGES.index(report.RM["nofacts"]) + 1
    return [GROUND, *(ground_phase(i) for i in range(1, ground_more + 1)), *STAGES[1:at],
            *(sft_phase(i) for i in range(1, sft_more + 1)), *STAGES[at:rm_at],
            *(member(f, k) for k in range(1, ensemble) for f in report.RM.values()), *STAGES[rm_at:],
            *(f"{n}{report.repeat_suffix(r)}" for r in range(1, repeats) for n in REPEATED)]


def member(folder: str, k: int) -> str:
    """Reward model k of a kind (--rm-ensemble): the first is `folder` itself, the others `folder`_e<k>."""
    return f"{folder}_e{k}" if k else folder


def is_rm(name: str) -> bool:
    """Whether stage `name` trains a reward model (any member of either kind)."""
    return re.sub(r"_e\d+$", "", name) in report.RM.values()


SFT_MORE = "sft_more"  # OUT/seed<S>/sft_more<i>: SFT phase i + 1 (--sft-more)


def sft_phase(i: int) -> str:
    """The stage of SFT phase i + 1, trained on from phase i's model (--sft-more)."""
    return f"{SFT_MORE}{i}"


def names_of(cfg) -> list[str]:
    """Every stage a seed of `cfg` may run, in order (a grounding phase that is not needed is skipped)."""
    return stage_names(cfg.ppo_repeats, len(cfg.sft_more), cfg.rm_ensemble, len(cfg.ground_more))


def sft_more_phases(cfg) -> list[tuple[int, float]]:
    """--sft-more's items STEPS:LR as (steps, lr); an item that is not two positive numbers is an error."""
    return _phases(cfg.sft_more, "--sft-more")


def ground_more_phases(cfg) -> list[tuple[int, float]]:
    """--ground-more's items STEPS:LR as (steps, lr)."""
    return _phases(cfg.ground_more, "--ground-more")


def _phases(items, flag: str) -> list[tuple[int, float]]:
    out = []
    for item in items:
        try:
            steps, lr = item.split(":")
            phase = (int(steps), float(lr))
        except ValueError:
            phase = (0, 0.0)
        if phase[0] < 1 or not phase[1] > 0:
            raise SystemExit(f"{flag} expects STEPS:LR items with positive numbers, e.g. 1500:1e-3; got {item!r}")
        out.append(phase)
    return out


# fields of a stage config that do not change its result, or that the layout of OUT fixes (paths: OUT may move):
# a cached stage is reused whatever they are
OPERATIONAL = ("mesh", "num_workers", "stop_after", "build_missing", "keep_checkpoints", "checkpoint_every",
               "eval_every", "limit", "data", "out", "init", "policy_adapter", "reward_adapter", "model",
               "reward_adapters", "extra_data", "reward_ensemble")


class StageMismatch(RuntimeError):
    """A cached stage was made with other settings than the ones asked for now."""


GROUND, GROUND_MORE, ground_phase = report.GROUND, report.GROUND_MORE, report.ground_phase


def ground_phases_needed(cfg, seed: int) -> int:
    """How many --ground-more phases seed `seed` runs, as far as its finished grounding phases tell: phase i runs
    when phase i - 1 finished with a held-out loss above --ground-bar (one not finished yet needs no next phase)."""
    if not (cfg.ground_more and cfg.ground_bar > 0):
        return 0
    d, n = report.seed_dir(cfg.out, seed), 0
    for loss in report.ground_losses(d)[:len(cfg.ground_more)]:
        if loss is None:
            marker = os.path.join(d, ground_phase(n), report.MARKER)
            raise SystemExit(f"{marker} records no held-out loss, which --ground-bar compares; rerun that stage")
        if loss <= cfg.ground_bar:
            break
        n += 1
    return n


READ = "rm_read"  # OUT/seed<S>/rm_read: the reward models' reading stage (their base)


def world_dir(out: str) -> str:
    return os.path.join(out, "world")


def world_flags(items: tuple[str, ...]) -> list[str]:
    """`("size=small", "colours=red blue")` -> `["--size", "small", "--colours", "red", "blue"]`."""
    flags = []
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--world expects flag=value items (data/shapes.py flags), e.g. size=small; got {item!r}")
        key, value = item.split("=", 1)
        flags += ["--" + key.lstrip("-").replace("_", "-"), *value.split()]
    return flags


def settings_of(cfg) -> dict:
    """What a stage's result depends on: its config without the operational fields, as JSON."""
    return {k: v for k, v in jsonable(dataclasses.asdict(cfg)).items() if k not in OPERATIONAL}


def changed_settings(old: dict, new: dict, prefix: str = "") -> list[str]:
    """The (dotted) settings a stage was made with that now differ.  A setting the stage does not record (a field
    added to a config since then) counts only when it is on now: its off value (False, 0, empty, None) keeps what
    the code did before the field existed."""
    out = []
    for k, v in old.items():
        if isinstance(v, dict) and isinstance(new.get(k), dict):
            out += changed_settings(v, new[k], f"{prefix}{k}.")
        elif k not in new or new[k] != v:
            out.append(prefix + k)
    return out + [prefix + k for k, v in new.items() if k not in old and v and not isinstance(v, dict)]


def run_stage(label: str, folder: str, settings: dict, fn, what: str) -> dict:
    """Run `fn()` unless `folder` holds a finished stage with the same settings; returns its stage.json record
    ({"seconds", "settings", "result", "cached"})."""
    marker = os.path.join(folder, report.MARKER)
    if os.path.exists(marker):
        with open(marker) as f:
            rec = json.load(f)
        changed = changed_settings(rec["settings"], settings)
        if changed:
            raise StageMismatch(f"{folder} was made with other settings ({', '.join(changed)} differ); rerun with "
                                f"its settings, choose another --out, or delete {folder} and the stages made from it")
        print(f"{label}: skipped (cached in {folder}; made in {rec['seconds']:.1f} s)", flush=True)
        return dict(rec, cached=True)
    print(f"{label}: {what} -> {folder}", flush=True)
    t0 = time.perf_counter()
    result = fn()
    rec = {"seconds": round(time.perf_counter() - t0, 2), "settings": settings, "result": jsonable(result)}
    write_json(marker, rec, indent=1)
    print(f"{label}: done in {rec['seconds']:.1f} s", flush=True)
    return dict(rec, cached=False)


def ensure_world(cfg: ReproduceConfig) -> dict:
    """The one world of this OUT, shared by the seeds (built once; a different world there is an error)."""
    path = world_dir(cfg.out)
    world = world_config(parse_args(["--out", path, *world_flags(cfg.world)]))
    settings = world.to_dict()

    def build() -> None:
        if not world_exists(path):
            write_world(path, world, progress=False)
        elif ShapesConfig.from_dict(load_world_info(path)["config"]).to_dict() != settings:
            # a whole world (world.json is written last) without its stage.json: made by someone else
            raise StageMismatch(f"{path} holds another shapes world; choose another --out or delete it")
    return run_stage("world", path, settings, build, "generating the shapes world " + " ".join(cfg.world))


def _rm_image_dropout(cfg: ReproduceConfig, which: str) -> float:
    """--rm-image-dropout, or for the no-facts reward model --rm-nofacts-image-dropout where given."""
    if which == "nofacts" and cfg.rm_nofacts_image_dropout is not None:
        return cfg.rm_nofacts_image_dropout
    return cfg.rm_image_dropout


def stage_configs(cfg: ReproduceConfig, seed: int) -> dict:
    """The config of every stage of one seed (the shapes stage presets with the recipe's values)."""
    d, data = report.seed_dir(cfg.out, seed), world_dir(cfg.out)
    common = dict(data=data, seed=seed, mesh=cfg.mesh, eval_every=cfg.eval_every,
                  checkpoint_every=cfg.checkpoint_every, vision_pretrain_steps=cfg.vision_pretrain_steps,
                  buckets=tuple(cfg.buckets))
    phases = sft_more_phases(cfg)
    sft_hf = os.path.join(d, sft_phase(len(phases)) if phases else report.SFT, "hf")  # the last SFT phase's model
    sft_p, lora_p, rm_p, ppo_p = (run_sft.RUN_PRESETS["shapes"], run_sft.LORA_PRESETS["shapes"],
                                  run_rm.RUN_PRESETS["shapes"], run_ppo.RUN_PRESETS["shapes"])
    sft_optim = dataclasses.replace(sft_p.optim, lr=cfg.sft_lr)
    out = {}
    if cfg.ground_steps:  # the grounding stage: checklist conversations first, then SFT starts from its model
        out[GROUND] = dataclasses.replace(sft_p, out=os.path.join(d, GROUND), split=GROUND_SPLITS[0],
                                          steps=cfg.ground_steps, batch_size=cfg.sft_batch_size, optim=sft_optim,
                                          **common)
        for i, (steps, lr) in enumerate(ground_more_phases(cfg), 1):  # each from the last phase's model
            out[ground_phase(i)] = dataclasses.replace(
                out[GROUND], out=os.path.join(d, ground_phase(i)), steps=steps, seed=seed + i,
                optim=dataclasses.replace(sft_optim, lr=lr), init=os.path.join(d, ground_phase(i - 1), "hf"))
    ground_hf = os.path.join(d, ground_phase(ground_phases_needed(cfg, seed)), "hf")  # the last phase that runs
    out |= {
        "sft": dataclasses.replace(sft_p, out=os.path.join(d, report.SFT), steps=cfg.sft_steps,
                                   batch_size=cfg.sft_batch_size, optim=sft_optim,
                                   init=ground_hf if cfg.ground_steps else None, **common),
    }
    for i, (steps, lr) in enumerate(phases, 1):  # each a schedule of its own, from the last phase's model
        out[sft_phase(i)] = dataclasses.replace(
            sft_p, out=os.path.join(d, sft_phase(i)), steps=steps, batch_size=cfg.sft_batch_size,
            optim=dataclasses.replace(sft_p.optim, lr=lr),
            init=os.path.join(d, sft_phase(i - 1) if i > 1 else report.SFT, "hf"), **(common | {"seed": seed + i}))
    out |= {
        "rlinit": dataclasses.replace(lora_p, init=sft_hf, out=os.path.join(d, report.RLINIT), steps=cfg.rlinit_steps,
                                      batch_size=cfg.rlinit_batch_size,
                                      adapter=dataclasses.replace(lora_p.adapter, r=cfg.rlinit_rank,
                                                                  alpha=cfg.rlinit_alpha),
                                      optim=dataclasses.replace(lora_p.optim, lr=cfg.rlinit_lr), **common),
    }
    sample = dict(init=sft_hf, policy_adapter=os.path.join(d, report.RLINIT, "adapter"), data=data, split="train",
                  max_new_tokens=cfg.ppo_max_new_tokens, batch_size=cfg.judge_batch_size, seed=seed)
    if cfg.rm_onpolicy_prompts:
        out[report.PAIRS] = rm_pairs.PairsConfig(prompts=cfg.rm_onpolicy_prompts, tradeoff=cfg.rm_onpolicy_tradeoff,
                                                 repeats=cfg.rm_onpolicy_repeats,
                                                 length_balance=cfg.rm_onpolicy_length_balance,
                                                 recall_extra=cfg.rm_onpolicy_recall_extra,
                                                 edits=cfg.rm_onpolicy_edits, edits_only=cfg.rm_onpolicy_edits_only,
                                                 out=os.path.join(d, report.PAIRS), **sample)
    rm_base = given_rm_base(cfg, seed) or sft_hf
    if cfg.rm_read_steps:  # the reward models' base: the SFT model trained on fact-check conversations
        out[READ] = dataclasses.replace(sft_p, out=os.path.join(d, READ), split=FACTCHECK_SPLITS[0], init=sft_hf,
                                        steps=cfg.rm_read_steps, batch_size=cfg.sft_batch_size,
                                        optim=dataclasses.replace(sft_p.optim, lr=cfg.rm_read_lr), **common)
        rm_base = os.path.join(d, READ, "hf")
    for k, (which, folder) in ((k, w) for k in range(cfg.rm_ensemble) for w in report.RM.items()):
        out[member(folder, k)] = dataclasses.replace(
            rm_p, init=rm_base, out=os.path.join(d, member(folder, k)), no_facts=which == "nofacts",
            steps=cfg.rm_steps, batch_size=cfg.rm_batch_size, epochs=cfg.rm_epochs, eval_pairs=cfg.rm_eval_pairs,
            image_dropout=_rm_image_dropout(cfg, which), image_pool=cfg.rm_image_pool,
            facts_first=which == "facts" and cfg.rm_facts_first,
            lora=dataclasses.replace(rm_p.lora, r=cfg.rm_rank, alpha=cfg.rm_alpha),
            optim=dataclasses.replace(rm_p.optim, lr=cfg.rm_lr, schedule=cfg.rm_schedule),
            extra_data=(out[report.PAIRS].out,) if report.PAIRS in out else (), **(common | {"seed": seed + k}))
    if cfg.audit_prompts:
        out[report.AUDIT] = rm_audit.AuditConfig(
            reward_adapters=tuple(os.path.join(d, report.RM[k], "adapter") for k in ("facts", "nofacts")),
            prompts=cfg.audit_prompts, skip_prompts=cfg.rm_onpolicy_prompts, rm_seq_len=cfg.ppo_rm_seq_len,
            edit_twins=cfg.audit_edit_twins, out=os.path.join(d, report.AUDIT, report.AUDIT_FILE), **sample)
    for r, which in ((r, w) for r in range(cfg.ppo_repeats) for w in report.PPO):
        out[report.PPO[which] + report.repeat_suffix(r)] = dataclasses.replace(
            ppo_p, data=data, seed=seed + cfg.ppo_seed_offset + REPEAT_STRIDE * r, mesh=cfg.mesh, init=sft_hf,
            policy_adapter=os.path.join(d, report.RLINIT, "adapter"),
            reward_adapter=os.path.join(d, report.RM[which], "adapter"), out=report.ppo_dir(cfg.out, seed, which, r),
            reward_ensemble=tuple(os.path.join(d, member(report.RM[which], k), "adapter")
                                  for k in range(1, cfg.rm_ensemble)),
            steps=cfg.ppo_steps, rollout_batch_size=cfg.ppo_rollout_batch_size,
            step_batch_size=cfg.ppo_step_batch_size, kl_coef=cfg.ppo_kl_coef, length_score=cfg.ppo_length_score,
            max_new_tokens=cfg.ppo_max_new_tokens, terminal_at_eos=cfg.ppo_terminal_at_eos, mask_pads=cfg.ppo_mask_pads,
            rm_seq_len=cfg.ppo_rm_seq_len, prompt_group=cfg.ppo_prompt_group, prompt_types=cfg.ppo_prompt_types,
            eval_every=cfg.ppo_eval_every, eval_prompts=cfg.ppo_eval_prompts, clip_per_role=cfg.ppo_clip_per_role,
            yesno_pope=cfg.ppo_yesno_pope,
            checkpoint_every=cfg.ppo_checkpoint_every, optim=dataclasses.replace(ppo_p.optim, lr=cfg.ppo_lr))
    for key, _, run in report.SYSTEMS:
        for r in range(cfg.ppo_repeats if run else 1):
            model = sft_hf if run is None else report.ppo_dir(cfg.out, seed, run, r)
            out[f"judge_{key}{report.repeat_suffix(r)}"] = shapes_eval.ShapesEvalConfig(
                model=model, out=report.judge_dir(cfg.out, seed, key, r), data=data,
                pope_images=cfg.judge_pope_images, descriptions=cfg.judge_descriptions, batch_size=cfg.judge_batch_size)
    return {n: out[n] for n in names_of(cfg) if n in out}  # in the order the seed runs them


def _what(name: str, c) -> str:
    if name.startswith("judge_"):
        return f"shapes judges on {c.model}"
    if name == report.AUDIT:
        return f"on-policy audit of both reward models, {c.prompts} describe prompts x {c.samples} samples"
    if name == report.PAIRS:
        return f"on-policy preference pairs, {c.prompts} describe prompts x {c.samples} samples, judged exactly"
    if name.startswith(GROUND_MORE):
        return (f"grounding phase {int(name[len(GROUND_MORE):]) + 1} (the last one ended above --ground-bar), "
                f"{c.steps} steps")
    if name.startswith(SFT_MORE):
        return f"SFT phase {int(name[len(SFT_MORE):]) + 1} (from the last phase's model), {c.steps} steps"
    kind = {"ground": "grounding stage (checklist SFT)", "sft": "SFT",
            READ: "reading stage of the reward models' base (fact-check SFT)", "rlinit": "RL-init (LoRA SFT)",
            "rm_facts": "reward model with facts", "rm_nofacts": "reward model without facts",
            "ppo_facts": "PPO with the facts RM",
            "ppo_nofacts": "PPO with the no-facts RM"}[re.sub(r"_[re]\d+$", "", name)]  # as the first's
    seeded = name.startswith("ppo_") or re.search(r"_e\d+$", name)
    return f"{kind}, {c.steps} steps" + (f", seed {c.seed}" if seeded else "")


def _run_fn(name: str, c):
    if name.startswith("judge_"):
        return lambda: _judge(c)
    if name == report.AUDIT:
        return lambda: rm_audit.audit(c)
    if name == report.PAIRS:
        return lambda: {k: v for k, v in rm_pairs.make_pairs(c).items() if k not in ("responses", "config")}
    sft_like = name in ("ground", "sft", "rlinit", READ) or name.startswith((SFT_MORE, GROUND_MORE))
    train = run_sft.run if sft_like else run_rm.run if name.startswith("rm_") else run_ppo.run
    return lambda: train(c)


def _judge(c) -> dict:
    results = shapes_eval.run(c)
    if results is None:
        raise RuntimeError(f"the shapes judges on {c.model} stopped before every answer was made")
    return {"out": c.out}


def phase_needed(cfg, seed: int, name: str) -> bool:
    """Whether stage `name` of seed `seed` runs as far as its finished grounding phases tell (every stage but a
    further grounding phase does)."""
    return not name.startswith(GROUND_MORE) or int(name[len(GROUND_MORE):]) <= ground_phases_needed(cfg, seed)


def stage_folder(name: str, c) -> str:
    return os.path.dirname(c.out) if name == report.AUDIT else c.out  # the audit's out is its JSON file


def seed_stages(cfg: ReproduceConfig, seed: int) -> dict[str, tuple[str, object]]:
    """The stages seed `seed` runs, in order, as far as its finished stages tell: {name: (folder, config)}."""
    configs = stage_configs(cfg, seed)
    return {n: (stage_folder(n, configs[n]), configs[n]) for n in names_of(cfg)
            if n in configs and phase_needed(cfg, seed, n)}


def run_seed(cfg: ReproduceConfig, seed: int) -> dict[str, float]:
    """Every stage of one seed, in order; returns each stage's wall time (as made, for cached ones)."""
    configs = stage_configs(cfg, seed)
    names = [n for n in names_of(cfg) if n in configs]
    seconds = {}
    for i, name in enumerate(names, 1):
        if not phase_needed(cfg, seed, name):
            print(f"[seed {seed}, {i}/{len(names)}] {name}: not needed (the last grounding phase's held-out loss is "
                  f"at or under --ground-bar {cfg.ground_bar})", flush=True)
            continue
        c = configs[name]
        settings = stage_settings(cfg, name, c)
        rec = run_stage(f"[seed {seed}, {i}/{len(names)}] {name}", stage_folder(name, c), settings, _run_fn(name, c),
                        _what(name, c))
        seconds[name] = rec["seconds"]
        if name.startswith(GROUND):  # its loss decides the next phase, and which phase's model SFT starts from
            configs = stage_configs(cfg, seed)
        if name == "judge_sft" and os.path.isfile(os.path.join(report.judge_dir(cfg.out, seed, "sft"), report.RESULTS)):
            bar = report.sft_bar(report.seed_dir(cfg.out, seed), report.judged(cfg.out, seed, "sft"))
            print(f"[seed {seed}] {sft_bar_line(bar)}", flush=True)
    return seconds


def sft_bar_line(bar: dict) -> str:
    """The SFT model against the issue's bar, in words (report.sft_bar's record)."""
    got = ", ".join(f"{k.replace('_', ' ')} {100 * v:.1f} % (bar {100 * report.SFT_BAR[k]:.0f} %)" if v is not None
                    else f"{k.replace('_', ' ')} not measured" for k, v in ((k, bar.get(k)) for k in report.SFT_BAR))
    return f"SFT model: {got}: " + ("meets the SFT bar" if bar["meets"] else
                                    "MISSES the SFT bar; RLHF goes on from it (docs/results.md)")


def stage_settings(cfg: ReproduceConfig, name: str, c) -> dict:
    """What stage `name` (config `c`) records and a cached one must match: its config's settings, and what the
    paths among them (operational) do not say about the stages it was made from."""
    # SFT's start (`init`, an operational path) is the grounding stage's model when there is one, and the further
    # grounding phases that ran, if any (a grounding phase records the ones before it) ...
    # ... and the reward models' extra pairs (`extra_data`, a path) are the pairs stage's when it has one
    # ... and every stage that trains or uses a reward model records the extra copies of its recall pairs, if any,
    # and the edit twins among its pairs, if any
    # ... and every stage that uses a reward model records where its base came from, where not the SFT model
    # ... and every stage made from the SFT model records the further SFT phases it came through
    # ... and every PPO run and its judges record how many reward models of each kind scored the run
    return settings_of(c) | ({"ground_steps": cfg.ground_steps} if name == "sft" else {}) | _grounding(cfg, name, c) | (
        {"onpolicy_prompts": cfg.rm_onpolicy_prompts} if is_rm(name) and c.extra_data else {}) | (
        {"onpolicy_recall_extra": cfg.rm_onpolicy_recall_extra}
        if cfg.rm_onpolicy_prompts and cfg.rm_onpolicy_recall_extra and _uses_rm(name) else {}) | (
        {"onpolicy_edits": "only" if cfg.rm_onpolicy_edits_only else "add"}
        if cfg.rm_onpolicy_prompts and cfg.rm_onpolicy_edits and _uses_rm(name) else {}) | (
        {"rm_ensemble": cfg.rm_ensemble} if cfg.rm_ensemble > 1 and _scored_by_rm(name) else {}) | (
        {"rm_read_steps": cfg.rm_read_steps} if cfg.rm_read_steps and _uses_rm(name) else {}) | (
        {"rm_base": cfg.rm_base} if cfg.rm_base and _uses_rm(name) else {}) | (
        {"sft_more": list(cfg.sft_more)} if cfg.sft_more and _after_sft(name) else {})


def _grounding(cfg: ReproduceConfig, name: str, c) -> dict:
    """The further grounding phases before stage `name`: recorded by SFT where any ran, and by each such phase."""
    if name.startswith(GROUND_MORE):
        i = int(name[len(GROUND_MORE):])
        return {"ground_steps": cfg.ground_steps, "ground_more": list(cfg.ground_more[:i - 1])}
    n = ground_phases_needed(cfg, c.seed) if name == report.SFT else 0  # SFT's config carries the seed's own seed
    return {"ground_more": list(cfg.ground_more[:n]), "ground_bar": cfg.ground_bar} if n else {}


def given_rm_base(cfg: ReproduceConfig, seed: int) -> str:
    """The reward models' base that --rm-base names for `seed` ('' when none)."""
    return cfg.rm_base.replace("{seed}", str(seed))


def _after_sft(name: str) -> bool:
    """Whether stage `name` is made from the (last phase's) SFT model: every stage after the SFT phases."""
    return name not in (GROUND, report.SFT) and not name.startswith((SFT_MORE, GROUND_MORE))


def _scored_by_rm(name: str) -> bool:
    """Whether stage `name` is a PPO run on the reward models' scores, or the judges of one."""
    return name.startswith("ppo_") or (name.startswith("judge_") and not name.startswith("judge_sft"))


def _uses_rm(name: str) -> bool:
    """Whether stage `name` trains or uses a reward model (its result depends on the reward models' base)."""
    return is_rm(name) or name == report.AUDIT or _scored_by_rm(name)


def use_compile_cache(cfg: ReproduceConfig) -> None:
    """JAX's persistent compilation cache in OUT/jax_cache (unless off, or JAX_COMPILATION_CACHE_DIR is set)."""
    if cfg.compile_cache and not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        import jax
        jax.config.update("jax_compilation_cache_dir", os.path.abspath(os.path.join(cfg.out, "jax_cache")))


def run(cfg: ReproduceConfig) -> dict:
    """The whole reproduction; returns results.json's content (also written after each finished seed)."""
    t0 = time.perf_counter()
    sft_more_phases(cfg), ground_more_phases(cfg)  # a malformed --sft-more stops the command before it writes
    for base in (given_rm_base(cfg, s) for s in cfg.seeds if cfg.rm_base):
        if not os.path.isfile(os.path.join(base, "config.json")):
            raise SystemExit(f"--rm-base {cfg.rm_base}: {base} is not an HF LLaVA folder (no config.json)")
    if cfg.carry_to:
        return carry.carry_to(cfg, cfg.carry_to, {s: seed_stages(cfg, s) for s in cfg.seeds})
    os.makedirs(cfg.out, exist_ok=True)
    use_compile_cache(cfg)
    write_json(os.path.join(cfg.out, "reproduce_config.json"), dataclasses.asdict(cfg), indent=1)
    print(f"reproduction (recipe {cfg.recipe}, seeds {' '.join(map(str, cfg.seeds))}) in {cfg.out}: "
          + ", ".join(f"{k}={v}" for k, v in recipe_of(cfg).items()), flush=True)
    world_seconds = ensure_world(cfg)["seconds"]
    for src in cfg.restore_from:
        carry.restore_from(cfg.out, src)
    if cfg.rm_read_steps and not load_world_info(world_dir(cfg.out))["config"].get("n_factcheck"):
        raise SystemExit(f"--rm-read-steps {cfg.rm_read_steps}: the world {world_dir(cfg.out)} has no fact-check "
                         "conversations to read; add n-factcheck=N to --world")
    stages: dict[str, dict[str, float]] = {}
    results = {}
    for seed in cfg.seeds:
        stages[str(seed)] = run_seed(cfg, seed)
        seconds = {"world": world_seconds, "stages": stages,
                   "all_stages": world_seconds + sum(sum(s.values()) for s in stages.values()),
                   "this_command": round(time.perf_counter() - t0, 2)}
        results = report.write_report(cfg.out, [int(s) for s in stages], cfg.recipe,
                                      names_of(cfg), seconds,
                                      repeats=cfg.ppo_repeats)
    table = os.path.join(cfg.out, report.TABLE)
    with open(table) as f:
        print("\n" + f.read(), flush=True)
    print(f"results: {os.path.join(cfg.out, report.RESULTS)}, {table}, plots: "
          + ", ".join(os.path.join(cfg.out, p) for p in results["plots"])
          + f"; {results['seconds']['this_command']:.0f} s in all", flush=True)
    return results


def main(argv: list[str], description: str | None = None) -> dict:
    cfg = parse_config(argv, description)
    try:
        return run(cfg)
    except (StageMismatch, carry.CarryError) as e:
        raise SystemExit(f"error: {e}") from None
