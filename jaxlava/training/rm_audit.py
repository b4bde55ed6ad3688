"""Does a reward model punish hallucination in the responses PPO will show it?  An on-policy audit.

Held-out pair accuracy (train/rm.py) measures a reward model on the preference pairs it was trained for. PPO
shows it something else: the starting policy's own samples. This module samples `samples` responses to each of
the world's held-out describe prompts from the policy PPO starts from (the SFT base with its RL-init adapter, at
PPO's temperature), judges every response exactly against the image's objects (`jaxlava.eval.shapes`), scores
all of them with each reward model, and compares responses to the same prompt two by two:

- hallucination pairs: the two name a different number of absent objects; the reward model is right when it
  scores the one with fewer higher (a tie in score counts one half);
- dominant pairs: the hallucination pairs whose response with fewer absent objects also names no fewer present
  ones (so preferring the other cannot be a taste for completeness);
- recall pairs: as many absent objects, a different number of present ones; right when it prefers more.

The within-prompt comparison is the one PPO's advantages make (one image, several responses). A reward model
with facts is also scored with each prompt's facts swapped for another prompt's (the next one in the batch): if
it reads the facts, that costs it accuracy. With `edit_twins`, each sample's edit twins (itself with one object
taken out or put in, `rm_edits`) are scored too: per kind, the share ranked right and the mean margin, the price
of one object with every other word kept. Shapes worlds only (the judges need each image's objects).
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import random

import jax
import numpy as np
from flax import nnx
from tqdm import tqdm

from jaxlava import ppo, rm, sharding
from jaxlava.data.pipeline import ppo_prompt_batches
from jaxlava.data.storage import open_source
from jaxlava.eval import shapes as shapes_eval
from jaxlava.fileio import write_json
from jaxlava.generate import generate
from jaxlava.lora import make_lora
from jaxlava.training import ppo_roles, rm_edits, rollout, run_ppo, runs


@dataclasses.dataclass
class SampleConfig:
    """Which policy describes which prompts, how often, and how."""
    init: str = "runs/sft/hf"  # the policy's base: the SFT model PPO starts from
    policy_adapter: str | None = run_ppo.DEFAULT_RLINIT  # the RL-init adapter ('None': the bare base)
    data: str = "runs/shapes_world"  # a shapes world folder (its ppo_prompt split and the images' facts)
    split: str = "test"  # ppo_prompt split whose describe prompts are sampled
    prompts: int = 128  # describe prompts (fewer when the split has fewer)
    skip_prompts: int = 0  # leave out the split's first N describe prompts (those the on-policy pairs used)
    samples: int = 8  # sampled responses per prompt
    temperature: float = 1.0  # PPO's sampling temperature
    max_new_tokens: int = run_ppo.RUN_PRESETS["shapes"].max_new_tokens  # as the shapes PPO preset's (96)
    max_prompt_len: int = 128
    batch_size: int = 32  # prompts per generation and scoring pass
    seed: int = 0


@dataclasses.dataclass
class AuditConfig(SampleConfig):
    """Score the starting policy's sampled descriptions with reward models, against the exact judges."""
    reward_adapters: tuple[str, ...] = ()  # reward-model adapters (train/rm.py RUN_DIR/adapter), each audited
    rm_seq_len: int = 512
    edit_twins: bool = False
    """also score each sample's edit twins (one object taken out or put in, jaxlava/training/rm_edits.py) and
    report per kind how often the reward model prefers the right one and by what margin (off: not scored)"""
    out: str | None = None  # write the numbers and every judged sample here (a JSON file)


@dataclasses.dataclass
class Sampler:
    """The policy that describes: a base model, its processor, its adapter (as `make_lora` returns it, or None),
    and the reward model's processor where that differs (its pixels travel with each batch)."""
    base: object
    processor: object
    lora: object = None
    reward_processor: object = None

    @classmethod
    def of_roles(cls, roles) -> "Sampler":
        return cls(roles.policy_base, roles.processor, make_lora(roles.init_policy, roles.policy_lora),
                   run_ppo.separate_reward_processor(roles))

    @classmethod
    def load(cls, cfg: SampleConfig, mesh) -> "Sampler":
        """`cfg.init` with `cfg.policy_adapter` on `mesh`."""
        from jaxlava.data.processor import LlavaProcessor
        from jaxlava.peft_io import load_adapter
        base = runs.build_model(runs.RunConfig(init=cfg.init), mesh)
        lora = None
        if cfg.policy_adapter:
            tree, lcfg = load_adapter(cfg.policy_adapter, base.config)
            lora = make_lora(ppo_roles.place_adapter(tree, mesh), lcfg)
        return cls(base, LlavaProcessor.from_pretrained(cfg.init), lora)


def pair_verdict(a, b) -> tuple[bool, tuple[str, ...]] | None:
    """Two samples of one prompt as (absent objects named, present objects named) -> (whether `a` is the better,
    the pair's kinds), or None when neither is: fewer absent objects is better ("hallucination", and also
    "dominant" when the better one names no fewer present objects); with as many, more present ones ("recall")."""
    (ha, ra), (hb, rb) = a, b
    if ha != hb:
        dominant = (ra - rb) * (hb - ha) >= 0  # the one with fewer absent objects names no fewer present ones
        return ha < hb, ("hallucination", "dominant") if dominant else ("hallucination",)
    if ra != rb:
        return ra > rb, ("recall",)
    return None


def pair_accuracy(groups: list[list[tuple[float, int, int]]]) -> dict:
    """`groups`: per prompt, its samples as (score, hallucinated, recalled) -> {"hallucination", "dominant",
    "recall"}, each {"pairs", "accuracy", "se"} (accuracy None without pairs; se: the binomial standard error).
    "dominant" is the subset of hallucination pairs whose better response also names no fewer present objects:
    there, preferring the other one cannot be a preference for completeness."""
    won = {"hallucination": [], "dominant": [], "recall": []}
    for samples in groups:
        for (sa, *a), (sb, *b) in itertools.combinations(samples, 2):
            verdict = pair_verdict(a, b)
            if verdict is None:
                continue
            better_a, kinds = verdict
            for kind in kinds:
                won[kind].append(0.5 if sa == sb else float((sa > sb) == better_a))
    out = {}
    for kind, w in won.items():
        acc = float(np.mean(w)) if w else None
        out[kind] = {"pairs": len(w), "accuracy": acc,
                     "se": None if acc is None else math.sqrt(acc * (1 - acc) / len(w))}
    return out


def within_prompt_share(scores: list[list[float]]) -> float | None:
    """The share of the scores' variance left after subtracting each prompt's mean: how much of what PPO sees
    separates responses to the same prompt (the rest separates prompts; train/ppo.py --prompt-group removes it)."""
    flat = np.concatenate([np.asarray(s, np.float64) for s in scores])
    centred = np.concatenate([np.asarray(s, np.float64) - np.mean(s) for s in scores])
    total = float(np.var(flat))
    return None if total == 0 else float(np.var(centred) / total)


def best_of(groups: list[list[tuple[float, int, int]]], k: int) -> dict | None:
    """What choosing by the score would give: per prompt, the top-scored of its first `k` samples (ties share the
    pick) against the mean of those `k`, summed over prompts -> {"k", "hallucinated", "recalled"} as ratios (e.g.
    0.25: a quarter of the mean sample's hallucinated mentions); None where a ratio has no denominator."""
    chosen, mean = np.zeros(2), np.zeros(2)
    for samples in groups:
        s = np.asarray([x[0] for x in samples[:k]], np.float64)
        counts = np.asarray([x[1:3] for x in samples[:k]], np.float64)
        if not len(s):
            continue
        top = s == s.max()
        chosen += counts[top].mean(axis=0)
        mean += counts.mean(axis=0)
    if not mean.all():
        return None
    return {"k": k, "hallucinated": float(chosen[0] / mean[0]), "recalled": float(chosen[1] / mean[1])}


def _ppo_config(cfg: AuditConfig, reward_adapter: str) -> run_ppo.PPOConfig:
    return dataclasses.replace(run_ppo.RUN_PRESETS["shapes"], data=cfg.data, init=cfg.init,
                               policy_adapter=cfg.policy_adapter, reward_adapter=reward_adapter,
                               max_new_tokens=cfg.max_new_tokens, max_prompt_len=cfg.max_prompt_len,
                               rm_seq_len=cfg.rm_seq_len, temperature=cfg.temperature, seed=cfg.seed)


def sample_describe(cfg: SampleConfig, policy: Sampler, mesh) -> list[dict]:
    """Per describe prompt: {"id", "host": its metadata, "batch": its batch, "row", "texts", "judged"}."""
    width = run_ppo.query_width(cfg, policy.processor)
    source = open_source(cfg.data, "ppo_prompt", cfg.split)
    batches = ppo_prompt_batches(source, policy.processor, batch_size=cfg.batch_size, shuffle=False, num_epochs=1,
                                 buckets=(width,), max_prompt_len=width, reward_processor=policy.reward_processor)
    put, tok = run_ppo.prompt_putter(mesh), policy.processor.tokenizer
    eos, pad = tok.eos_token_id, tok.pad_token_id or 0
    rows, seen, bar = [], 0, tqdm(total=cfg.prompts, desc="sampling describe prompts", unit="prompt")
    for b_idx, raw in enumerate(batches):
        b = put(raw)
        host = b["host"]
        judgeable = [shapes_eval.prompt_judgement(c, "", f) is not None
                     for c, f in zip(host["conversations"], host["facts"])]
        if seen + sum(judgeable) <= cfg.skip_prompts:  # every describe prompt here is one to leave out
            seen += sum(judgeable)
            continue
        dev, texts = b["device"], []
        for k in range(cfg.samples):
            key = jax.random.fold_in(jax.random.fold_in(jax.random.key(cfg.seed), b_idx), k)
            out = generate(policy.base, dev["input_ids"], dev["pixel_values"], dev["attention_mask"],
                           max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=1.0, top_k=0,
                           eos_token_id=eos, pad_token_id=pad, rng=key, lora=policy.lora)
            response, _, _ = ppo.truncate_after_stop(np.asarray(out.tokens), eos, pad)
            texts.append(tok.batch_decode(response, skip_special_tokens=True))
        for i, rid in enumerate(host["id"]):
            if not judgeable[i]:
                continue
            seen += 1
            if seen > cfg.skip_prompts and len(rows) < cfg.prompts:
                judged = [shapes_eval.prompt_judgement(host["conversations"][i], t[i], host["facts"][i]) for t in texts]
                rows.append({"id": rid, "batch": b, "row": i, "texts": [t[i] for t in texts], "judged": judged})
                bar.update(1)
        if len(rows) >= cfg.prompts:
            break
    bar.close()
    if not rows:
        raise ValueError(f"{cfg.data}: no describe prompt in the full batches of --batch-size {cfg.batch_size} of its "
                         f"ppo_prompt {cfg.split} split ({len(source)} prompts; a shapes world?)"
                         + (f" after the first {cfg.skip_prompts}" if cfg.skip_prompts else ""))
    return rows


def _scorer(roles):
    graphdef, state = nnx.split(roles.value_base)

    @jax.jit
    def score(state, lora, head, ids, pixels, mask):
        return rm.scores(nnx.merge(graphdef, state), head, ids, pixels, mask, lora=make_lora(lora, roles.value_lora),
                         image_pool=roles.reward_image_pool)
    return lambda ids, pixels, mask: score(state, roles.reward_lora, roles.reward_head, ids, pixels, mask)


def score_rows(cfg: AuditConfig, roles, rows: list[dict], other_facts: bool = False,
               label: str = "scoring", score=None) -> list[list[float]]:
    """Each row's samples scored by the roles' reward model (with another row's facts when `other_facts`);
    `score`: the roles' `_scorer`, to share one compiled program between calls."""
    rcfg = run_ppo.rollout_config(_ppo_config(cfg, ""))
    score = score or _scorer(roles)
    out = [[0.0] * cfg.samples for _ in rows]
    by_batch: dict[int, list[int]] = {}
    for n, r in enumerate(rows):
        by_batch.setdefault(id(r["batch"]), []).append(n)
    bar = tqdm(total=len(by_batch) * cfg.samples, desc=label, unit="pass")
    for members in by_batch.values():
        b = rows[members[0]]["batch"]
        host = dict(b["host"])
        size = len(host["id"])
        if other_facts:
            host["facts"] = [host["facts"][(i + 1) % size] for i in range(size)]
        for k in range(cfg.samples):
            texts = [""] * size
            for n in members:
                texts[rows[n]["row"]] = rows[n]["texts"][k]
            ids, mask = rollout.reward_inputs(roles, host, texts, k, rcfg)
            pixels = b["device"].get("reward_pixel_values", b["device"]["pixel_values"])
            s = np.asarray(score(ids, pixels, mask))
            for n in members:
                out[n][k] = float(s[rows[n]["row"]])
            bar.update(1)
    bar.close()
    return out


def object_prices(groups: list[list[tuple[float, ...]]], names: tuple[str, ...] = ("absent", "present")) -> dict | None:
    """`groups` as `pair_accuracy` takes them (score, then one count per name) -> what one more of each counted
    thing is worth to the reward model within a prompt: the least-squares fit of score on the counts, each
    centred on its prompt's mean, as {name: price, ..., "r2"} (None when the counts do not vary apart). PPO trades
    one for another at these rates: a model that pays more for a present object than it takes for an absent one
    rewards naming more objects even when some of them are not there."""
    x, y = [], []
    for samples in groups:
        a = np.asarray(samples, np.float64).reshape(-1, 1 + len(names))
        c = a - a.mean(0)
        y.append(c[:, 0])
        x.append(c[:, 1:])
    x, y = np.concatenate(x), np.concatenate(y)
    if np.linalg.matrix_rank(x) < len(names):
        return None
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    total = float(y @ y)
    r2 = None if total == 0 else float(1 - np.sum((y - x @ coef) ** 2) / total)
    return {**{n: float(c) for n, c in zip(names, coef)}, "r2": r2}


LAPSES = ("partner", "other_absent", "present", "repeated")


def lapse_counts(j, partners: dict[str, str]) -> tuple[int, int, int, int]:
    """A judged description -> (absent co-occurrence partners of its image's objects named, other absent objects
    named, present objects named, categories named twice): the lapses the world plants (the partner habit,
    repeats) apart from the rest, for `object_prices(..., LAPSES)`."""
    planted = {partners[c] for c in j.present if c in partners}
    partner = sum(h in planted for h in j.hallucinated)
    return partner, len(j.hallucinated) - partner, len(j.recalled), len(j.repeated)


def sample_record(row: dict) -> dict:
    """A row of `sample_describe` as written to JSON: its id, texts, and per sample the judges' lists."""
    return {"id": row["id"], "texts": row["texts"],
            **{k: [list(getattr(j, k)) for j in row["judged"]] for k in ("hallucinated", "recalled", "repeated")}}


def audit(cfg: AuditConfig) -> dict:
    """Sample once, score with every reward model; returns (and writes to `cfg.out`) the numbers."""
    if not cfg.reward_adapters:
        raise ValueError("give at least one reward adapter (--reward-adapters RUN_DIR/adapter ...)")
    mesh = sharding.make_mesh(None)
    models: dict = {}

    def build(path):
        if path not in models:
            models[path] = runs.build_model(runs.RunConfig(init=path), mesh)
        return models[path]
    results, rows, partners, edits = {}, None, shapes_eval.world_partners(cfg.data), None
    with sharding.use_mesh(mesh):
        for path in cfg.reward_adapters:
            roles = ppo_roles.load_roles(_ppo_config(cfg, path), mesh, build)
            rows = rows or sample_describe(cfg, Sampler.of_roles(roles), mesh)
            if cfg.edit_twins and edits is None:
                vocab, rng = rm_edits.world_vocab(cfg.data), random.Random(cfg.seed)
                edits = [rm_edits.row_edits(r, r["batch"]["host"]["facts"][r["row"]], vocab, rng) for r in rows]
            variants = {"own": False, **({"other": True} if roles.reward_facts else {})}
            res, score = {"facts": roles.reward_facts}, _scorer(roles)
            for name, other in variants.items():
                what = os.path.basename(os.path.dirname(os.path.abspath(path.rstrip("/"))))
                scores = score_rows(cfg, roles, rows, other_facts=other,
                                    label=f"scoring with {what}" + (" (another prompt's facts)" if other else ""),
                                    score=score)
                groups = [[(s, len(j.hallucinated), len(j.recalled)) for s, j in zip(ss, r["judged"])]
                          for ss, r in zip(scores, rows)]
                res[name] = pair_accuracy(groups)
                if edits is not None:
                    edited = {k: score_rows(cfg, roles, [dict(r, texts=rm_edits.edited_texts(r, e, k))
                                                         for r, e in zip(rows, edits)], other_facts=other,
                                            label=f"edit twins {k}", score=score) for k in rm_edits.EDIT_KINDS}
                    res.setdefault("edit_twins", {})[name] = rm_edits.twin_margins(scores, edited, edits)
                if name == "own":
                    res["within_prompt_share"] = within_prompt_share(scores)
                    res["best_of"] = [b for k in sorted({min(4, cfg.samples), cfg.samples})
                                      if (b := best_of(groups, k)) is not None]
                    res["object_prices"] = object_prices(groups)
                    res["lapse_prices"] = object_prices(
                        [[(s, *lapse_counts(j, partners)) for s, j in zip(ss, r["judged"])]
                         for ss, r in zip(scores, rows)], LAPSES)
                    for r, ss in zip(rows, scores):
                        r.setdefault("scores", {})[path] = ss
            results[path] = res
    judged = [j for r in rows for j in r["judged"]]
    summary = {"prompts": len(rows), "samples": cfg.samples, **{
        k: None if v is None else float(v) for k, v in shapes_eval.description_scores(judged).items()
        if k in ("chair_i", "recall")},
        "reward_models": results, "config": dataclasses.asdict(cfg)}
    if cfg.out:
        os.makedirs(os.path.dirname(os.path.abspath(cfg.out)), exist_ok=True)
        write_json(cfg.out, summary | {"responses": [sample_record(r) | {"scores": r["scores"]} for r in rows]},
                   indent=1)
    return summary


def table(summary: dict) -> str:
    """The audit as a markdown table (accuracy ± standard error, pairs)."""
    def cell(p):
        return "-" if p["accuracy"] is None else f"{100 * p['accuracy']:.1f} ± {100 * p['se']:.1f} ({p['pairs']})"
    def pct(x):
        return "-" if x is None else f"{100 * x:.1f} %"
    lines = [f"{summary['prompts']} describe prompts x {summary['samples']} samples; samples' CHAIR-i "
             f"{pct(summary['chair_i'])}, recall {pct(summary['recall'])}", "",
             "| reward model | facts | fewer absent objects wins (%) | ... and no fewer present (%) "
             "| more present objects wins (%) |", "|---|---|---|---|---|"]
    for path, res in summary["reward_models"].items():
        for name in ("own", "other"):
            if name in res:
                label = ("its own" if res["facts"] else "none") if name == "own" else "another prompt's"
                cells = " | ".join(cell(res[name][k]) for k in ("hallucination", "dominant", "recall"))
                lines.append(f"| {path} | {label} | {cells} |")
    shares = [f"{p}: {100 * r['within_prompt_share']:.0f} %" for p, r in summary["reward_models"].items()
              if r.get("within_prompt_share") is not None]
    if shares:
        lines += ["", "score variance within prompts (its own facts): " + "; ".join(shares)]
    best = [f"{p}: " + ", ".join(f"of {b['k']} hallucinated x{b['hallucinated']:.2f} recalled x{b['recalled']:.2f}"
                                 for b in r["best_of"])
            for p, r in summary["reward_models"].items() if r.get("best_of")]
    if best:
        lines += ["", "the top-scored sample of a prompt against the mean of its samples: " + "; ".join(best)]
    prices = [f"{p}: absent {r['object_prices']['absent']:+.2f}, present {r['object_prices']['present']:+.2f}"
              + ("" if r["object_prices"]["r2"] is None else f" (R2 {r['object_prices']['r2']:.2f})")
              for p, r in summary["reward_models"].items() if r.get("object_prices")]
    if prices:
        lines += ["", "score per object named, within prompts (least squares): " + "; ".join(prices)]
    lapses = [f"{p}: " + ", ".join(f"{n.replace('_', ' ')} {r['lapse_prices'][n]:+.2f}" for n in LAPSES)
              + ("" if r["lapse_prices"]["r2"] is None else f" (R2 {r['lapse_prices']['r2']:.2f})")
              for p, r in summary["reward_models"].items() if r.get("lapse_prices")]
    if lapses:
        lines += ["", "the same per planted partner, other absent object, present object and category named twice: "
                  + "; ".join(lapses)]
    facts = {"own": "its own facts", "other": "another prompt's facts"}
    twins = [f"{p} ({facts[n] if r['facts'] else 'no facts'}): "
             + ", ".join(f"{k.replace('_', ' ')} {pct(m['accuracy'])} {m['margin']:+.2f} ({m['pairs']})"
                         for k, m in t.items() if m["pairs"])
             for p, r in summary["reward_models"].items() for n, t in r.get("edit_twins", {}).items()]
    if twins:
        lines += ["", "edit twins (one object taken out or put in): the right one preferred, and the mean score of "
                  "the right one minus the other's (pairs): " + "; ".join(twins)]
    return "\n".join(lines)


def main(argv: list[str], description: str | None = None) -> dict:
    from jaxlava.training.cli import parse
    cfg = parse(AuditConfig, argv, description)
    summary = audit(cfg)
    print("\n" + table(summary))
    if cfg.out:
        print(f"\nnumbers and every judged sample: {cfg.out}")
    return summary
