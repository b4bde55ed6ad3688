"""The reading exam (jaxlava/eval/shapes_reading.py, eval/reading.py): the answer parser, the scores of the world's
own answers and of answers that miss or invent, the exercises' determinism and mix, and the CLI end to end on a
small world with a random shapes model."""
import dataclasses
import importlib.util
import json
import os

import pytest
from cli_fixtures import ROOT

from jaxlava.data.templates import FACTS_HEADER
from jaxlava.eval import shapes_reading as R
from jaxlava.eval.runner import EvalError
from jaxlava.shapes import factcheck as F
from jaxlava.shapes.world import preset

CFG = preset("small", seed=2, colours=("red", "blue", "green", "yellow"), max_objects=3)
CLEAN = "The captions support every object in the description. It leaves nothing out."


def test_parse_answer():
    assert R.parse_answer(CLEAN, CFG) == ((), ())
    text = "The captions do not mention a red star and a blue square. It leaves out a green circle."
    assert R.parse_answer(text, CFG) == (("red star", "blue square"), ("green circle",))
    assert R.parse_answer("A red star.", CFG) == ((), ())  # another form names nothing


@pytest.fixture(scope="module")
def items():
    return R.exercises(CFG, 200)


def test_exercises_are_fixed_by_their_seed_and_cover_every_kind(items):
    again = R.exercises(CFG, 200)
    assert [(e.question, e.answer) for e in again] == [(e.question, e.answer) for e in items]
    assert [e.question for e in R.exercises(CFG, 200, seed=1)] != [e.question for e in items]
    kinds = {R.fake_kind(c, e.scene) for e in items for c in e.unsupported}
    assert kinds == set(R.KINDS)
    for e in items:
        assert not set(e.unsupported) & e.scene.categories and set(e.left_out) <= e.scene.categories


def test_scores_of_right_and_wrong_answers(items):
    right = R.score(items, {e.id: e.answer for e in items}, CFG)
    assert right["exact"] == 1.0 and right["false_alarms"] == 0.0 and right["left_out_found"] == 1.0
    assert all(v["found"] == 1.0 for v in right["unsupported_found"].values())
    blind = R.score(items, {e.id: CLEAN for e in items}, CFG)
    assert blind["unsupported_found_all"] == 0.0 and blind["clean_judged_clean"] == 1.0
    assert blind["left_out_found"] == 0.0 and 0 < blind["exact"] < 1
    # an answer that calls every present object unsupported: every false alarm is counted
    alarm = {e.id: "The captions do not mention " + " and ".join(f"a {c}" for c in sorted(e.scene.categories)) + "."
             for e in items}
    worst = R.score(items, alarm, CFG)
    assert worst["false_alarms"] == 1.0 and worst["clean_judged_clean"] == 0.0
    assert "binding" in R.table(right) and "false alarms" in R.table(right)


def test_factcheck_exercises_and_their_scores():
    items = R.factchecks(CFG, 120)
    assert [e.question for e in R.factchecks(CFG, 120)] == [e.question for e in items]
    assert all(e.question.startswith(FACTS_HEADER) and e.question.endswith(F.QUESTION) for e in items)
    right = R.score_factchecks(items, {e.id: e.answer for e in items})
    assert right["exact"] == 1.0 and right["verdicts_right_all"] == 1.0
    assert {k for k, v in right["verdicts_right"].items() if v["n"]} == {"present", *R.KINDS}
    yes = R.score_factchecks(items, {e.id: "; ".join(f"{c} yes" for c in e.named) + "." for e in items})
    assert yes["verdicts_right"]["present"]["right"] == 1.0 and yes["verdicts_right"]["binding"]["right"] == 0.0
    none = R.score_factchecks(items, {e.id: "The captions support every object." for e in items})
    assert none["verdicts_right_all"] == 0.0  # a verdict not given is wrong
    assert "absent: binding" in R.factcheck_table(right) and "omissions_right" not in right


def test_checklist_exercises_and_their_scores():
    items = R.checklists(CFG, 120)
    assert [e.question for e in R.checklists(CFG, 120)] == [e.question for e in items]
    assert [e.question for e in R.checklists(CFG, 120, seed=1)] != [e.question for e in items]
    for e in items:  # the world's own question about the scene's own picture, every item asked once
        assert e.question.startswith("Which of these objects are in the image? ")
        assert len(e.named) == CFG.checklist_items and e.image[:4] == b"\x89PNG"
        assert {c for c in e.named if F.parse_verdicts(e.answer)[c] == "yes"} == set(e.named) & e.scene.categories
    right = R.score_factchecks(items, {e.id: e.answer for e in items})
    assert right["exact"] == 1.0 and right["verdicts_right_all"] == 1.0 and "omissions_right" not in right
    assert {k for k, v in right["verdicts_right"].items() if v["n"]} == {"present", *R.KINDS}
    assert right["verdicts_right"]["present"]["n"] > 0.5 * sum(len(e.scene.categories) for e in items)
    yes = R.score_factchecks(items, {e.id: "; ".join(f"{c} yes" for c in e.named) + "." for e in items})
    assert yes["verdicts_right"]["present"]["right"] == 1.0
    assert all(yes["verdicts_right"][k]["right"] in (0.0, None) for k in R.KINDS)
    assert "checklist (grounding) exercise" in R.factcheck_table(right, "checklist (grounding) exercise")


def test_factcheck_omissions_are_scored_where_the_world_asks_for_them():
    items = R.factchecks(dataclasses.replace(CFG, factcheck_omissions=True), 60)
    assert all(e.question.endswith(F.OMISSIONS_QUESTION) for e in items)
    right = R.score_factchecks(items, {e.id: e.answer for e in items})
    assert right["omissions_right"] == 1.0 and "left-out objects exactly right" in R.factcheck_table(right)
    verdicts_only = R.score_factchecks(items, {e.id: e.answer.split(F.LEFT_OUT)[0] for e in items})
    assert verdicts_only["omissions_right"] == 0.0 and verdicts_only["verdicts_right_all"] == 1.0
    nothing = R.score_factchecks(items, {e.id: e.answer.split(F.LEFT_OUT)[0] + F.LEFT_OUT + "no object."
                                         for e in items})
    complete = sum(not F.parse_omissions(e.answer) for e in items) / len(items)
    assert nothing["omissions_right"] == pytest.approx(complete) and 0 < complete < 1


def _main(argv):
    spec = importlib.util.spec_from_file_location("eval_cli_reading", os.path.join(ROOT, "eval", "reading.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main(argv)


def test_cli_end_to_end_with_resume(tmp_path, capsys):
    from flax import nnx

    import jaxlava
    from jaxlava.model import LlavaModel
    from jaxlava.shapes.assets import WorldAssets
    from jaxlava.shapes.world import write_world
    data, model, out = str(tmp_path / "world"), str(tmp_path / "model"), str(tmp_path / "out")
    write_world(data, preset("small", n_sft=40, n_pref=8, n_ppo=8, pope_images=2, n_mmhal=8), progress=False)
    assets = WorldAssets(data)
    tok = assets.tokenizer
    mc = jaxlava.presets.shapes_config(len(tok), tok.convert_tokens_to_ids("<image>"))
    jaxlava.save_pretrained(LlavaModel(mc, rngs=nnx.Rngs(0)), model)
    assets.processor(mc).save_pretrained(model)
    argv = ["--model", model, "--data", data, "--out", out, "--n", "5", "--batch-size", "4", "--max-new-tokens", "3"]
    assert _main(argv + ["--limit", "4"]) == 0  # cut: nothing scored yet
    assert not os.path.exists(os.path.join(out, "results.json"))
    assert _main(argv) == 0
    with open(os.path.join(out, "results.json")) as fh:
        res = json.load(fh)
    assert res["n"] == 5 and res["generation"] == {"new_answers": 1, "reused_answers": 4}
    assert "whole answer exact" in capsys.readouterr().out
    assert _main(["--model", model, "--data", data, "--out", out + "_fc", "--n", "5", "--max-new-tokens", "3",
                  "--exercise", "factcheck"]) == 0
    with open(os.path.join(out + "_fc", "results.json")) as fh:
        assert json.load(fh)["benchmark"] == "shapes_factcheck"
    assert "absent: binding" in capsys.readouterr().out
    assert _main(["--model", model, "--data", data, "--out", out + "_cl", "--n", "3", "--max-new-tokens", "3",
                  "--exercise", "checklist"]) == 0
    with open(os.path.join(out + "_cl", "results.json")) as fh:
        assert json.load(fh)["benchmark"] == "shapes_checklist"
    assert "checklist (grounding) exercise" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="not a shapes world"):
        _main(["--model", model, "--data", str(tmp_path), "--out", out])
    with pytest.raises(EvalError, match="--n must be"):
        R.run(R.ReadingConfig(model=model, data=data, out=out, n=0))
