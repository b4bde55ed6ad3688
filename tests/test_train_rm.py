"""`train/rm.py` end to end on a small shapes world: metrics (held-out accuracy with the pair's own facts and
with another pair's), the PEFT adapter plus head it writes, and the --no-facts ablation (with image dropout)."""
import dataclasses
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from cli_fixtures import ROOT, cli_env as _env
from jaxlava.training.metrics import read_metrics
pytestmark = pytest.mark.slow


def _run(script, *args):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "train", script), *args], env=_env(),
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


@pytest.fixture(scope="module")
def sft(tmp_path_factory):
    from jaxlava.shapes.world import preset, write_world
    d = tmp_path_factory.mktemp("rm")
    world = str(d / "world")
    write_world(world, preset("small", n_pref=60), progress=False)
    # the SFT model before its first step: the reward model's training is under test, not the base's quality
    _run("sft.py", "--data", world, "--out", str(d / "sft"), "--steps", "0", "--batch-size", "4",
         "--eval-every", "100", "--vision-pretrain-steps", "0")
    return world, str(d / "sft" / "hf")


def test_rm_run_metrics_adapter_and_ablation(sft, tmp_path):
    from jaxlava import rm, sharding
    from jaxlava.training import runs
    from jaxlava.lora import make_lora
    from jaxlava.peft_io import load_reward_model_adapter
    world, init = sft
    out = str(tmp_path / "rm")
    stdout = _run("rm.py", "--data", world, "--init", init, "--out", out, "--steps", "4", "--batch-size", "4",
                  "--eval-every", "2", "--checkpoint-every", "2")
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for r in rows:
        assert {"loss", "lr", "grad_norm", "tokens_per_s", "accuracy"} <= set(r)
    evals = [r for r in rows if "eval_accuracy" in r]
    assert [r["step"] for r in evals] == [2, 4]
    assert all(0 <= r["eval_accuracy"] <= 1 and 0 <= r["eval_accuracy_other_facts"] <= 1 for r in evals)
    assert "final: step=4" in stdout and "eval_accuracy_other_facts=" in stdout
    # the written adapter and head, loaded afresh, give the trainer's final per-pair scores (its last checkpoint's
    # adapter and head, with the run's own LoRA config) on every held-out pair, and the last logged accuracy
    from jaxlava.lora import LoraConfig
    from jaxlava.training.checkpoint import Checkpointer
    from jaxlava.training.optim import OptimConfig, make_optimizer
    from jaxlava.training.run_rm import RMConfig, held_out_sets
    from jaxlava.training.step import init_state
    run_cfg = json.load(open(os.path.join(out, "config.json")))
    cfg = RMConfig(data=world, init=init, batch_size=4)
    mesh = sharding.make_mesh(None)
    with sharding.use_mesh(mesh):
        model = runs.build_model(cfg, mesh)
        proc = runs.processor_for(cfg, model.config)
        lora, lcfg, head = load_reward_model_adapter(os.path.join(out, "adapter"), model.config)
        train_lcfg = LoraConfig(**run_cfg["lora"])
        ck = Checkpointer(out)
        step, state, _, _ = ck.restore_latest(init_state({"lora": lora, "head": head}, make_optimizer(OptimConfig(), 4)))
        ck.close()
        assert step == 4
        final = jax.device_get(state.params)
        assert not np.array_equal(final["head"]["w"], np.zeros_like(final["head"]["w"]))
        def scorer(lc):
            return jax.jit(lambda lo, hd, b: rm.pair_scores(model, hd, b, lora=make_lora(lo, lc)))
        score_trained, score_reloaded = scorer(train_lcfg), scorer(lcfg)
        accs, n = [], 0
        for b in held_out_sets(cfg, proc, lambda b: b)["eval_accuracy"]:
            b = {k: v for k, v in b.items() if isinstance(v, np.ndarray)}
            trained = np.asarray(score_trained(final["lora"], final["head"], b))
            reloaded = np.asarray(score_reloaded(lora, head, b))
            np.testing.assert_allclose(reloaded, trained, rtol=0, atol=1e-5)
            accs.append(float(rm.preference_loss(reloaded, b["choice"])[1]["accuracy"]))
            n += len(b["choice"])
        # --eval-pairs 3: every held-out set holds the first three pairs only
        head = held_out_sets(dataclasses.replace(cfg, eval_pairs=3), proc, lambda b: b)
        assert {k: sum(len(b["choice"]) for b in v) for k, v in head.items()} == {
            "eval_accuracy": 3, "eval_accuracy_other_facts": 3}
    assert n >= 4
    assert abs(np.mean(accs) - evals[-1]["eval_accuracy"]) < 1e-6
    # eval/rm_twins.py scores the same pairs alike (its "all" row; this small world's pairs are not twins)
    from jaxlava.training.rm_twins import TwinsConfig, twins_report
    with sharding.use_mesh(mesh):  # every held-out pair (the trainer's evaluation leaves a last partial batch out)
        every = [b for b in held_out_sets(dataclasses.replace(cfg, batch_size=64), proc, lambda b: b)["eval_accuracy"]]
        assert len(every) == 1 and len(every[0]["choice"]) > n
        b = {k: v for k, v in every[0].items() if isinstance(v, np.ndarray)}
        s = np.asarray(score_reloaded(*load_reward_model_adapter(os.path.join(out, "adapter"), model.config)[::2], b))
        right = [bool(s[i, c] >= s[i, 1 - c]) for i, c in enumerate(b["choice"])]
    twins = twins_report(TwinsConfig(run=out, batch_size=4))["kinds"]  # 4 does not divide the held-out pairs
    assert twins["all"]["n"] == len(right) and twins["all"]["own"] == pytest.approx(np.mean(right))
    assert 0 <= twins["all"]["other"] <= 1
    ablation = str(tmp_path / "rm_nf")
    _run("rm.py", "--data", world, "--init", init, "--out", ablation, "--no-facts", "--steps", "2",
         "--batch-size", "4", "--eval-every", "2", "--image-dropout", "0.5", "--image-pool", "8")
    last = read_metrics(ablation)[-1]
    assert "eval_accuracy" in last and "eval_accuracy_other_facts" not in last
    assert 0 <= last["eval_accuracy_blank_image"] <= 1  # image dropout adds the held-out set with blank images
    saved = json.load(open(os.path.join(ablation, "config.json")))
    assert saved["no_facts"] is True and saved["image_dropout"] == 0.5 and saved["image_pool"] == 8
    # its held-out accuracy was taken on coarse images: the written adapter scores the same pairs seen so, and
    # seen whole it scores them otherwise
    nf = dataclasses.replace(cfg, no_facts=True)
    with sharding.use_mesh(mesh):
        lora, lcfg, head = load_reward_model_adapter(os.path.join(ablation, "adapter"), model.config)
        coarse, whole, accs = [], [], []
        for b in held_out_sets(nf, proc, lambda b: b)["eval_accuracy"]:
            b = {k: v for k, v in b.items() if isinstance(v, np.ndarray)}
            coarse.append(np.asarray(rm.pair_scores(model, head, b, lora=make_lora(lora, lcfg), image_pool=8)))
            whole.append(np.asarray(rm.pair_scores(model, head, b, lora=make_lora(lora, lcfg))))
            accs.append(float(rm.preference_loss(coarse[-1], b["choice"])[1]["accuracy"]))
    assert abs(np.mean(accs) - last["eval_accuracy"]) < 1e-6
    assert np.abs(np.concatenate(coarse) - np.concatenate(whole)).max() > 1e-4
