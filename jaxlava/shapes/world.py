"""The shapes world: jaxlava's embedded default dataset (no downloads; the whole recipe runs on a CPU).

`generate_world(cfg)` returns `{kind: {split: [record, ...]}}` for the record kinds of docs/design.md (`KINDS`);
`build_world(cfg)` also returns the ground truth (scene per record id, per-record metadata, statistics);
`write_world(out_dir, cfg)` writes the datasets (`jaxlava.data.storage.write_records`), the tokenizer to
out_dir/tokenizer/ and out_dir/world.json; all a deterministic function of the config (seeded by (seed, stream))."""
from __future__ import annotations

import dataclasses
import itertools
import json
import os
import time
from functools import partial
from typing import Callable

import numpy as np

from jaxlava.fileio import write_json
from jaxlava.shapes import factcheck as F
from jaxlava.shapes import text as T
from jaxlava.shapes.scene import (BACKGROUNDS, COLOURS, SHAPES, SIZES, Scene, WorldSpec, encode_png, make_spec,
                                  render, sample_scene)
from jaxlava.shapes.stats import world_stats

KINDS = ("conversation", "preference", "ppo_prompt", "probe")
SOURCE = "shapes"
SFT_KINDS = ("describe", "yesno", "count", "attribute", "mc", "compare", "checklist")  # question kinds of the SFT mix
# caption_type values (spec §4.5 AnswerType)
GENERAL, A_IN_ABCD, NO_IN_YESNO, YES_IN_YESNO = 1, 2, 6, 7
_STREAMS = {"spec": 0, "sft": 1, "preference": 2, "ppo": 3, "pope": 4, "mmhal": 5, "ground": 6, "factcheck": 7}
GROUND_SPLITS = ("ground", "ground_test")  # grounding conversations (n_ground > 0): training and held out
FACTCHECK_SPLITS = ("factcheck", "factcheck_test")  # fact-check conversations (n_factcheck > 0): the same


@dataclasses.dataclass(frozen=True)
class ShapesConfig:
    seed: int = 0
    image_size: int = 64
    texture: str = "gradient"  # plain | gradient
    cell: int = 0  # 0: objects placed freely (patch 8); > 0: one object per cell of this many pixels, and the
    #               shapes model's vision patch equals the cell, so each object is one image token
    small_radius: float | None = None  # radius of small objects, as a fraction of the cell (grid) or of the image
    #                                    side (free); None: 0.3 resp. 0.085. Smaller: shapes the encoder can't tell
    sizes: tuple[str, ...] = SIZES  # object sizes drawn; ("small",) with a small `small_radius` hides every shape
    cell_jitter: bool = False  # grid layout: objects move at random within their cells instead of sitting centred
    colours: tuple[str, ...] = tuple(COLOURS)
    shapes: tuple[str, ...] = SHAPES
    backgrounds: tuple[str, ...] = tuple(BACKGROUNDS)
    min_objects: int = 1
    max_objects: int = 5
    cooccur_pairs: tuple[tuple[str, str], ...] = (("red circle", "blue square"), ("yellow star", "green triangle"),
                                                  ("purple hexagon", "orange diamond"), ("pink square", "cyan circle"))
    cooccur_prob: float = 0.8  # P(both members | either member) in every scene
    zipf_exponent: float = 0.6  # category popularity ~ rank^-exponent
    n_sft: int = 4000  # SFT conversations
    sft_test_frac: float = 0.05
    max_turns: int = 3
    # kinds: describe | yesno | count | attribute | mc | compare (text-only reading; opt-in, docs/decisions.md 10)
    #        | checklist (k objects, a yes/no verdict after each name; 24)
    sft_mix: tuple[tuple[str, float], ...] = (("describe", 0.35), ("yesno", 0.25), ("count", 0.15),
                                              ("attribute", 0.1), ("mc", 0.15))
    checklist_items: int = 6  # objects per checklist question
    n_ground: int = 0  # grounding conversations (checklists on scenes of their own; the stage before SFT, decisions 24)
    ground_yesno_prob: float = 0.0  # P(a grounding conversation asks "Is there ...?" questions, not checklists; 74)
    n_factcheck: int = 0  # fact-check conversations (shapes.factcheck: the reward models' base reads; decisions 54)
    factcheck_omissions: bool = False  # fact-check answers also list the objects left out (decisions 60)
    noise_rate: float = 0.2  # share of SFT descriptions that mention an absent (co-occurring) object
    raster_order: bool = False  # descriptions list objects in reading order, not at random (decisions 33)
    located_lists: bool = False  # each listed object says where it is: "a red square at the top left" (34)
    noise_kind: str = "any"  # any: an absent object (partners first) anywhere in the list; partner: only the
    #                          absent partner of a present object, after every real one (shapes.text.NOISE_KINDS)
    yesno_negatives: str = "kinds"  # SFT and PPO yes/no negatives: POPE kinds, or "matched" (shapes.text)
    yesno_restate: bool = False  # yes/no answers name the object before the verdict: "red circle no." (74)
    # preference pairs
    n_pref: int = 2000
    pref_test_frac: float = 0.1
    pref_hallucination_probs: tuple[float, ...] = (0.5, 0.3, 0.2)  # P(0, 1, 2 hallucinated objects) per response
    pref_omit_prob: float = 0.3  # P(a response leaves out some present objects)
    pref_detail_prob: float = 0.5  # P(a response adds location sentences)
    pref_substitute_prob: float = 0.5  # P(hallucinated objects replace real ones rather than add to them)
    pref_minimal_prob: float = 0.0  # P(a pair is a counterfactual twin: one object renamed, every other word kept)
    pref_twin_rename: str = "category"  # what a twin changes: category | shape | colour (see shapes_text.swap_object)
    pref_binding_prob: float = 0.0  # P(an absent object of a pair is a shapes.scene.binding_swaps one; decisions 52)
    pref_twin_omit_prob: float = 0.0  # P(a twin leaves one present object out instead: shapes_text.omission_twin)
    pref_twin_add_prob: float = 0.0  # P(a twin adds one absent object instead: shapes_text.addition_twin)
    pref_twin_counted: bool = False  # omission and addition twins may also use the phrasings that count the list
    # PPO prompts
    n_ppo: int = 1000
    ppo_mix: tuple[tuple[str, float], ...] = (("general", 0.5), ("mc", 0.25), ("yesno", 0.25))
    general_length_bonus: float = -0.5
    other_length_bonus: float = 1.0
    ppo_test_frac: float = 0.1  # PPO prompts held out (the "test" split) for before/after comparisons
    pope_images: int = 32  # probes: x 6 questions (3 yes, 3 no) x 3 splits
    n_mmhal: int = 96
    vocab_size: int = 1500  # tokenizer
    tokenizer_split_punctuation: bool = False  # punctuation always a piece of its own, as LLaMA's (decisions 51)
    tokenizer_object_tokens: bool = False  # each colour-shape category is one id ("red circle"; decisions 53)

    def __post_init__(self):
        if not self.sizes or len(set(self.sizes)) != len(self.sizes) or not set(self.sizes) <= set(SIZES):
            raise ValueError(f"ShapesConfig.sizes: distinct sizes from {SIZES}, got {self.sizes}")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError(f"ShapesConfig: need 1 <= min_objects <= max_objects, got {self.min_objects}, "
                             f"{self.max_objects}")
        if self.cell and (self.cell < 8 or self.image_size % self.cell):
            raise ValueError(f"ShapesConfig.cell must be 0 or a divisor of image_size ({self.image_size}) of at "
                             f"least 8 pixels, got {self.cell}")
        if self.cell and self.max_objects > (self.image_size // self.cell) ** 2:
            raise ValueError(f"ShapesConfig: {self.max_objects} objects do not fit a grid of "
                             f"{(self.image_size // self.cell) ** 2} cells")
        if self.max_objects < 3:
            raise ValueError("ShapesConfig: max_objects must be >= 3 (POPE images hold 3 positives)")
        for name in ("cooccur_prob", "noise_rate", "sft_test_frac", "pref_test_frac", "ppo_test_frac",
                     "pref_omit_prob", "pref_detail_prob", "pref_substitute_prob", "pref_minimal_prob",
                     "pref_twin_omit_prob", "pref_twin_add_prob", "pref_binding_prob", "ground_yesno_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"ShapesConfig.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.noise_kind not in T.NOISE_KINDS:
            raise ValueError(f"ShapesConfig.noise_kind must be one of {T.NOISE_KINDS}, got {self.noise_kind!r}")
        if self.yesno_negatives not in T.YESNO_NEGATIVES:
            raise ValueError(f"ShapesConfig.yesno_negatives must be one of {T.YESNO_NEGATIVES}, got "
                             f"{self.yesno_negatives!r}")
        if (not self.sft_mix or any(k not in SFT_KINDS or w < 0 for k, w in self.sft_mix)
                or sum(w for _, w in self.sft_mix) <= 0):
            raise ValueError(f"ShapesConfig.sft_mix: (kind, weight) pairs with kinds from {SFT_KINDS} and "
                             f"non-negative weights of positive sum, got {self.sft_mix!r}")
        if (not 1 <= self.checklist_items <= len(self.colours) * len(self.shapes) or self.n_ground < 0
                or self.n_factcheck < 0):
            raise ValueError(f"ShapesConfig: checklist_items must be in 1..{len(self.colours) * len(self.shapes)} "
                             f"and n_ground, n_factcheck >= 0, got {self.checklist_items}, {self.n_ground}, "
                             f"{self.n_factcheck}")
        if self.max_turns > 1 and not any(k != "describe" and w > 0 for k, w in self.sft_mix):
            raise ValueError("ShapesConfig.sft_mix: a conversation describes its image once, so with max_turns > 1 "
                             "the mix needs a kind other than describe")
        if self.pref_twin_rename not in T.TWIN_RENAMES:
            raise ValueError(f"ShapesConfig.pref_twin_rename must be one of {T.TWIN_RENAMES}, got "
                             f"{self.pref_twin_rename!r}")
        if self.pref_twin_omit_prob + self.pref_twin_add_prob > 1:
            raise ValueError(f"ShapesConfig: pref_twin_omit_prob + pref_twin_add_prob must be at most 1 (shares of "
                             f"the twins), got {self.pref_twin_omit_prob} + {self.pref_twin_add_prob}")
        if len(self.pref_hallucination_probs) != 3 or abs(sum(self.pref_hallucination_probs) - 1) > 1e-6:
            raise ValueError("ShapesConfig.pref_hallucination_probs: 3 probabilities (0, 1, 2 objects) summing to 1")

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: dict) -> "ShapesConfig":
        def tup(v):
            return tuple(tup(x) for x in v) if isinstance(v, list) else v
        return cls(**{k: tup(v) for k, v in d.items()})


WORLD_SIZES: dict[str, dict] = {
    "small": dict(n_sft=240, n_pref=120, n_ppo=60, pope_images=8, n_mmhal=24, vocab_size=800),
    "default": {},
    "large": dict(n_sft=20000, n_pref=10000, n_ppo=5000, pope_images=100, n_mmhal=192, vocab_size=2000),
}


def preset(size: str = "default", **overrides) -> ShapesConfig:
    """A size preset with field overrides.  A smaller palette (`colours`, `shapes`) without its own
    `cooccur_pairs` keeps the designed pairs whose two members are still categories of the world."""
    if size not in WORLD_SIZES:
        raise ValueError(f"shapes world: unknown size {size!r}; choose from {sorted(WORLD_SIZES)}")
    kw = WORLD_SIZES[size] | overrides
    if ("colours" in overrides or "shapes" in overrides) and "cooccur_pairs" not in overrides:
        cats = {f"{c} {s}" for c in kw.get("colours", ShapesConfig.colours)
                for s in kw.get("shapes", ShapesConfig.shapes)}
        kw["cooccur_pairs"] = tuple(p for p in ShapesConfig.cooccur_pairs if set(p) <= cats)
    return ShapesConfig(**kw)


@dataclasses.dataclass
class World:
    config: ShapesConfig
    spec: WorldSpec  # categories, popularity, designed pairs
    counts: T.Counts  # object statistics of the SFT scenes (POPE popular/adversarial negatives come from them)
    records: dict[str, dict[str, list[dict]]]
    scenes: dict[str, Scene]  # record id -> ground truth
    meta: dict[str, dict]  # record id -> generation facts (noisy descriptions, hallucination counts, ...)
    stats: dict


def _choose(rng: np.random.Generator, mix: tuple[tuple[str, float], ...]) -> str:
    names, w = zip(*mix)
    w = np.asarray(w, np.float64)
    return names[rng.choice(len(names), p=w / w.sum())]


class _Builder:
    def __init__(self, cfg: ShapesConfig, progress: Callable[[int], None] | None):
        self.cfg, self.progress = cfg, progress or (lambda n: None)
        self.spec = make_spec(cfg.colours, cfg.shapes, cfg.cooccur_pairs, cfg.zipf_exponent, self.rng("spec"))
        self.scenes: dict[str, Scene] = {}
        self.meta: dict[str, dict] = {}

    def rng(self, stream: str) -> np.random.Generator:
        return np.random.default_rng([self.cfg.seed, _STREAMS[stream]])

    def scene(self, rng: np.random.Generator, lo: int | None = None) -> tuple[Scene, bytes]:
        cfg = self.cfg
        n = int(rng.integers(max(lo or 1, cfg.min_objects), cfg.max_objects + 1))
        s = sample_scene(self.spec, rng, image_size=cfg.image_size, n_objects=n, cooccur_prob=cfg.cooccur_prob,
                         backgrounds=cfg.backgrounds, cell=cfg.cell,
                         small_radius=cfg.small_radius, jitter=cfg.cell_jitter, sizes=cfg.sizes)
        self.progress(1)
        return s, encode_png(render(s, cfg.texture))

    def keep(self, rid: str, scene: Scene, **meta) -> None:
        self.scenes[rid] = scene
        self.meta[rid] = meta

    @staticmethod
    def split(n: int, test_frac: float) -> list[str]:
        n_test = int(round(n * test_frac))
        return ["train"] * (n - n_test) + ["test"] * n_test

    # ------------------------------------------------------------------------------------------- SFT conversations
    def conversations(self) -> tuple[list[dict], list[Scene]]:
        cfg, rng = self.cfg, self.rng("sft")
        scenes = [self.scene(rng) for _ in range(cfg.n_sft)]
        self.counts = T.Counts.from_scenes(self.spec.categories, [s for s, _ in scenes])
        out = []
        for i, ((scene, png), split) in enumerate(zip(scenes, self.split(cfg.n_sft, cfg.sft_test_frac))):
            rid, turns, noisy, asked = f"shapes-sft-{i:06d}", [], [], set()
            for _ in range(int(rng.integers(1, cfg.max_turns + 1))):
                q, a, kind = self.sft_turn(scene, rng, noisy, described="describe" in asked)
                if q in {t["value"] for t in turns}:
                    continue
                asked.add(kind)
                turns += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
            turns[0]["value"] = "<image>\n" + turns[0]["value"]
            out.append({"id": rid, "image": png, "conversations": turns, "source": SOURCE, "_split": split})
            self.keep(rid, scene, noisy_descriptions=noisy)
        return out, [s for s, _ in scenes]

    def sft_turn(self, scene: Scene, rng: np.random.Generator, noisy: list[bool], described: bool):
        kind = _choose(rng, self.cfg.sft_mix)
        while kind == "describe" and described:
            kind = _choose(rng, self.cfg.sft_mix)
        if kind == "describe":
            q = T.DESCRIBE_QUESTIONS[int(rng.integers(len(T.DESCRIBE_QUESTIONS)))]
            bad = bool(rng.random() < self.cfg.noise_rate)
            if self.cfg.noise_kind == "partner":
                mates = T.absent_partners(scene, self.spec)
                fakes = [mates[int(rng.integers(len(mates)))]] if bad and mates else []
            else:
                fakes = T.pick_absent(scene, self.spec, rng, 1) if bad else []
            d = T.describe(scene, rng, hallucinate=fakes, detailed="detail" in q or rng.random() < 0.3,
                           fakes_last=self.cfg.noise_kind == "partner", raster=self.cfg.raster_order,
                           located=self.cfg.located_lists)
            noisy.append(bool(fakes))
            return q, d.text, kind
        if kind == "yesno":
            q, a, _ = T.existence_qa(scene, self.counts, rng, answer_yes=bool(rng.random() < 0.5),
                                     short=bool(rng.random() < 0.5), negatives_from=self.cfg.yesno_negatives,
                                     restate=self.cfg.yesno_restate)
            return q, a, kind
        if kind == "checklist":
            return (*T.checklist_qa(scene, self.counts, rng, self.cfg.checklist_items), kind)
        if kind == "count":
            q, a, _ = T.counting_qa(scene, self.spec, rng)
            return q, a, kind
        if kind == "attribute":
            return (*T.attribute_qa(scene, rng), kind)
        if kind == "mc":
            q, a, _, _ = T.multiple_choice(scene, self.spec, self.counts, rng)
            return q, a, kind
        if kind == "compare":  # text-only reading (see shapes_text.compare_qa)
            return (*T.compare_qa(scene, self.spec, rng, self.cfg.pref_hallucination_probs, self.cfg.pref_omit_prob,
                                  raster=self.cfg.raster_order, located=self.cfg.located_lists), kind)
        raise ValueError(f"ShapesConfig.sft_mix: unknown question kind {kind!r}")

    def grounding(self) -> list[dict]:
        """n_ground conversations of 1..max_turns checklist questions about scenes of their own; with
        ground_yesno_prob > 0 that share of the conversations asks about one object a turn instead, as POPE does."""
        p, convo = self.cfg.ground_yesno_prob, {"single": False, "asked": set()}

        def turn(scene, rng, t):
            if t == 0:  # a conversation asks one way throughout, so no turn's answer stands in an earlier one
                # (no draw at p = 0: the worlds written before the flag stay the same)
                convo["single"], convo["asked"] = p > 0 and rng.random() < p, set()
            if not convo["single"]:
                return T.checklist_qa(scene, self.counts, rng, self.cfg.checklist_items)
            for _ in range(16):  # another object than the turns before asked about, where one is drawn
                q, a, meta = T.existence_qa(scene, self.counts, rng, answer_yes=bool(rng.random() < 0.5),
                                            short=bool(rng.random() < 0.5), negatives_from=self.cfg.yesno_negatives,
                                            restate=self.cfg.yesno_restate)
                if meta["object"] not in convo["asked"]:
                    break
            convo["asked"].add(meta["object"])
            return q, a
        return self._exercises("ground", self.cfg.n_ground, GROUND_SPLITS, turn)

    def factchecks(self) -> list[dict]:
        """n_factcheck conversations of 1..max_turns fact-check exercises (shapes.factcheck): the facts of one scene
        in the first turn, each turn another description of it, and the picture of another scene."""
        def turn(scene, rng, t):
            q, a, _ = F.factcheck_qa(scene, self.spec, rng, raster=self.cfg.raster_order,
                                     located=self.cfg.located_lists, omissions=self.cfg.factcheck_omissions)
            return ("" if t else F.facts_block(scene, rng)) + q, a
        return self._exercises("factcheck", self.cfg.n_factcheck, FACTCHECK_SPLITS, turn, pictured=False)

    def _exercises(self, stream: str, n: int, splits: tuple[str, str], turn, pictured: bool = True) -> list[dict]:
        """n conversations (ids shapes-<stream>-<i>) of 1..max_turns turns `turn(scene, rng, t) -> (q, a)` about
        scenes of their own, shown with the scene's picture, or with `pictured=False` another scene's."""
        cfg, rng = self.cfg, self.rng(stream)
        out = []
        for i, split in enumerate(self.split(n, cfg.sft_test_frac)):
            scene, png = self.scene(rng)
            png = png if pictured else self.scene(rng)[1]
            turns = []
            for t in range(int(rng.integers(1, cfg.max_turns + 1))):
                q, a = turn(scene, rng, t)
                turns += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
            turns[0]["value"] = "<image>\n" + turns[0]["value"]
            rid = f"shapes-{stream}-{i:06d}"
            out.append({"id": rid, "image": png, "conversations": turns, "source": SOURCE,
                        "_split": splits[split == "test"]})
            self.keep(rid, scene, noisy_descriptions=[])
        return out

    # ------------------------------------------------------------------------------------------- preference pairs
    def preferences(self) -> list[dict]:
        cfg, rng = self.cfg, self.rng("preference")
        out = []
        for i, split in enumerate(self.split(cfg.n_pref, cfg.pref_test_frac)):
            scene, png = self.scene(rng)
            q = T.DESCRIBE_QUESTIONS[int(rng.integers(len(T.DESCRIBE_QUESTIONS)))]
            d1, twin = self.pref_response(scene, rng), None
            if cfg.pref_minimal_prob and rng.random() < cfg.pref_minimal_prob:
                pair = self.count_twin(scene, rng)
                swap = partial(T.swap_object, d1, scene, self.spec, rng, cfg.pref_twin_rename, cfg.pref_binding_prob)
                d1, twin = pair or (d1, swap())
            for _ in range(1000):
                d2 = twin or self.pref_response(scene, rng)
                winner = T.annotator_prefers(d1, d2)
                if winner is not None:
                    break
            else:
                raise RuntimeError("shapes world: could not sample two distinguishable responses")
            best, other = (d1, d2) if winner == 1 else (d2, d1)
            slot = int(rng.integers(1, 3))
            o1, o2 = (best, other) if slot == 1 else (other, best)
            rid = f"shapes-pref-{i:06d}"
            out.append({"id": rid, "image": png, "source": SOURCE, "_split": split,
                        "conversations": [{"from": "human", "value": "<image>\n" + q},
                                          {"from": "gpt", "value": best.text}],
                        "output_1": o1.text, "output_2": o2.text, "preference": slot,
                        "hallucination": bool(o1.hallucinated or o2.hallucinated), "facts": T.captions(scene)})
            self.keep(rid, scene, responses=[dataclasses.asdict(o1), dataclasses.asdict(o2)],
                      decided_by="hallucination" if len(o1.hallucinated) != len(o2.hallucinated) else "completeness",
                      counterfactual=twin is not None)
        return out

    def count_twin(self, scene: Scene, rng: np.random.Generator) -> tuple[T.Description, T.Description] | None:
        """An omission twin (pref_twin_omit_prob) or an addition twin (pref_twin_add_prob), winner first, each
        hallucinating as often as pref_response does; else or where the scene forbids it None (rename instead)."""
        cfg = self.cfg
        u = rng.random() if cfg.pref_twin_omit_prob or cfg.pref_twin_add_prob else 1.0
        if u >= cfg.pref_twin_omit_prob + cfg.pref_twin_add_prob:
            return None
        h = int(rng.choice(3, p=np.asarray(cfg.pref_hallucination_probs)))
        k = h + (u >= cfg.pref_twin_omit_prob)  # an addition twin picks its extra object too
        absent = T.pick_absent(scene, self.spec, rng, k, cfg.pref_binding_prob) if k else []
        make = T.omission_twin if u < cfg.pref_twin_omit_prob else partial(T.addition_twin, extra=absent.pop())
        return make(scene, rng, hallucinate=absent, detailed=bool(rng.random() < cfg.pref_detail_prob),
                    counted=cfg.pref_twin_counted, raster=cfg.raster_order, located=cfg.located_lists)

    def pref_response(self, scene: Scene, rng: np.random.Generator) -> T.Description:
        cfg, n = self.cfg, len(scene.objects)
        h = int(rng.choice(3, p=np.asarray(cfg.pref_hallucination_probs)))
        omit = int(rng.integers(1, n)) if n >= 2 and rng.random() < cfg.pref_omit_prob else 0
        exhaustive = omit == 0
        # absent objects replace real ones (or are added): the count does not give them away; a substituted list
        # may still be phrased as complete ("There are three shapes: ...")
        if h and (rng.random() < cfg.pref_substitute_prob or n - omit + h > cfg.max_objects):
            omit = min(n, omit + h)
        fakes = T.pick_absent(scene, self.spec, rng, h, cfg.pref_binding_prob) if h else []
        return T.describe(scene, rng, hallucinate=fakes, omit=omit, detailed=bool(rng.random() < cfg.pref_detail_prob),
                          exhaustive=exhaustive, raster=cfg.raster_order, located=cfg.located_lists)

    # ------------------------------------------------------------------------------------------- PPO prompts
    def ppo_prompts(self) -> list[dict]:
        cfg, rng = self.cfg, self.rng("ppo")
        out, splits = [], self.split(cfg.n_ppo, cfg.ppo_test_frac)
        for i in range(cfg.n_ppo):
            scene, png = self.scene(rng)
            facts, kind = T.captions(scene), _choose(rng, cfg.ppo_mix)
            if kind == "general":
                q = T.DESCRIBE_QUESTIONS[int(rng.integers(len(T.DESCRIBE_QUESTIONS)))]
                ref = T.describe(scene, rng, detailed="detail" in q, raster=cfg.raster_order,
                                 located=cfg.located_lists).text
                ctype, bonus = GENERAL, cfg.general_length_bonus
            elif kind == "mc":
                q, ref, gold, mc_facts = T.multiple_choice(scene, self.spec, self.counts, rng)
                ctype, bonus, facts = A_IN_ABCD + gold, cfg.other_length_bonus, facts + mc_facts
            elif kind == "yesno":
                yes = bool(rng.random() < 0.5)
                q, ref, _ = T.existence_qa(scene, self.counts, rng, answer_yes=yes, short=bool(rng.random() < 0.5),
                                           negatives_from=cfg.yesno_negatives, restate=cfg.yesno_restate)
                ctype, bonus = (YES_IN_YESNO if yes else NO_IN_YESNO), cfg.other_length_bonus
            else:
                raise ValueError(f"ShapesConfig.ppo_mix: unknown prompt kind {kind!r}")
            rid = f"shapes-ppo-{i:06d}"
            out.append({"id": rid, "image": png, "source": SOURCE, "_split": splits[i], "caption_type": ctype,
                        "length_bonus": float(bonus), "facts": facts,
                        "conversations": [{"from": "human", "value": "<image>\n" + q}, {"from": "gpt", "value": ref}]})
            self.keep(rid, scene, kind=kind)
        return out

    # ------------------------------------------------------------------------------------------- probes
    def probes(self) -> list[dict]:
        cfg, out = self.cfg, []
        rng = self.rng("pope")
        for img in range(cfg.pope_images):
            scene, png = self.scene(rng, lo=3)
            content = [o.name for o in scene.objects]
            pos = [scene.objects[j].category for j in rng.choice(len(scene.objects), size=3, replace=False)]
            for kind in T.NEGATIVE_KINDS:
                neg = T.negatives(scene, self.counts, rng, kind, pos, 3)
                for j, (obj, label) in enumerate(x for pair in zip(zip(pos, ["yes"] * 3), zip(neg, ["no"] * 3))
                                                 for x in pair):
                    rid = f"shapes-pope-{kind}-{img:04d}-{j}"
                    out.append({"id": rid, "image": png, "question": T.existence_question(obj), "answer": label,
                                "benchmark": "pope", "split": kind, "facts": T.captions(scene), "_split": "test",
                                "extra": {"object": obj, "negative_kind": None if label == "yes" else kind,
                                          "image_index": img, "image_content": content}})
                    self.keep(rid, scene)
        rng = self.rng("mmhal")
        for i in range(cfg.n_mmhal):
            scene, png = self.scene(rng, lo=2)
            qtype = T.MMHAL_TYPES[i % len(T.MMHAL_TYPES)]
            q, gold, extra = T.mmhal_qa(scene, self.spec, rng, qtype)
            rid = f"shapes-mmhal-{i:04d}"
            out.append({"id": rid, "image": png, "question": q, "answer": gold, "benchmark": "mmhal",
                        "split": "test", "facts": T.captions(scene), "_split": "test",
                        "extra": extra | {"question_type": qtype, "image_content": [o.name for o in scene.objects],
                                          "background": scene.background,
                                          "objects": [o.to_dict() for o in scene.objects]}})
            self.keep(rid, scene)
        return out


def n_scenes(cfg: ShapesConfig) -> int:
    return cfg.n_sft + cfg.n_ground + 2 * cfg.n_factcheck + cfg.n_pref + cfg.n_ppo + cfg.pope_images + cfg.n_mmhal


def build_world(cfg: ShapesConfig, progress: Callable[[int], None] | None = None) -> World:
    b = _Builder(cfg, progress)
    sft, sft_scenes = b.conversations()
    flat = {"conversation": sft + b.grounding() + b.factchecks(), "preference": b.preferences(),
            "ppo_prompt": b.ppo_prompts(), "probe": b.probes()}
    records: dict[str, dict[str, list[dict]]] = {}
    for kind, recs in flat.items():
        records[kind] = {}
        for r in recs:
            records[kind].setdefault(r.pop("_split"), []).append(r)
    stats = world_stats(cfg, b.counts, records, b.scenes, b.meta, sft_scenes)
    return World(cfg, b.spec, b.counts, records, b.scenes, b.meta, stats)


def generate_world(cfg: ShapesConfig | None = None) -> dict[str, dict[str, list[dict]]]:
    return build_world(cfg or ShapesConfig()).records


def write_world(out_dir: str, cfg: ShapesConfig | None = None, progress: bool = True) -> dict:
    """Generate and write the world; returns the world.json content."""
    from tqdm import tqdm

    from jaxlava.shapes.tokenizer import save_tokenizer, template_texts, tokenizer_info, train_tokenizer, world_texts
    from jaxlava.data.storage import write_records

    cfg = cfg or ShapesConfig()
    t0 = time.perf_counter()
    with tqdm(total=n_scenes(cfg), desc="shapes world", unit="img", disable=not progress) as bar:
        world = build_world(cfg, bar.update)
    t1 = time.perf_counter()
    # the fact-check records do not train the tokenizer: a world with them tokenizes everything else as one without
    read = {k: {s: r for s, r in v.items() if s not in FACTCHECK_SPLITS} for k, v in world.records.items()}
    texts = itertools.chain(template_texts(read), world_texts(read))
    tok = train_tokenizer(texts, cfg.vocab_size, cfg.tokenizer_split_punctuation,
                          world.spec.categories if cfg.tokenizer_object_tokens else ())
    save_tokenizer(tok, os.path.join(out_dir, "tokenizer"))
    t2 = time.perf_counter()
    written = {kind: {split: write_records(kind, recs, out_dir, split=split) for split, recs in splits.items()}
               for kind, splits in world.records.items()}
    t3 = time.perf_counter()
    info = {"config": cfg.to_dict(), "stats": world.stats, "tokenizer": tokenizer_info(tok), "written": written,
            "seconds": {"generate": round(t1 - t0, 2), "tokenizer": round(t2 - t1, 2), "write": round(t3 - t2, 2)}}
    write_json(os.path.join(out_dir, "world.json"), info, indent=1)  # written last: its presence marks a whole world
    return info


def load_world_info(out_dir: str) -> dict:
    with open(os.path.join(out_dir, "world.json")) as f:
        return json.load(f)
