"""What a shapes-world reward model reads: its held-out accuracy by kind of counterfactual twin.

train/rm.py reports one held-out accuracy. A twin pair changes one thing (docs/decisions.md 10, 26), so sorting
the held-out pairs by what changed shows which checks the reward model has learnt:

- `omission`: the loser leaves one present object out (the winner is longer);
- `addition`: the loser names one absent object more (the winner is shorter);
- renames (same length, one object's category changed to an absent one), by what the new words need:
  - `rename: new colour`: the new colour occurs nowhere in the facts (one word settles it);
  - `rename: new shape`: the colour is kept or occurs in the facts, the new shape occurs nowhere in them;
  - `rename: binding`: every new word occurs in the facts, only not together ("red square" beside a red circle
    and a blue square): the reward model must bind a colour to its shape;
- `other`: pairs that are not twins (the world's other preference pairs, on-policy pairs).

With a facts model, each kind is also scored with another pair's facts (`OtherFacts`): where the facts decide, that
accuracy falls to chance. Words are compared without their punctuation, whatever the tokenizer does with it.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re

import jax
import numpy as np
from flax import nnx
from tqdm import tqdm

from jaxlava import rm, sharding
from jaxlava.data.pipeline import OtherFacts, preference_batches
from jaxlava.data.storage import open_source
from jaxlava.fileio import write_json
from jaxlava.lora import make_lora
from jaxlava.peft_io import load_reward_model_adapter
from jaxlava.training import runs

KINDS = ("omission", "addition", "rename: new colour", "rename: new shape", "rename: binding", "other")


@dataclasses.dataclass
class TwinsConfig:
    """Held-out accuracy of a shapes-world reward model by kind of twin pair."""
    run: str = "runs/rm"  # a train/rm.py run folder (its config.json and adapter/)
    data: str | None = None  # the world (default: the run's --data)
    split: str = "test"  # preference split to score
    batch_size: int = 8
    out: str | None = None  # also write the table as JSON here


def _words(text: str) -> list[str]:
    return [w for w in (re.sub(r"[^\w]", "", t).lower() for t in text.split()) if w]


def _put_in(short: list[str], long: list[str]) -> bool:
    """Whether `long` is `short` with words put in, and at most one word of `short` swapped for another."""
    ops = [op for op in difflib.SequenceMatcher(None, short, long, autojunk=False).get_opcodes() if op[0] != "equal"]
    swaps = [op for op in ops if op[0] != "insert"]
    one_word = all(tag == "replace" and i2 - i1 == 1 and j2 - j1 == 1 for tag, i1, i2, j1, j2 in swaps)
    return len(swaps) < len(ops) and len(swaps) <= 1 and one_word


def twin_kind(winner: str, loser: str, facts: list[str], colours: set[str]) -> str:
    """The kind of a pair (see the module's docstring); `colours`: the world's colour words."""
    w, l = _words(winner), _words(loser)
    if len(w) != len(l):  # a twin of another length, give or take where a list's "and" stands and, in a counted
        w, l = ([x for x in t if x != "and"] for t in (w, l))  # list, the count word
        if len(w) != len(l) and _put_in(*sorted((w, l), key=len)):
            return "omission" if len(w) > len(l) else "addition"
        return "other"
    new = {b for a, b in zip(w, l) if a != b}
    if not new or len(new) > 2:
        return "other"
    seen = set(_words(" ".join(facts)))
    new_colours, new_shapes = new & colours, new - colours
    if new_colours - seen:
        return "rename: new colour"
    if new_shapes - seen:
        return "rename: new shape"
    return "rename: binding"


def accuracy_table(kinds: list[str], right: dict[str, list[bool]]) -> dict:
    """`kinds`: per pair; `right`: per variant ("own", "other"), per pair -> {kind: {n, variant: accuracy}}."""
    table: dict = {}
    for kind in (*KINDS, "all"):
        idx = [i for i, k in enumerate(kinds) if kind in (k, "all")]
        if idx:
            table[kind] = {"n": len(idx), **{v: float(np.mean([r[i] for i in idx])) for v, r in right.items()}}
    return table


def _scores(run_cfg: dict, sources: dict, batch_size: int) -> dict[str, list[bool]]:
    """Per named source, per pair (in order): whether the reward model scores the preferred response at least as
    high. The model is built and its scorer compiled once for all of them."""
    mesh = sharding.make_mesh(None)
    with sharding.use_mesh(mesh):
        model = runs.build_model(runs.RunConfig(init=run_cfg["init"]), mesh)
        lora, lora_cfg, head = load_reward_model_adapter(os.path.join(run_cfg["out"], "adapter"), model.config)
        processor = runs.processor_for(runs.RunConfig(init=run_cfg["init"]), model.config)
        graphdef, state = nnx.split(model)
        pool = run_cfg.get("image_pool", 0)

        @jax.jit
        def pair(state, lora, head, batch):
            return rm.pair_scores(nnx.merge(graphdef, state), head, batch, lora=make_lora(lora, lora_cfg),
                                  image_pool=pool)
        out = {}
        for name, source in sources.items():
            n = len(source)
            padded = _Cycled(source, -(-n // batch_size) * batch_size)  # the pipeline drops a last partial batch
            batches = preference_batches(padded, processor, batch_size=batch_size, seed=0, shuffle=False,
                                         num_epochs=1, buckets=run_cfg["buckets"], with_facts=not run_cfg["no_facts"],
                                         facts_first=run_cfg.get("facts_first", False))
            right, choices = [], []
            for b in tqdm(batches, total=len(padded) // batch_size, desc=f"scoring twins ({name})", unit="batch"):
                arrays = {k: b[k] for k in ("input_ids", "attention_mask", "pixel_values", "choice")}
                r = np.asarray(pair(state, lora, head, arrays))
                c = np.asarray(b["choice"])  # a tie counts as right, as in train/rm.py's accuracy
                choices += [int(x) for x in c]
                right += [bool(x) for x in r[np.arange(len(r)), c] - r[np.arange(len(r)), 1 - c] >= 0]
            if choices != [0 if padded[i]["preference"] == 1 else 1 for i in range(len(padded))]:
                raise RuntimeError(f"{source!r}: the batches came out of the records' order; cannot match pairs to "
                                   "kinds")
            out[name] = right[:n]
    return out


class _Cycled:
    """`source` read round and round up to `n` records."""

    def __init__(self, source, n: int):
        self.source, self.n = source, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return self.source[i % len(self.source)]

    def __repr__(self) -> str:
        return repr(self.source)


def twins_report(cfg: TwinsConfig) -> dict:
    with open(os.path.join(cfg.run, "config.json")) as f:
        run_cfg = json.load(f)
    run_cfg["out"] = cfg.run
    data = cfg.data or run_cfg["data"]
    with open(os.path.join(data, "world.json")) as f:
        colours = set(json.load(f)["config"]["colours"])
    source = open_source(data, "preference", cfg.split)
    recs = [source[i] for i in range(len(source))]
    kinds = [twin_kind(*((r["output_1"], r["output_2"]) if r["preference"] == 1 else (r["output_2"], r["output_1"])),
                       r["facts"], colours) for r in recs]
    sources = {"own": source, **({} if run_cfg["no_facts"] else {"other": OtherFacts(source)})}
    right = _scores(run_cfg, sources, cfg.batch_size)
    report = {"run": cfg.run, "data": data, "split": cfg.split, "kinds": accuracy_table(kinds, right)}
    if cfg.out:
        write_json(cfg.out, report, indent=1)
    return report


def table(report: dict) -> str:
    kinds = report["kinds"]
    other = any("other" in v for v in kinds.values())
    rows = ["| kind | pairs | accuracy |" + (" with another pair's facts |" if other else ""),
            "|---|---|---|" + ("---|" if other else "")]
    for k, v in kinds.items():
        rows.append(f"| {k} | {v['n']} | {v['own']:.3f} |" + (f" {v['other']:.3f} |" if other else ""))
    return "\n".join(rows)


def main(argv: list[str], description: str | None = None) -> dict:
    from jaxlava.training.cli import parse
    report = twins_report(parse(TwinsConfig, argv, description))
    print(table(report))
    return report
