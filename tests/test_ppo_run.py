"""PPO end to end on a small shapes world: the command, its metrics and outputs, no recompilation after the first
step, exact resume, one base model for every role, the same step on three meshes, clear input errors, and an
update that moves the policy the way the reward says."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from cli_fixtures import ROOT, cli_env
from jaxlava.training.metrics import read_metrics

pytestmark = pytest.mark.slow

TIMING = ("seconds_generate", "seconds_host", "seconds_score", "seconds_update", "tokens_per_s", "compiles")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """A small world with the SFT model, RL-init adapter and reward model the trainers write before their first
    step (`steps=0`): PPO's machinery is under test here, not the models' quality, and a trained step would only add
    compilation (the trainers' steps are tested in test_train_sft.py and test_train_rm.py)."""
    from jaxlava.shapes.world import preset, write_world
    from jaxlava.training import run_rm, run_sft
    d = tmp_path_factory.mktemp("ppo")
    world = str(d / "world")
    write_world(world, preset("small"), progress=False)
    small = dict(data=world, steps=0, batch_size=4, eval_every=100, checkpoint_every=100)
    run_sft.run(run_sft.SFTConfig(out=str(d / "sft"), vision_pretrain_steps=0, **small))
    init = str(d / "sft" / "hf")
    run_sft.run(run_sft.SFTConfig(out=str(d / "rlinit"), init=init, lora=True,
                                  adapter=run_sft.LoraConfig(r=4, alpha=8), **small))
    run_rm.run(run_rm.RMConfig(out=str(d / "rm"), init=init, lora=run_sft.LoraConfig(r=4, alpha=8), **small))
    return {"world": world, "init": init, "rlinit": str(d / "rlinit" / "adapter"), "rm": str(d / "rm" / "adapter")}


def ppo_args(stack, out, *extra):
    return ["--data", stack["world"], "--init", stack["init"], "--policy-adapter", stack["rlinit"],
            "--reward-adapter", stack["rm"], "--out", str(out), "--rollout-batch-size", "8",
            "--step-batch-size", "4", "--max-new-tokens", "12", "--rm-seq-len", "512", "--eval-prompts", "8",
            "--optim.lr", "1e-3", *extra]


def ppo_config(stack, out, *extra):
    from jaxlava.training.cli import parse
    from jaxlava.training.run_ppo import PPOConfig, RUN_PRESETS
    return parse(PPOConfig, ppo_args(stack, out, *extra), default=RUN_PRESETS["shapes"])


RUN = ("--steps", "4", "--eval-every", "2", "--checkpoint-every", "2")


@pytest.fixture(scope="module")
def command_run(stack, tmp_path_factory):
    """`python train/ppo.py`, 4 steps, uninterrupted: (its RUN_DIR, its stdout)."""
    out = tmp_path_factory.mktemp("cmd") / "ppo"
    r = subprocess.run([sys.executable, "train/ppo.py", *ppo_args(stack, out, *RUN)],
                       cwd=ROOT, env=cli_env(None), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return out, r.stdout


def test_ppo_command_metrics_outputs_and_no_recompiles(command_run, tmp_path):
    out, stdout = command_run
    assert "before PPO (held out)" in stdout and "before PPO -> after PPO" in stdout
    rows = read_metrics(str(out))
    assert [x["step"] for x in rows] == [1, 2, 3, 4]
    wanted = {"score", "stop_penalty", "length_term", "correct_term", "reward_total", "kl", "response_length",
              "stop_rate", "clipfrac", "approxkl", "entropy", "value_loss", "policy_loss", "explained_variance",
              "seconds_generate", "seconds_score", "seconds_update", "compiles", "lr", "grad_norm",
              "policy_grad_norm", "value_grad_norm"}
    assert wanted <= set(rows[0]), wanted - set(rows[0])
    assert "eval_score" in rows[1] and "eval_kl" in rows[3]
    assert all(np.isfinite(x["loss"]) for x in rows)
    assert rows[1]["compiles"] == rows[2]["compiles"] == rows[3]["compiles"], [x["compiles"] for x in rows]
    for f in ("adapter/adapter_config.json", "value/adapter_model/adapter_config.json",
              "value/reward_head.safetensors", "metrics.png", "config.json"):
        assert (out / f).exists(), f
    assert os.listdir(out / "tb")
    # the policy as an HF model plus a PEFT adapter, and merged
    from jaxlava.export import export
    assert "adapter" in export(str(out), str(tmp_path / "hf"))
    assert (tmp_path / "hf" / "adapter" / "adapter_model.safetensors").exists()
    assert "merged" in export(str(out), str(tmp_path / "merged"), merge=True)


def test_ppo_kill_after_a_checkpoint_then_restart_is_exact(stack, command_run, tmp_path):
    """SIGKILL as soon as the step-2 checkpoint is complete (the run has 4 steps), then rerun the same command: the
    metrics equal the uninterrupted command's."""
    cmd = [sys.executable, "train/ppo.py", *ppo_args(stack, tmp_path / "b", *RUN)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=cli_env(None), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    ckpt = tmp_path / "b" / "checkpoints" / "2"
    deadline = time.time() + 900
    while not ckpt.is_dir() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.kill()
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed after its checkpoint"
    again = subprocess.run(cmd, cwd=ROOT, env=cli_env(None), capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = [int(line.split()[3]) for line in again.stdout.splitlines() if line.startswith("resumed from step")]
    assert resumed == [2], again.stdout[-2000:]
    a, b = read_metrics(str(command_run[0])), read_metrics(str(tmp_path / "b"))
    assert [x["step"] for x in b] == [1, 2, 3, 4]
    for ra, rb in zip(a, b):
        for k, v in ra.items():
            if k not in TIMING and isinstance(v, (int, float)):
                assert rb[k] == pytest.approx(v, rel=1e-6, abs=1e-6), (ra["step"], k)


def test_one_base_serves_all_four_roles(stack):
    from jaxlava import sharding
    from jaxlava.training import ppo_roles, runs
    cfg = ppo_config(stack, "/tmp/unused")
    mesh = sharding.make_mesh(None)
    with sharding.use_mesh(mesh):
        roles = ppo_roles.load_roles(cfg, mesh, lambda p: runs.build_model(runs.RunConfig(init=p), mesh))
        assert roles.value_base is roles.policy_base and len(roles.bases()) == 1
        embed = roles.policy_base.language_model.embed_tokens[...]
        same = [a for a in jax.live_arrays() if a.shape == embed.shape and a.dtype == embed.dtype]
        assert len(same) == 1, "the base's embedding table exists once on the device"
        params = roles.initial_params()
        assert jax.tree.structure(params["value"]) == jax.tree.structure(roles.reward_lora)
        assert not np.shares_memory(np.asarray(params["value"]["q_proj"]["a"]),
                                    np.asarray(roles.reward_lora["q_proj"]["a"]))
        assert float(np.abs(np.asarray(params["value_head"]["w"])).max()) == 0.0


def test_bad_inputs_are_named(stack, tmp_path):
    from jaxlava.training import ppo_roles, rollout
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text("{}")
    with pytest.raises(ppo_roles.RoleError, match=f"trained on .*sft/hf, but --reward-base is {other}"):
        ppo_roles.reward_base_of(stack["rm"], str(other))

    class Roles:
        reward_processor = type("P", (), {"tokenizer": None})
        reward_facts = True
    host = {"id": ["rec-7"], "facts": [[]], "conversations": [[{"from": "human", "value": "<image>\nq"}]]}
    cfg = rollout.RolloutConfig(12, 1.0, 512, False, 0.1, -8, -10, 2, 10, False, 1, 1, False, None, 0, 0)
    with pytest.raises(ValueError, match="'rec-7' has no facts"):
        rollout.reward_inputs(Roles, host, ["a response"], 0, cfg)
    from jaxlava import sharding
    mesh = sharding.make_mesh(None, devices=jax.devices()[:1])
    bad = ppo_config(stack, "/tmp/unused", "--rollout-batch-size", "6")
    with pytest.raises(ValueError, match="--rollout-batch-size 6 is not a multiple of --step-batch-size 4"):
        ppo_roles.check_mesh_divides(bad, mesh)


def test_prompt_groups_repeat_each_prompt_and_centre_its_score(stack, tmp_path):
    """--prompt-group 4: each prompt four times in a row, the score's spread within groups logged, no recompiles;
    a group that does not divide the batch is refused before anything loads."""
    from jaxlava.training import run_ppo
    batch = {"input_ids": np.arange(6).reshape(3, 2), "id": ["a", "b", "c"], "facts": [["x"], [], ["y"]], "n": 5}
    rep = run_ppo.repeat_prompts(batch, 2)
    assert rep["id"] == ["a", "a", "b", "b", "c", "c"] and rep["facts"][2:4] == [[], []] and rep["n"] == 5
    np.testing.assert_array_equal(rep["input_ids"], [[0, 1], [0, 1], [2, 3], [2, 3], [4, 5], [4, 5]])
    assert run_ppo.repeat_prompts(batch, 0) is batch
    for bad in ("1", "3"):
        with pytest.raises(ValueError, match=f"--prompt-group {bad}: it must be 0"):
            run_ppo.run(ppo_config(stack, tmp_path / "bad", "--prompt-group", bad))
    cfg = ppo_config(stack, tmp_path / "g", "--prompt-group", "4", "--steps", "3", "--eval-every", "3")
    assert run_ppo.prompts_per_step(cfg) == 2
    run_ppo.run(cfg)
    rows = read_metrics(str(tmp_path / "g"))
    assert [x["step"] for x in rows] == [1, 2, 3] and "eval_score" in rows[2]
    assert all(0 <= x["score_std_in_group"] <= x["score_std"] + 1e-6 for x in rows)
    assert rows[1]["compiles"] == rows[2]["compiles"], [x["compiles"] for x in rows]


MESH_SCRIPT = textwrap.dedent("""
    import json, sys
    from safetensors.numpy import load_file
    sys.path.insert(0, {root!r})
    from jaxlava.training.cli import parse
    from jaxlava.training.run_ppo import PPOConfig, RUN_PRESETS, run
    from jaxlava.training.metrics import read_metrics
    args, out = json.loads(sys.argv[1]), {{}}
    for i, mesh in enumerate([None, "fsdp=4,tensor=2", "data=2,fsdp=4"]):
        d = f"{{sys.argv[2]}}/m{{i}}"
        run(parse(PPOConfig, args + ["--out", d, "--steps", "1", "--eval-every", "100"]
                  + (["--mesh", mesh] if mesh else []), default=RUN_PRESETS["shapes"]))
        w = load_file(d + "/adapter/adapter_model.safetensors")
        out[str(mesh)] = {{"loss": read_metrics(d)[-1]["loss"], "adapter": {{k: v.tolist() for k, v in w.items()}}}}
    print("RESULT" + json.dumps(out))
""")


def test_one_ppo_step_is_the_same_on_three_meshes(stack, tmp_path):
    args = ppo_args(stack, "unused", "--step-batch-size", "8", "--eval-prompts", "0")
    args = args[:args.index("--out")] + args[args.index("--out") + 2:]
    r = subprocess.run([sys.executable, "-c", MESH_SCRIPT.format(root=ROOT), json.dumps(args), str(tmp_path)],
                       cwd=ROOT, env=cli_env(8), capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.split("RESULT", 1)[1])
    ref = res.pop("None")
    for mesh, got in res.items():
        assert got["loss"] == pytest.approx(ref["loss"], rel=1e-5), mesh
        for k, v in ref["adapter"].items():
            np.testing.assert_allclose(np.asarray(got["adapter"][k]), np.asarray(v), rtol=1e-5, atol=1e-7,
                                       err_msg=f"{mesh}: {k}")


def test_reward_reading_comes_from_the_rm_run(tmp_path):
    """PPO builds the reward prompt as the RM run did (facts or none, and where) and shows it its images as it saw
    them (its config.json)."""
    from jaxlava.training import ppo_roles
    for i, (rec, want) in enumerate([({}, (True, False, 0)), ({"no_facts": True}, (False, False, 0)),
                                     ({"facts_first": True}, (True, True, 0)), ({"image_pool": 8}, (True, False, 8))]):
        run = tmp_path / str(i) / "rm"
        (run / "adapter").mkdir(parents=True)
        (run / "config.json").write_text(json.dumps({"stage": "rm", **rec}))
        assert ppo_roles._reward_reading(str(run / "adapter"), True) == want
    assert ppo_roles._reward_reading(str(tmp_path / "none" / "adapter"), False) == (False, False, 0)


def test_a_hard_linked_copy_of_a_base_is_the_same_checkpoint(tmp_path):
    """A run folder copied with hard links (cp -al) holds the same base as the original, so reward models recorded
    on either path share it; a byte copy, or a folder with other weights, is another checkpoint."""
    from jaxlava.training import ppo_roles
    a, linked, copied = tmp_path / "a", tmp_path / "linked", tmp_path / "copied"
    a.mkdir()
    (a / "config.json").write_text("{}")
    (a / "model.safetensors").write_bytes(b"weights")
    linked.mkdir()
    copied.mkdir()
    for name in ("config.json", "model.safetensors"):
        os.link(a / name, linked / name)
        (copied / name).write_bytes((a / name).read_bytes())
    assert ppo_roles._same_checkpoint(str(a), str(linked) + "/") and ppo_roles._same_checkpoint(str(a), str(a))
    assert not ppo_roles._same_checkpoint(str(a), str(copied))
    (linked / "extra.safetensors").write_bytes(b"more")
    assert not ppo_roles._same_checkpoint(str(a), str(linked))
    assert not ppo_roles._same_checkpoint(str(tmp_path / "none"), str(tmp_path / "none2"))


def _fixed_rows(cfg, roles, mesh, response: np.ndarray) -> dict:
    """Rollout rows of the world's first prompts (one per response row) with the given responses."""
    from jaxlava.data.pipeline import ppo_prompt_batches
    from jaxlava.data.storage import open_source
    from jaxlava.training import run_ppo
    width = run_ppo.query_width(cfg, roles.processor)
    batch = next(iter(ppo_prompt_batches(open_source(cfg.data, "ppo_prompt", "train"), roles.processor,
                                         batch_size=len(response), shuffle=False, num_epochs=1, buckets=(width,),
                                         max_prompt_len=width)))
    q = run_ppo.prompt_putter(mesh)(batch)["device"]
    rows = {"input_ids": np.concatenate([q["input_ids"], response], 1), "response": response,
            "attention_mask": np.concatenate([q["attention_mask"], np.ones_like(response)], 1),
            "response_mask": np.ones_like(response), "pixel_values": q["pixel_values"]}
    return rows | {"value_input_ids": rows["input_ids"], "value_attention_mask": rows["attention_mask"],
                   "reward_pixel_values": q["pixel_values"]}


def _scoring_inputs(cfg, roles, mesh):
    """(rows, graphs, params, frozen, rollout config) for the scorer: four fixed responses, the RM reading the
    policy's own tokens."""
    from flax import nnx
    from jaxlava import ppo
    from jaxlava.training import run_ppo
    rows = _fixed_rows(cfg, roles, mesh, np.asarray([[11, 12, 13, 14]] * 4, np.int32))
    n = len(rows["response"])
    rows |= {"rm_input_ids": rows["input_ids"], "rm_attention_mask": rows["attention_mask"],
             "response_length": np.full(n, 4, np.int32), "has_stop": np.ones(n), "length_bonus": np.zeros(n),
             "correct": np.zeros(n)}
    graphs = ppo.Graphs(nnx.graphdef(roles.policy_base), nnx.graphdef(roles.value_base), roles.policy_lora,
                        roles.value_lora)
    return rows, graphs, roles.initial_params(), run_ppo.frozen_tree(roles), run_ppo.rollout_config(cfg)


def test_reward_ensemble_scores_the_mean_of_its_members(stack, tmp_path):
    """--reward-ensemble: a second reward model whose head gives 2s + 1 where the first gives s makes the rollout
    score 1.5 s + 0.5; a member that reads another prompt (no facts) or another base is refused by name."""
    import dataclasses
    import shutil
    from jaxlava import sharding
    from jaxlava.peft_io import load_reward_head, save_reward_head
    from jaxlava.training import ppo_roles, rollout, runs
    run = tmp_path / "rm2"
    shutil.copytree(os.path.dirname(stack["rm"]), run)
    head = load_reward_head(str(run / "adapter"))
    save_reward_head(str(run / "adapter"), {"w": 2 * np.asarray(head["w"]), "b": 2 * np.asarray(head["b"]) + 1})
    mesh = sharding.make_mesh(None)
    with sharding.use_mesh(mesh):
        build = lambda p: runs.build_model(runs.RunConfig(init=p), mesh)  # noqa: E731
        cfg = ppo_config(stack, "/tmp/unused", "--reward-ensemble", str(run / "adapter"))
        assert cfg.reward_ensemble == (str(run / "adapter"),)
        roles = ppo_roles.load_roles(cfg, mesh, build)
        assert len(roles.reward_extra) == 1
        rows, graphs, params, frozen, rc = _scoring_inputs(cfg, roles, mesh)
        scorer = rollout.make_scorer(roles, graphs, rc)
        s = np.asarray(scorer(params, frozen | {"reward_extra": []}, rows)["score"])
        got = np.asarray(scorer(params, frozen, rows)["score"])
        np.testing.assert_allclose(got, 1.5 * s + 0.5, rtol=0, atol=1e-5)
        config = json.loads((run / "config.json").read_text())
        (run / "config.json").write_text(json.dumps(config | {"no_facts": True}))
        with pytest.raises(ppo_roles.RoleError, match=f"--reward-ensemble {run}/adapter reads a different prompt"):
            ppo_roles.load_roles(cfg, mesh, build)
        (run / "config.json").write_text(json.dumps(config))
        meta = run / "adapter" / "adapter_model" / "adapter_config.json"
        meta.write_text(json.dumps(json.loads(meta.read_text()) | {"base_model_name_or_path": str(tmp_path)}))
        with pytest.raises(ppo_roles.RoleError, match="ensemble members must share one base"):
            ppo_roles.load_roles(cfg, mesh, build)


def test_rollout_scores_with_the_reward_models_coarse_sight(stack):
    """A reward model trained with --image-pool N scores PPO's rollouts (and the audit's samples) on images seen as
    it saw them: the score of the rows equals the full-sight scorer's on the pre-pooled images, and differs from it
    on the raw ones."""
    import dataclasses
    from jaxlava import rm, sharding
    from jaxlava.training import ppo_roles, rm_audit, rollout, runs
    cfg = ppo_config(stack, "/tmp/unused")
    mesh = sharding.make_mesh(None)
    with sharding.use_mesh(mesh):
        roles = ppo_roles.load_roles(cfg, mesh, lambda p: runs.build_model(dataclasses.replace(cfg, init=p), mesh))
        assert roles.reward_image_pool == 0
        rows, graphs, params, frozen, rc = _scoring_inputs(cfg, roles, mesh)
        pool = roles.policy_base.config.vision.image_size // 4
        coarse = rows | {"reward_pixel_values": rm.coarse_images(rows["reward_pixel_values"], pool)}
        full = rollout.make_scorer(roles, graphs, rc)
        seeing = rollout.make_scorer(dataclasses.replace(roles, reward_image_pool=pool), graphs, rc)
        got = np.asarray(seeing(params, frozen, rows)["score"])
        np.testing.assert_allclose(got, np.asarray(full(params, frozen, coarse)["score"]), rtol=0, atol=1e-5)
        assert np.abs(got - np.asarray(full(params, frozen, rows)["score"])).max() > 1e-4
        # and so does the on-policy audit's scorer
        args = rows["rm_input_ids"], rows["rm_attention_mask"]
        audit = rm_audit._scorer(dataclasses.replace(roles, reward_image_pool=pool))(args[0], rows["pixel_values"],
                                                                                     args[1])
        np.testing.assert_allclose(np.asarray(audit), np.asarray(
            rm_audit._scorer(roles)(args[0], coarse["reward_pixel_values"], args[1])), rtol=0, atol=1e-5)


def test_ppo_update_moves_the_policy_toward_the_better_response(stack):
    """Scores -> shaped rewards -> GAE -> whitening -> clipped loss -> AdamW on the adapters, with the run's own
    functions and optimizer: half the batch answers every prompt with token X, half with token Y, and the reward
    model prefers X (sign +1) or Y (sign -1).  After four updates the policy's log-odds of X against Y at the first
    response slot have moved the way the scores say, by a margin (about 1.1 here); a sign slip anywhere in the
    chain reverses it (negating the advantages makes both signs fail)."""
    import dataclasses
    from flax import nnx
    from jaxlava import ppo, sharding
    from jaxlava.lora import make_lora
    from jaxlava.training import ppo_roles, run_ppo, runs
    from jaxlava.training.optim import make_optimizer
    from jaxlava.training.step import init_state
    cfg = ppo_config(stack, "/tmp/unused")
    mesh = sharding.make_mesh(None)
    with sharding.use_mesh(mesh):
        roles = ppo_roles.load_roles(cfg, mesh, lambda p: runs.build_model(dataclasses.replace(cfg, init=p), mesh))
        X, Y, N = 11, 12, 6
        rows = _fixed_rows(cfg, roles, mesh, np.asarray([[X] * N] * 4 + [[Y] * N] * 4, np.int32))
        graphs = ppo.Graphs(nnx.graphdef(roles.policy_base), nnx.graphdef(roles.value_base), roles.policy_lora,
                            roles.value_lora)
        params, frozen = roles.initial_params(), run_ppo.frozen_tree(roles)

        def log_odds(p):
            lp, _ = ppo.policy_logprobs(roles.policy_base, rows, make_lora(p["policy"], roles.policy_lora))
            return float(np.mean(np.asarray(lp)[:4, 0]) - np.mean(np.asarray(lp)[4:, 0]))
        old_lp, _ = ppo.policy_logprobs(roles.policy_base, rows, make_lora(params["policy"], roles.policy_lora))
        old_v = ppo.values(roles.value_base, rows, make_lora(params["value"], roles.value_lora), params["value_head"])
        tx = make_optimizer(dataclasses.replace(cfg.optim, warmup_steps=0, warmup_ratio=0.0), total_steps=10)
        update = jax.jit(ppo.make_update_step(graphs, ppo.LossConfig(), tx))
        before, n = log_odds(params), np.full(8, N, np.int32)
        for sign in (1.0, -1.0):
            score = sign * np.asarray([1.0] * 4 + [-1.0] * 4, np.float32)
            rewards = ppo.token_rewards(score, old_lp, old_lp, n, np.ones(8), np.zeros(8, np.float32), np.zeros(8))
            adv, ret = ppo.advantages(rewards, old_v)
            state = init_state(params, tx, 0)
            for _ in range(4):
                state, out = update(state, frozen, rows | {"old_logprobs": old_lp, "old_values": old_v,
                                                           "advantages": adv, "returns": ret})
                assert out.finite
            after = log_odds(state.params)
            assert sign * (after - before) > 0.5, (sign, before, after)
            m = out.metrics  # the two roles' norms split the one that the paper clips
            np.testing.assert_allclose(np.hypot(m["policy_grad_norm"], m["value_grad_norm"]), m["grad_norm"], rtol=1e-5)
        # --clip-per-role: the same update with one norm per role moves the policy the same way
        tx = make_optimizer(dataclasses.replace(cfg.optim, warmup_steps=0, warmup_ratio=0.0), total_steps=10,
                            clip_groups=ppo.ROLES)
        update = jax.jit(ppo.make_update_step(graphs, ppo.LossConfig(), tx))
        state = init_state(params, tx, 0)
        for _ in range(4):
            state, out = update(state, frozen, rows | {"old_logprobs": old_lp, "old_values": old_v,
                                                       "advantages": adv, "returns": ret})
        assert before - log_odds(state.params) > 0.5
