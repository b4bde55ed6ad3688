"""Yes/no answers that name the object before the verdict (`yesno_restate`, decisions 74): what the world writes,
that POPE's official parser and PPO's yes/no reward (`--yesno-pope`) read them as the plain answers, and that the
paper's rule stays the default."""
import re

import numpy as np

from jaxlava import ppo
from jaxlava.eval.pope import parse_answer
from jaxlava.shapes.world import build_world, preset
from jaxlava.training.rollout import yesno_verdict

QUESTION = re.compile(r"(?:<image>\n)?Is there an? (\w+ \w+) in the image\?(\n.*)?$", re.S)


def _pairs(world, kind, split):
    for r in world.records[kind][split]:
        for q, a in zip(r["conversations"][::2], r["conversations"][1::2]):
            m = QUESTION.match(q["value"])
            if m:
                yield r["id"], m.group(1), bool(m.group(2)), a["value"]


def test_restated_answers_name_the_object_then_the_verdict_and_parse_alike():
    cfg = dict(seed=5, n_sft=120, n_pref=4, n_ppo=40, pope_images=2, n_mmhal=8, n_ground=60, ground_yesno_prob=1.0,
               sft_mix=(("yesno", 1.0),), max_turns=1)
    plain, restated = build_world(preset("small", **cfg)), build_world(preset("small", yesno_restate=True, **cfg))
    seen = 0
    for kind, split in (("conversation", "train"), ("conversation", "ground")):
        for (rid, name, short, a0), (rid1, name1, short1, a1) in zip(_pairs(plain, kind, split),
                                                                     _pairs(restated, kind, split)):
            assert (rid, name, short) == (rid1, name1, short1)  # the same questions, only the answers differ
            present = name in restated.scenes[rid].categories
            verdict = "yes" if present else "no"
            assert a1 == f"{name} {verdict}." + ("" if short else " " + a0), (a0, a1)
            assert a0.startswith("Yes" if present else "No")
            assert parse_answer(a1) == parse_answer(a0) == verdict
            seen += 1
    assert seen >= 150, seen
    # the PPO yes/no prompts keep their questions and caption types
    key = [(r["id"], r["caption_type"]) for r in plain.records["ppo_prompt"]["train"]]
    assert key == [(r["id"], r["caption_type"]) for r in restated.records["ppo_prompt"]["train"]]


def test_the_yes_no_reward_reads_a_restated_answer_only_when_asked():
    no, yes, general = ppo.AnswerType.NO_IN_YESNO, ppo.AnswerType.YES_IN_YESNO, ppo.AnswerType.GENERAL
    texts = ["red circle no.", "red circle yes.", "No", "Yes, there is a red circle.", "There is not one.", "blue"]
    paper = [ppo.correctness(t, no) for t in texts]
    pope = [ppo.correctness(yesno_verdict(t, no), no) for t in texts]
    assert paper == [0.0, 0.0, 0.5, -0.5, 0.0, 0.0]  # the paper's rule: the first word only
    assert pope == [0.5, -0.5, 0.5, -0.5, 0.5, -0.5]  # POPE's parse: any "no"/"not"/"No" before the first '.'
    assert [ppo.correctness(yesno_verdict(t, yes), yes) for t in texts] == [0.0] * len(texts)  # no reward for Yes
    assert yesno_verdict("red circle no.", general) == "red circle no."
    assert yesno_verdict("red circle no.", np.int32(int(no))) == "No"
