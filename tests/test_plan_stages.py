"""The planner's `rm` and `ppo` stages (jaxlava.plan_stages) on the tiny preset, in-process on the 8 fake CPU
devices of conftest: report fields, optimizer state sharded like the trainable params, and the PPO plan's
parameter accounting (one base held once when shared, both bases otherwise)."""
import json
import math

import jax
import pytest
from flax import nnx

from jaxlava import plan, plan_stages
from jaxlava.lora import LoraConfig, lora_param_count, lora_shardings
from jaxlava.presets import get_preset
from jaxlava.sharding import make_mesh, use_mesh

LORA = LoraConfig(r=plan_stages.LORA_R, alpha=plan_stages.LORA_ALPHA)
RUNTIME = dict(param_dtype="float32", dtype="bfloat16", remat=True, scan_layers=True)


@pytest.fixture(scope="module", autouse=True)
def eight_devices():
    if jax.device_count() != 8:
        pytest.skip(f"needs the 8 fake CPU devices of tests/conftest.py, jax has {jax.device_count()}")


def _args(*argv):
    return plan.parse_args(["--preset", "tiny", "--cpu-devices", "8", "--hbm-gib", "1", *argv])


def _nbytes(tree) -> int:
    return sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def _base_count(cfg) -> int:
    from jaxlava.model import LlavaModel
    return sum(x.size for x in jax.tree.leaves(nnx.state(nnx.eval_shape(lambda: LlavaModel(cfg, rngs=nnx.Rngs(0))))))


def _check_sharded_like_params(state):
    """Adam's two moments carry exactly the params' shardings (and the params are not all replicated)."""
    params = state.params
    p_def = jax.tree.structure(params)
    p_sh = [x.sharding for x in jax.tree.leaves(params)]
    moments = [s for s in jax.tree.leaves(state.opt_state, is_leaf=lambda x: jax.tree.structure(x) == p_def)
               if jax.tree.structure(s) == p_def]
    assert len(moments) == 2  # mu, nu
    for m in moments:
        assert [x.sharding for x in jax.tree.leaves(m)] == p_sh
        assert [x.shape for x in jax.tree.leaves(m)] == [x.shape for x in jax.tree.leaves(params)]
    assert any(not s.is_fully_replicated for s in p_sh)
    rest = [x for x in jax.tree.leaves(state.opt_state) if x.ndim == 0]
    assert rest and all(x.sharding.is_fully_replicated for x in rest)  # step counts


def _check_adapter(adapter, mesh):
    want = lora_shardings(adapter, mesh)
    assert jax.tree.leaves(jax.tree.map(lambda x: x.sharding, adapter)) == jax.tree.leaves(want)
    assert all(x.shape[-1] == LORA.r for x in jax.tree.leaves({k: v["a"] for k, v in adapter.items()}))


def test_rm_plan(capsys, tmp_path):
    out = tmp_path / "rm.json"
    r = plan.main(["--preset", "tiny", "--stage", "rm", "--cpu-devices", "8", "--mesh", "fsdp=4,tensor=2",
                   "--batch", "16", "--seq-len", "16", "--hbm-gib", "1", "--json", str(out)])
    text = capsys.readouterr().out
    cfg = get_preset("tiny")
    T = 16 + cfg.num_image_tokens
    assert f"16 pairs x 2 x {T}" in text and "fits" in text.split("verdict")[1]
    assert json.loads(out.read_text())["stage"] == "rm"
    assert r["chips"] == 8 and r["mesh"] == "data=1,fsdp=4,tensor=2" and r["seq"] == T
    n_trainable = lora_param_count(cfg, LORA) + cfg.text.hidden_size + 1
    assert r["param_count"] == _base_count(cfg) + n_trainable
    assert r["params_global_bytes"] == 4 * r["param_count"]
    # Adam's moments cover only the adapter and head (float32), split over the mesh like them (the rank dim and
    # the head stay whole)
    assert 2 * 4 * n_trainable / 8 <= r["opt_bytes"] < 2 * 4 * n_trainable / 2
    assert r["temp_bytes"] > 0 and r["flops"] > 0 and r["fits"] is True
    assert r["total_bytes"] >= r["params_bytes"] + r["opt_bytes"]
    # model FLOPs: both candidates of each pair through the whole model
    assert r["model_flops_per_chip"] == pytest.approx(plan.model_flops(cfg, 32, T) / 8)


@pytest.mark.parametrize("mesh_spec", ["fsdp=8", "fsdp=4,tensor=2"])
def test_rm_state_and_batch_shardings(mesh_spec):
    cfg = get_preset("tiny", **RUNTIME)
    mesh = make_mesh(mesh_spec)
    with use_mesh(mesh):
        spec = plan.STAGES["rm"](cfg, mesh, 8, 16, 1)
    state, base, batch = spec.args
    _check_sharded_like_params(state)
    _check_adapter(state.params["lora"], mesh)
    assert all(x.sharding.is_fully_replicated for x in jax.tree.leaves(state.params["head"]))
    assert state.params["head"]["w"].shape == (cfg.text.hidden_size,)
    T = 16 + cfg.num_image_tokens
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (8, 2, T)
    assert batch["pixel_values"].shape == (8, 3, 32, 32) and batch["choice"].shape == (8,)
    assert batch["input_ids"].sharding.spec[0] in ("fsdp", ("data", "fsdp"))
    assert _nbytes(base) == 4 * _base_count(cfg)


def test_ppo_plan_shared_base_counts_it_once(capsys):
    cfg = get_preset("tiny")
    r = plan.main(["--preset", "tiny", "--stage", "ppo", "--cpu-devices", "8", "--mesh", "fsdp=8", "--batch", "16",
                   "--seq-len", "24", "--response-len", "8", "--grad-accum", "2", "--hbm-gib", "1"])
    text = capsys.readouterr().out
    assert "rollout KV cache (not planned)" in text and "also the reward/value base" in text
    Tp = 24 + cfg.num_image_tokens
    assert r["reward_preset"] == "same" and r["shared_base"] is True and r["seq"] == Tp and r["value_seq"] == Tp
    n_trainable = 2 * lora_param_count(cfg, LORA) + cfg.text.hidden_size + 1
    assert r["param_count"] == _base_count(cfg) + n_trainable  # the base once, plus both adapters and the head
    assert r["params_bytes"] == r["policy_base_bytes"] + r["adapters_bytes"]
    assert r["policy_base_bytes"] == r["value_base_bytes"]
    # Adam's two float32 moments of exactly the trainable shards (+ step counters); on fsdp only, the adapters'
    # `b` of q/k/v/gate/up (out dim on `tensor`) stay whole
    assert 2 * r["adapters_bytes"] <= r["opt_bytes"] <= 2 * r["adapters_bytes"] + 64
    assert 4 * n_trainable / 8 < r["adapters_bytes"] < 4 * n_trainable
    assert r["fits"] is True and r["temp_bytes"] > 0
    # the compiled step's arguments hold the base once too: total = args + outputs - aliases + temps
    assert r["total_bytes"] < r["params_bytes"] + r["policy_base_bytes"] + r["opt_bytes"] + r["batch_bytes"] \
        + r["temp_bytes"] + 2 * r["adapters_bytes"]
    assert r["model_flops_per_chip"] == pytest.approx(2 * plan.model_flops(cfg, 16, Tp) / 8)
    # KV cache: 2 x layers x kv heads x head dim x (query + response) x rows per chip x bf16
    t = cfg.text
    assert r["rollout_batch"] == 32
    assert r["kv_cache_bytes"] == 2 * t.num_hidden_layers * t.num_key_value_heads * t.head_dim * Tp * (32 // 8) * 2


def test_ppo_plan_two_bases_counts_both():
    args = _args("--stage", "ppo", "--mesh", "fsdp=4,tensor=2", "--batch", "8", "--seq-len", "24",
                 "--response-len", "8", "--reward-preset", "shapes")
    r = plan.plan(args)
    pol, rew = get_preset("tiny"), get_preset("shapes")
    assert pol.vision.image_size != rew.vision.image_size
    assert r["reward_preset"] == "shapes" and r["shared_base"] is False
    assert r["seq"] == 24 + pol.num_image_tokens and r["value_seq"] == 24 + rew.num_image_tokens
    n_trainable = lora_param_count(pol, LORA) + lora_param_count(rew, LORA) + rew.text.hidden_size + 1
    assert r["param_count"] == _base_count(pol) + _base_count(rew) + n_trainable
    assert r["params_bytes"] == r["policy_base_bytes"] + r["value_base_bytes"] + r["adapters_bytes"]
    assert r["value_base_bytes"] > r["policy_base_bytes"] > 0
    assert r["fits"] is True and r["temp_bytes"] > 0 and r["total_bytes"] >= r["params_bytes"] + r["opt_bytes"]
    assert r["model_flops_per_chip"] == pytest.approx(
        (plan.model_flops(pol, 8, r["seq"]) + plan.model_flops(rew, 8, r["value_seq"])) / 8)


@pytest.mark.parametrize("mesh_spec", ["fsdp=8", "fsdp=4,tensor=2"])
def test_ppo_state_and_batch_shardings(mesh_spec):
    pol, rew = get_preset("tiny", **RUNTIME), get_preset("shapes", **RUNTIME)
    mesh = make_mesh(mesh_spec)
    with use_mesh(mesh):
        spec = plan.STAGES["ppo"](pol, mesh, 8, 24, 1, reward_cfg=rew, response_len=8)
    state, frozen, mb = spec.args
    _check_sharded_like_params(state)
    _check_adapter(state.params["policy"], mesh)
    _check_adapter(state.params["value"], mesh)
    # the value adapter and head have the reward base's shapes
    assert state.params["value"]["q_proj"]["a"].shape == (rew.text.num_hidden_layers, rew.text.hidden_size, LORA.r)
    assert state.params["policy"]["q_proj"]["a"].shape == (pol.text.num_hidden_layers, pol.text.hidden_size, LORA.r)
    assert state.params["value_head"]["w"].shape == (rew.text.hidden_size,)
    assert set(frozen) == {"policy_base", "value_base"}
    assert _nbytes(frozen["value_base"]) == 4 * _base_count(rew)
    Tp, Tv = 24 + pol.num_image_tokens, 24 + rew.num_image_tokens
    assert mb["input_ids"].shape == (8, Tp) and mb["value_input_ids"].shape == (8, Tv)
    assert mb["pixel_values"].shape == (8, 3, 32, 32) and mb["reward_pixel_values"].shape == (8, 3, 64, 64)
    assert mb["response"].shape == mb["advantages"].shape == (8, 8)
    assert all(x.sharding.spec[0] in ("fsdp", ("data", "fsdp")) for x in mb.values())


def test_ppo_options():
    with pytest.raises(SystemExit, match="--reward-preset is for --stage ppo"):
        plan.plan(_args("--stage", "rm", "--reward-preset", "shapes"))
    with pytest.raises(SystemExit, match="'huge': not a preset"):
        plan.plan(_args("--stage", "ppo", "--reward-preset", "huge"))
    assert plan.reward_preset(plan.parse_args(["--preset", "llava-7b-224", "--stage", "ppo"])) == "llava-13b-336"
    assert plan.reward_preset(plan.parse_args(["--preset", "llava-13b-336", "--stage", "ppo"])) == "same"
    assert plan.reward_preset(_args("--stage", "ppo", "--reward-preset", "tiny")) == "same"
    mesh = make_mesh("fsdp=8")
    with pytest.raises(plan_stages.PlanError, match="--response-len 24 must be"):
        plan.STAGES["ppo"](get_preset("tiny"), mesh, 8, 24, 1, response_len=24)
