"""The shapes-world judges (jaxlava/eval/shapes.py, eval/shapes.py): the mention parser (golden cases and a round
trip over the world's own texts), the description measures and the 0-6 rating on hand-made cases, run folders of
PPO / RL-init runs, and the CLI end to end on a small world with a random shapes model (resume included)."""
import importlib.util
import json
import os

import numpy as np
import pytest
from cli_fixtures import ROOT

import jaxlava
from jaxlava.data.buckets import bucket_length
from jaxlava.eval import shapes as S
from jaxlava.eval.runner import EvalError, resolve_model
from jaxlava.shapes import text as T
from jaxlava.shapes.scene import make_spec, sample_scene
from jaxlava.shapes.world import ShapesConfig

NEW = 4  # --max-new-tokens in the CLI tests


def _mentions(text):
    m = S.parse_mentions(text)
    return set(m.categories), set(m.shapes), set(m.negated)


# ----------------------------------------------------------------------------------------------- the parser
@pytest.mark.parametrize("text, cats, bare, negated", [
    ("The image shows a large red circle and a small blue square on a grey background.",
     {"red circle", "blue square"}, set(), set()),
    ("There are two circles and a star.", set(), {"circle", "star"}, set()),  # bare shapes, plurals
    ("A red circle. The circle is at the top left.", {"red circle"}, set(), set()),  # the circle = the red one
    ("A red circle and a square.", {"red circle"}, {"square"}, set()),
    ("RED CIRCLE!", {"red circle"}, set(), set()),
    ("The red object is large.", set(), set(), set()),  # a colour alone names nothing
    ("red and blue circles", {"blue circle"}, set(), set()),  # only a colour right before the shape counts
    ("No, there is no red circle in the image.", set(), set(), {"red circle"}),
    ("There is no red circle, blue square or green star.", set(), set(), {"red circle", "blue square",
                                                                          "green star"}),
    ("The image contains a large pink star, and there is no blue square or cyan circle.", {"pink star"}, set(),
     {"blue square", "cyan circle"}),
    ("I don't see a red circle, but there is a blue square.", {"blue square"}, set(), {"red circle"}),
    ("There are no circles. There is a yellow star.", {"yellow star"}, set(), {"circle"}),
    ("A picture without any green triangle; a purple hexagon is there.", {"purple hexagon"}, set(),
     {"green triangle"}),
    ("No. There is a red circle.", {"red circle"}, set(), set()),
    ("There is no red circle. Yes, there is a red circle.", {"red circle"}, set(), set()),
    ("", set(), set(), set()),
])
def test_parse_mentions_golden(text, cats, bare, negated):
    assert _mentions(text) == (cats, bare, negated)


def _scenes(n, seed=0):
    cfg = ShapesConfig()
    spec = make_spec(cfg.colours, cfg.shapes, cfg.cooccur_pairs, cfg.zipf_exponent, np.random.default_rng(seed))
    rng = np.random.default_rng(seed + 1)
    for _ in range(n):
        yield spec, rng, sample_scene(spec, rng, image_size=64, n_objects=int(rng.integers(1, 6)),
                                      cooccur_prob=cfg.cooccur_prob, backgrounds=cfg.backgrounds)


def test_parse_recovers_the_worlds_own_texts():
    """Every description the world writes (hallucinated, partial, detailed) parses to exactly the objects it
    names; the captions to the scene's objects; negative answers name nothing."""
    from jaxlava.shapes.text import Counts
    for spec, rng, scene in _scenes(400):
        n = len(scene.objects)
        h = int(rng.integers(0, 3))
        d = T.describe(scene, rng, hallucinate=T.pick_absent(scene, spec, rng, h) if h else [],
                       omit=int(rng.integers(0, n)), detailed=bool(rng.random() < 0.5))
        assert _mentions(d.text) == (set(d.mentioned) | set(d.hallucinated), set(), set()), d.text
        assert not S.parse_mentions(d.text).repeated, d.text  # the world never names a category twice
        caps = T.captions(scene)
        for k in (0, 1, 3, 4):
            assert _mentions(caps[k]) == (scene.categories, set(), set()), caps[k]
        assert _mentions(caps[2]) == (set(), {o.shape for o in scene.objects}, set()), caps[2]  # shapes only
        cats, _, negated = _mentions(T.mmhal_qa(scene, spec, rng, "adversarial")[1])
        assert not cats and len(negated) == 1
        counts = Counts.from_scenes(spec.categories, [scene])
        for yes in (True, False):
            _, a, info = T.existence_qa(scene, counts, rng, answer_yes=yes, short=False)
            assert _mentions(a)[0] == ({info["object"]} if yes else set()), a
        _, _, _, facts = T.multiple_choice(scene, spec, counts, rng)
        cats, _, negated = _mentions(facts[1])
        assert cats <= scene.categories and not negated & scene.categories, facts[1]


@pytest.mark.parametrize("text, repeated", [
    ("A small red square, a small red square and a small blue star.", {"red square"}),
    ("A red square. The square is small.", set()),  # the bare shape refers back: not a repeat
    ("There is no red circle. Yes, there is a red circle.", set()),  # negated, then named once
    ("A red circle, a blue star, a red circle and a blue star.", {"red circle", "blue star"}),
])
def test_parse_mentions_repeats(text, repeated):
    assert set(S.parse_mentions(text).repeated) == repeated


def test_repeats_and_recall_by_object_count():
    scores = S.description_scores([
        _judge("A red circle, a red circle and a blue square.", ("red circle", "blue square", "green star")),
        _judge("A green star.", ("red circle", "green star")),
        _judge("A red circle and a blue square.", ("red circle", "blue square"))])
    assert scores["repeats"] == pytest.approx(1 / 3)
    assert scores["recall_by_objects"] == {"2": {"images": 2, "recall": 3 / 4},
                                           "3": {"images": 1, "recall": 2 / 3}}
    table = S.description_table(scores)
    assert "Recall, 2 objects (%)" in table and "Repeats (%)" in table and "No object named (%)" in table


PARTNERS = {"red circle": "blue square", "blue square": "red circle", "green star": "yellow hexagon",
            "yellow hexagon": "green star"}


def test_habit_counts_absent_partners_of_present_objects_only():
    judged = [
        _judge("A red circle and a blue square.", ("red circle", "green star")),  # the habit: blue square
        _judge("A red circle and a blue square.", ("red circle", "blue square")),  # both present: no habit image
        _judge("A green star and a pink hexagon.", ("green star",)),  # absent partner not named; pink: other
        _judge("A yellow hexagon, a blue square and a green star.", ("green star", "red triangle")),  # habit once;
        # blue square's member (red circle) is absent, so blue square is an ordinary hallucination
        _judge("A red triangle.", ("red triangle",))]  # no pair member
    habit = S.description_scores(judged, PARTNERS)["habit"]
    assert habit == {"images": 3, "named": 2, "rate": 2 / 3, "mentions": 2, "share": 2 / 4,
                     "chair_i_other": 2 / 10}
    assert "habit" not in S.description_scores(judged) and "habit" not in S.description_scores(judged, {})
    table = S.description_table(S.description_scores(judged, PARTNERS))
    assert "Absent partner named (%)" in table and "| 66.7" in table


def test_world_partners_read_both_ways_and_name_a_bad_file(tmp_path):
    (tmp_path / "world.json").write_text(json.dumps({"config": {"cooccur_pairs": [["red circle", "blue square"]]}}))
    assert S.world_partners(str(tmp_path)) == {"red circle": "blue square", "blue square": "red circle"}
    (tmp_path / "world.json").write_text(json.dumps({"config": {}}))
    assert S.world_partners(str(tmp_path)) == {}
    (tmp_path / "world.json").write_text(json.dumps({"config": {"cooccur_pairs": [["red circle"]]}}))
    with pytest.raises(S.EvalError, match="world.json.*not two categories"):
        S.world_partners(str(tmp_path))
    (tmp_path / "world.json").write_text("{not json")
    with pytest.raises(S.EvalError, match="cannot read .*world.json"):
        S.world_partners(str(tmp_path))


# ----------------------------------------------------------------------------------------------- measures, rating
PRESENT = ("red circle", "blue square", "green star", "yellow diamond")


def _judge(text, present=PRESENT):
    return S.judge(S.parse_mentions(text), present)


def test_judge_and_description_scores():
    j1 = _judge("A red circle, a blue square and a pink hexagon.")  # 1 hallucinated of 3; 2 of 4 recalled
    assert j1.hallucinated == ("pink hexagon",) and set(j1.recalled) == {"red circle", "blue square"}
    j2 = _judge("There are a red circle, a blue square, a green star and a yellow diamond.")  # complete
    assert not j2.hallucinated and len(j2.recalled) == 4
    j3 = _judge("A star and a hexagon.")  # bare shapes: star is present (recalls the green star), hexagon is not
    assert j3.mentioned == ("hexagon", "star") and j3.hallucinated == ("hexagon",)
    assert j3.recalled == ("green star",)
    j4 = _judge("There is no red circle.")  # names nothing
    assert j4.mentioned == () and j4.recalled == ()
    scores = S.description_scores([j1, j2, j3, j4])
    assert scores == {"count": 4, "mentioned": 9, "hallucinated": 2, "present": 16, "recalled": 7,
                      "chair_i": 2 / 9, "chair_s": 0.5, "recall": 7 / 16, "repeats": 0.0, "empty": 1 / 4,
                      "recall_by_objects": {"4": {"images": 4, "recall": 7 / 16}},
                      "hallucination_kinds": {"new colour": 0, "new shape": 1, "both new": 1, "binding": 0}}
    assert S.description_scores([j4])["chair_i"] == 0.0  # no mention: no division by zero
    j5 = _judge("A red square, a pink circle and a blue hexagon.")
    assert S.description_scores([j5])["hallucination_kinds"] == {"new colour": 1, "new shape": 1, "both new": 0,
                                                                 "binding": 1}


@pytest.mark.parametrize("text, expected", [
    ("A red circle, a blue square, a green star and a yellow diamond.", 6),  # complete, no hallucination
    ("A red circle and a blue square.", 5),  # half
    ("A red circle.", 4),  # some
    ("A picture of some shapes.", 3),  # names no object
    ("There is no purple star.", 3),
    ("A red circle, a blue square, a green star and a cyan circle.", 2),  # hallucination, informative
    ("A red circle and a cyan circle.", 1),  # hallucination, H == C, a quarter recalled
    ("A red circle, a cyan circle and a pink star.", 0),  # mostly hallucinated: H > C
    ("A cyan circle.", 0),
])
def test_rating_rubric(text, expected):
    j = _judge(text)
    assert S.rating(j) == expected
    assert (S.rating(j) < 3) == bool(j.hallucinated)  # MMHal: ratings below 3 are the hallucinated ones


# ----------------------------------------------------------------------------------------------- run folders
def test_ppo_run_folder_resolves_to_base_and_policy_adapter(tmp_path):
    base = tmp_path / "sft" / "hf"
    base.mkdir(parents=True)
    (base / "config.json").write_text("{}")
    run = tmp_path / "ppo"
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_config.json").write_text("{}")
    (run / "config.json").write_text(json.dumps({"stage": "ppo", "init": str(base)}))
    assert resolve_model(str(run)) == (str(base), str(run / "adapter"))
    (run / "config.json").write_text(json.dumps({"stage": "rm", "init": str(base)}))
    with pytest.raises(EvalError, match="rm run folder"):
        resolve_model(str(run))
    (run / "config.json").write_text(json.dumps({"stage": "rlinit", "init": str(tmp_path / "gone")}))
    with pytest.raises(EvalError, match="gone"):
        resolve_model(str(run))


def test_default_out():
    assert S.default_out("runs/sft/hf") == os.path.join("evals", "sft", "shapes")
    assert S.default_out("runs/ppo/") == os.path.join("evals", "ppo", "shapes")


# ----------------------------------------------------------------------------------------------- the CLI
@pytest.fixture(scope="module")
def world_and_model(tmp_path_factory):
    """A small shapes world and a random shapes model sized to its tokenizer (llava-hf folder + processor)."""
    from flax import nnx

    from jaxlava.model import LlavaModel
    from jaxlava.shapes.assets import WorldAssets
    from jaxlava.shapes.world import preset, write_world
    root = tmp_path_factory.mktemp("shapes_eval")
    data, model = str(root / "world"), str(root / "model")
    write_world(data, preset("small"), progress=False)
    assets = WorldAssets(data)
    tok = assets.tokenizer
    mc = jaxlava.presets.shapes_config(len(tok), tok.convert_tokens_to_ids("<image>"))
    jaxlava.save_pretrained(LlavaModel(mc, rngs=nnx.Rngs(0)), model)
    assets.processor(mc).save_pretrained(model)
    return data, model


def _main(argv):
    spec = importlib.util.spec_from_file_location("eval_cli_shapes", os.path.join(ROOT, "eval", "shapes.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main(argv)


def _lines(path):
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _results(out):
    with open(os.path.join(out, "results.json")) as fh:
        return json.load(fh)


def test_cli_end_to_end_with_resume(world_and_model, tmp_path, monkeypatch, capsys):
    data, model = world_and_model
    out = str(tmp_path / "out")
    rows = []
    real = jaxlava.generate

    def counting(m, input_ids, *a, **kw):
        rows.append((len(input_ids), bucket_length(input_ids.shape[1])))
        return real(m, input_ids, *a, **kw)
    monkeypatch.setattr(jaxlava, "generate", counting)
    argv = ["--model", model, "--data", data, "--out", out, "--pope-images", "1", "--descriptions", "3",
            "--batch-size", "8", "--max-new-tokens", str(NEW)]
    assert _main(argv + ["--limit", "5"]) == 0  # a cut run: 5 answers, nothing scored
    first = _lines(os.path.join(out, "answers.jsonl"))
    assert len(first) == 5 and not os.path.exists(os.path.join(out, "results.json"))
    assert _main(argv) == 0
    answers = _lines(os.path.join(out, "answers.jsonl"))
    assert len(answers) == 3 * 6 + 3 and answers[:5] == first  # the first five are kept, not regenerated
    res = _results(out)
    assert res["generation"] == {"new_answers": 16, "reused_answers": 5}
    assert set(res) >= {"benchmark", "pope", "descriptions", "rating", "generation", "settings", "table", "data"}
    assert res["benchmark"] == "shapes" and set(res["pope"]["splits"]) == {"random", "popular", "adversarial"}
    assert all(s["n"] == 6 for s in res["pope"]["splits"].values())
    assert set(res["pope"]["overall"]) == {"accuracy", "precision", "recall", "f1", "yes_ratio"}
    assert set(res["descriptions"]) >= {"chair_i", "chair_s", "recall", "count"}
    assert res["descriptions"]["count"] == 3 and res["rating"]["count"] == 3
    assert set(res["rating"]) >= {"average", "hallucination_rate", "by_type"}
    assert res["settings"]["temperature"] == 0.0 and res["settings"]["max_new_tokens"] == NEW
    judged = _lines(os.path.join(out, S.JUDGEMENTS))
    by_id = {a["id"]: a["answer"] for a in answers}
    for r in judged:  # every description re-judged from its answer gives the stored rating
        assert S.rating(S.judge(S.parse_mentions(by_id[f"describe/{r['id']}"]), r["present"])) == r["score"]
    partners = S.world_partners(data)  # the world's co-occurrence pairs reach the habit measure
    assert partners and res["descriptions"]["habit"]["images"] == sum(
        any(c in partners and partners[c] not in r["present"] for c in r["present"]) for r in judged)
    assert len(set(rows)) == 1  # one batch size and length bucket throughout: nothing recompiles per batch
    rows.clear()
    assert _main(argv) == 0  # everything answered: scored again without generating
    assert rows == [] and _results(out)["generation"]["new_answers"] == 0
    assert "CHAIR-i" in capsys.readouterr().out
    from jaxlava.eval.report import report
    md = report([out], str(tmp_path / "report"))  # eval/report.py reads the shapes results too
    assert "CHAIR-i (%)" in md and "Shapes world" in md and (tmp_path / "report" / "shapes.png").exists()


def test_cli_errors_name_missing_inputs(world_and_model, tmp_path):
    data, model = world_and_model
    with pytest.raises(SystemExit, match="nowhere"):
        _main(["--model", model, "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="no_model"):
        _main(["--model", str(tmp_path / "no_model"), "--data", data, "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="world.json"):
        _main(["--model", model, "--data", str(tmp_path), "--out", str(tmp_path / "o")])
