"""The AOT planner (jaxlava.plan) and the model presets."""
import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxlava import plan
from jaxlava.presets import MODEL_PRESETS as PRESETS, get_preset, shapes_config
from jaxlava.sharding import like_params_shardings, make_mesh, opt_state_shardings, state_shardings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_planner_tiny_on_8_cpu_devices(tmp_path):
    out = tmp_path / "plan.json"
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    proc = subprocess.run([sys.executable, "-m", "jaxlava.plan", "--preset", "tiny", "--stage", "sft",
                           "--cpu-devices", "8", "--mesh", "fsdp=8", "--batch", "8", "--seq-len", "16",
                           "--param-dtype", "float32", "--hbm-gib", "1", "--json", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout
    for row in ("per chip: parameters", "per chip: optimizer state", "per chip: temporaries", "per chip: total",
                "XLA FLOPs / step", "chip HBM", "verdict"):
        assert row in text, text
    assert "fits" in text.split("verdict")[1]
    r = json.loads(out.read_text())
    cfg = get_preset("tiny")
    assert r["chips"] == 8 and r["mesh"] == "data=1,fsdp=8,tensor=1" and r["seq"] == 16 + cfg.num_image_tokens
    n_params = sum(x.size for x in jax.tree.leaves(nnx.state(nnx.eval_shape(
        lambda: plan_model(cfg)), nnx.Param)))
    assert r["param_count"] == n_params
    # fsdp=8: every dimension named `embed`/`vis_embed` divides by 8, only norms and biases stay whole
    assert r["params_global_bytes"] / 8 <= r["params_bytes"] < r["params_global_bytes"] / 8 * 1.2
    # Adam: two moments of the trainable (non-vision) params, sharded like them
    assert r["params_bytes"] < r["opt_bytes"] < 2 * r["params_bytes"]
    assert r["temp_bytes"] > 0 and r["flops"] > 0 and r["fits"] is True
    assert r["total_bytes"] >= r["params_bytes"] + r["opt_bytes"]


def plan_model(cfg):
    from jaxlava.model import LlavaModel
    return LlavaModel(cfg, rngs=nnx.Rngs(0))


def test_optimizer_state_sharded_like_params():
    import optax
    mesh = make_mesh("fsdp=4,tensor=2")
    abstract = nnx.eval_shape(lambda: plan_model(get_preset("tiny")))
    params = nnx.state(abstract, nnx.Param)
    sh = jax.tree.leaves(state_shardings(params, mesh))
    opt = jax.eval_shape(optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3)).init, params)
    repl = NamedSharding(mesh, P())
    leaves = like_params_shardings(opt, params, sh, repl)
    assert len(leaves) == len(jax.tree.leaves(opt)) == 2 * len(sh) + 1  # mu, nu, count
    assert sum(s is repl for s in leaves) == 1
    assert leaves[1:1 + len(sh)] == sh and leaves[1 + len(sh):] == sh
    assert jax.tree.leaves(opt_state_shardings(opt, params, mesh))[1:1 + len(sh)] == sh
    assert any(not s.is_fully_replicated for s in sh)


def test_unknown_and_unplanned_stages():
    assert set(plan.STAGES) >= {"sft", "rm", "ppo"}  # all planned (tests/test_plan_stages.py)
    args = plan.build_parser().parse_args(["--preset", "tiny", "--stage", "dpo", "--cpu-devices", "8"])
    with pytest.raises(SystemExit, match="unknown --stage 'dpo'"):
        plan.plan(args)


def test_topology_without_libtpu_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "libtpu", None)  # import libtpu -> ImportError
    with pytest.raises(SystemExit, match="needs libtpu"):
        plan.topology_devices("v5p:2x2x1")


def test_hbm_table():
    assert plan.chip_hbm_gib("v5p:2x2x4", None) == 95
    assert plan.chip_hbm_gib("v5e:4x4", None) == 16
    assert plan.chip_hbm_gib(None, None) is None
    assert plan.chip_hbm_gib(None, 40.0) == 40.0
    with pytest.raises(SystemExit, match="unknown TPU generation 'v9'"):
        plan.chip_hbm_gib("v9:2x2", None)


def test_model_flops_matches_6nd_for_the_decoder():
    cfg = get_preset("llava-7b-224")
    f = plan.model_flops(cfg, 1, 1)
    # one token: 6 x (decoder matmul params) dominates; 7B decoder ~ 6.5e9 matmul params
    assert 6 * 6.4e9 < f < 6 * 6.9e9 + 2 * 0.35e9 * 257


# ---------------------------------------------------------------------------------------------- presets
def _count(cfg):
    return sum(x.size for x in jax.tree.leaves(nnx.state(nnx.eval_shape(lambda: plan_model(cfg)), nnx.Param)))


def test_presets():
    c7, c13 = get_preset("llava-7b-224"), get_preset("llava-13b-336")
    assert (c7.text.hidden_size, c7.text.num_hidden_layers, c7.text.intermediate_size) == (4096, 32, 11008)
    assert (c13.text.hidden_size, c13.text.num_hidden_layers, c13.text.num_attention_heads) == (5120, 40, 40)
    assert c7.num_image_tokens == 256 and c13.num_image_tokens == 576
    assert c7.projector_type == c13.projector_type == "linear" and c7.image_token_index == 32000
    # Vicuna-7B 6.74e9 + CLIP-L 0.30e9 + projector 4.2e6;  Vicuna-13B 13.0e9 + CLIP-L
    assert 7.0e9 < _count(c7) < 7.1e9
    assert 13.3e9 < _count(c13) < 13.4e9
    s = shapes_config(1500, 1499)
    assert s.num_image_tokens == 64 and s.text.vocab_size == 1500 and s.projector_type == "mlp2x_gelu"
    assert get_preset("tiny", remat=True).remat and not get_preset("tiny").remat
    with pytest.raises(ValueError, match="unknown model preset 'huge'.*llava-7b-224, llava-13b-336, tiny, shapes"):
        get_preset("huge")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        shapes_config(100, 100)
    assert set(PRESETS) == {"llava-7b-224", "llava-13b-336", "tiny", "shapes"}


def test_tiny_preset_runs():
    cfg = get_preset("tiny")
    model = plan_model(cfg)
    ids = np.array([[1] + [cfg.image_token_index] * cfg.num_image_tokens + [5, 6]], np.int32)
    px = np.zeros((1, 3, 32, 32), np.float32)
    logits = nnx.jit(lambda m, a, b, c: m(a, b, c))(model, ids, px, np.ones_like(ids))
    assert logits.shape == (1, ids.shape[1], 128) and np.isfinite(np.asarray(logits)).all()


def test_model_flops_agrees_with_xla_on_an_unrolled_step():
    """The analytic count against XLA's own count of the compiled (unrolled: XLA counts a loop body once) step."""
    from jaxlava.sharding import use_mesh
    cfg = get_preset("tiny", scan_layers=False, remat=False)
    mesh = make_mesh(None)
    with use_mesh(mesh):
        spec = plan.build_sft(cfg, mesh, 2, 16, 1)
        cost = jax.jit(spec.fn).lower(*spec.args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    analytic = plan.model_flops(cfg, 2, 16 + cfg.num_image_tokens)
    assert 0.8 < analytic / cost["flops"] < 1.2, (analytic, cost["flops"])


# ---------------------------------------------------------------------------------------------- the TPU tables
TPU_ROW = dict(preset="llava-7b-224", topology="v5p:2x2x1", chips=4, batch=8, seq=1536)  # the smallest row


def _table_row(path: str) -> tuple[float, float, float, float]:
    """(params, opt, temp, total) GiB per chip of TPU_ROW in the planner table of README.md / docs/scaling.md."""
    r = TPU_ROW
    pattern = (rf"^\|\s*{re.escape(r['preset'])}\s*\|(?:\s*sft\s*\|)?\s*{re.escape(r['topology'])} \({r['chips']}\)\s*\|"
               rf"\s*{r['batch']} × {r['seq']}\s*\|\s*([\d.]+) / ([\d.]+) / ([\d.]+) / \*\*([\d.]+)\*\*\s*\|")
    with open(os.path.join(ROOT, path)) as fh:
        found = re.findall(pattern, fh.read(), re.MULTILINE)
    assert len(found) == 1, f"{path}: expected one planner row for {r}, found {len(found)}"
    return tuple(float(x) for x in found[0])


def test_readme_and_scaling_doc_agree_on_the_tpu_row():
    assert _table_row("README.md") == _table_row("docs/scaling.md")


@pytest.mark.slow
def test_planner_reproduces_the_smallest_tpu_row(tmp_path):
    """`python -m jaxlava.plan` for llava-7b-224 on v5p:2x2x1, batch 8, against the README / docs/scaling.md row
    (XLA's TPU compiler from libtpu on this CPU host; about 3 minutes on 2 cores)."""
    pytest.importorskip("libtpu", reason="libtpu is not installed (pip install -e '.[tpu]'): the planner's TPU rows "
                                         "need XLA's TPU compiler")
    params, opt, temp, total = _table_row("README.md")
    out = tmp_path / "plan.json"
    r = TPU_ROW
    # compile only, no TPU to guard: skip libtpu's one-process lockfile, so a planner run elsewhere on the host
    # does not make this one fail
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", ALLOW_MULTIPLE_LIBTPU_LOAD="1")
    proc = subprocess.run([sys.executable, "-m", "jaxlava.plan", "--preset", r["preset"], "--stage", "sft",
                           "--topology", r["topology"], "--batch", str(r["batch"]), "--json", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(out.read_text())
    assert (got["chips"], got["batch"], got["seq"]) == (r["chips"], r["batch"], r["seq"])
    gib = {k: got[f"{k}_bytes"] / plan.GIB for k in ("params", "opt", "temp", "total")}
    # parameters and optimizer state follow from shapes and shardings alone: equal to the table's rounding
    assert abs(gib["params"] - params) <= 0.006 and abs(gib["opt"] - opt) <= 0.006, (gib, params, opt)
    # temporaries and the total depend on XLA's TPU compiler: within 2 % of the table
    assert abs(gib["total"] - total) <= 0.02 * total, (gib["total"], total)
    assert abs(gib["temp"] - temp) <= 0.02 * total, (gib["temp"], temp)
    assert got["fits"] is True
