"""Sharding: mesh specs, the rule table applied to every parameter, SFT step equality across meshes,
sharded HF load, and process-local batches (8 fake CPU devices from conftest)."""
import math

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from jaxlava import distributed, sft
from jaxlava.hf import from_pretrained, save_pretrained
from jaxlava.model import LlavaModel
from jaxlava.presets import get_preset
from jaxlava.sharding import (RULES, batch_sharding, create_sharded, logical_to_spec, make_mesh, parse_mesh_spec,
                              state_shardings, use_mesh)

MESHES = [None, "data=8", "fsdp=8", "fsdp=4,tensor=2", "data=2,fsdp=2,tensor=2"]


def tiny_cfg():
    return get_preset("tiny")


def sft_batch(cfg, rows=8, text=12, seed=0):
    """8 rows: BOS, image placeholders (even rows), a prompt, an answer; labels -100 on image and prompt,
    right padding of varying length."""
    rng = np.random.default_rng(seed)
    n_img, T = cfg.num_image_tokens, 1 + cfg.num_image_tokens + text
    ids = np.zeros((rows, T), np.int32)
    mask = np.zeros((rows, T), np.int32)
    labels = np.full((rows, T), -100, np.int32)
    for b in range(rows):
        toks = [1] + ([cfg.image_token_index] * n_img if b % 2 == 0 else [])
        prompt = list(rng.integers(3, 100, size=3))
        answer = list(rng.integers(3, 100, size=2 + b % 5))
        seq = toks + prompt + answer
        ids[b, :len(seq)], mask[b, :len(seq)] = seq, 1
        labels[b, len(toks) + len(prompt):len(seq)] = answer
    pixels = rng.standard_normal((rows, 3, cfg.vision.image_size, cfg.vision.image_size)).astype(np.float32)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "pixel_values": pixels}


_MODELS: dict = {}


def sharded_model(spec):
    """(mesh, tiny model created directly sharded on it), built once per spec."""
    if spec not in _MODELS:
        mesh = make_mesh(spec)
        _MODELS[spec] = mesh, create_sharded(lambda: LlavaModel(tiny_cfg(), rngs=nnx.Rngs(0)), mesh)
    return _MODELS[spec]


def run_step(spec):
    cfg = tiny_cfg()
    mesh, model = sharded_model(spec)
    with use_mesh(mesh):
        batch = {k: jax.device_put(v, batch_sharding(mesh, v.ndim)) for k, v in sft_batch(cfg).items()}
        graphdef, trainable, frozen = sft.split_trainable(model)
        loss, aux, grads = jax.jit(sft.loss_and_grad, static_argnums=0)(graphdef, trainable, frozen, batch)
        return mesh, model, float(loss), jax.tree.map(np.asarray, grads)


_RESULTS: dict = {}


def result(spec):
    """run_step(spec), computed once per module."""
    if spec not in _RESULTS:
        _RESULTS[spec] = run_step(spec)
    return _RESULTS[spec]


# each mesh compiles its own step (~10 s of CPU alone, 40-60 s in the suite): the 3-axis and fsdp x tensor meshes run
# in `make test`; the one-axis meshes are opt-in (`make test-long`): their axes are in the meshes that stay (here
# data=2,fsdp=2,tensor=2; data=2,fsdp=4 in tests/test_ppo_run.py; fsdp=8 in tests/test_multiprocess.py)
LONG = pytest.mark.long


@pytest.mark.parametrize("spec", [pytest.param("data=8", marks=LONG), pytest.param("fsdp=8", marks=LONG),
                                  "fsdp=4,tensor=2", "data=2,fsdp=2,tensor=2"])
def test_sft_step_equal_across_meshes(spec):
    _, _, ref_loss, ref_grads = result(None)
    mesh, _, loss, grads = result(spec)
    assert mesh.size == 8
    assert abs(loss - ref_loss) <= 1e-5 * abs(ref_loss)
    ref_flat, flat = nnx.to_flat_state(ref_grads), dict(nnx.to_flat_state(grads))
    assert len(ref_flat) == len(flat) > 10
    for path, g in ref_flat:
        r, x = np.asarray(g[...]), np.asarray(flat[path][...])
        assert np.abs(r).max() > 0, f"{path}: zero reference gradient"
        err = np.abs(x - r).max() / np.abs(r).max()
        assert err <= 1e-5, f"{spec}: gradient of {path} differs by {err:.2e} (relative to max)"


@pytest.mark.parametrize("spec", MESHES[1:])
def test_every_parameter_follows_the_rule_table(spec):
    mesh, model = sharded_model(spec)
    n = 0
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        axes = var.get_metadata()["axes"]
        want = logical_to_spec(axes, var.shape, mesh)
        got = var[...].sharding
        assert got.mesh.shape == mesh.shape, path
        assert got.spec == want or (P(*got.spec) == P(*want)), f"{path}: {got.spec} != rule table {want}"
        # the spec itself follows RULES where the dims divide
        for dim, (name, entry) in enumerate(zip(axes, want)):
            rule = RULES[name]
            rule = () if rule is None else ((rule,) if isinstance(rule, str) else tuple(rule))
            got_axes = () if entry is None else ((entry,) if isinstance(entry, str) else tuple(entry))
            assert set(got_axes) <= set(rule), f"{path} dim {dim} ({name}): {got_axes} not in rule {rule}"
            size = math.prod(mesh.shape[a] for a in got_axes)
            assert var.shape[dim] % size == 0
        n += 1
    assert n > 10


def test_large_parameters_are_never_fully_replicated():
    mesh, model = sharded_model("fsdp=4,tensor=2")
    big = 0
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        if var.size < 4096:
            continue
        big += 1
        sh = var[...].sharding
        assert not sh.is_fully_replicated, f"{path} ({var.shape}, axes {var.get_metadata()['axes']}) is replicated"
        shard = sh.shard_shape(var.shape)
        assert math.prod(shard) < var.size, path
    assert big >= 5


# ---------------------------------------------------------------------------------------------- mesh specs
def test_parse_mesh_spec():
    assert parse_mesh_spec("data=2,fsdp=-1,tensor=2", 8) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert parse_mesh_spec("tensor=8", 8) == {"data": 1, "fsdp": 1, "tensor": 8}
    assert parse_mesh_spec(" fsdp = 4 , tensor=2 ", 8) == {"data": 1, "fsdp": 4, "tensor": 2}


@pytest.mark.parametrize("spec,msg", [
    ("fsdp=4", "covers 4 devices but 8"),
    ("data=3,fsdp=-1", "3 devices, which does not divide"),
    ("pipe=2", "unknown axis 'pipe'"),
    ("fsdp=2,fsdp=4", "axis 'fsdp' given twice"),
    ("fsdp", "not of the form axis=size"),
    ("fsdp=two", "must be an integer"),
    ("fsdp=-1,data=-1", "only one axis may be -1"),
    ("fsdp=0", "must be >= 1 or -1"),
])
def test_mesh_spec_errors(spec, msg):
    with pytest.raises(ValueError, match=msg):
        parse_mesh_spec(spec, 8)


def test_mesh_spec_mismatch_names_both_numbers():
    with pytest.raises(ValueError) as e:
        parse_mesh_spec("data=2,tensor=2", 8)
    assert "4" in str(e.value) and "8" in str(e.value)


def test_make_mesh_conventions():
    one = make_mesh(None)
    assert one.size == 1 and one.shape["fsdp"] == 1
    all_ = make_mesh("")
    assert all_.size == 8 and all_.shape["fsdp"] == 8
    m = make_mesh("data=2,fsdp=-1")
    assert dict(m.shape) == {"data": 2, "fsdp": 4, "tensor": 1}


def test_batch_sharding_spec():
    mesh = make_mesh("data=2,fsdp=2,tensor=2")
    assert batch_sharding(mesh, 3).spec == P(("data", "fsdp"), None, None)


# ---------------------------------------------------------------------------------------------- HF load
def test_sharded_from_pretrained_matches(tmp_path):
    cfg = tiny_cfg()
    model = LlavaModel(cfg, rngs=nnx.Rngs(3))
    save_pretrained(model, str(tmp_path))
    mesh = make_mesh("fsdp=4,tensor=2")
    with use_mesh(mesh):
        loaded = from_pretrained(str(tmp_path), shardings=lambda st: state_shardings(st, mesh))
        want = dict(nnx.to_flat_state(state_shardings(nnx.state(loaded, nnx.Param), mesh)))
        for path, var in nnx.to_flat_state(nnx.state(loaded, nnx.Param)):
            assert var[...].sharding.spec == want[path].spec, path
        batch = sft_batch(cfg)
        ids, mask, px = (jax.device_put(batch[k], batch_sharding(mesh, batch[k].ndim))
                         for k in ("input_ids", "attention_mask", "pixel_values"))
        got = np.asarray(jax.jit(lambda m, a, b, c: m(a, c, b))(loaded, ids, mask, px))
    ref = np.asarray(jax.jit(lambda m, a, b, c: m(a, c, b))(model, batch["input_ids"], batch["attention_mask"],
                                                            batch["pixel_values"]))
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()


# ---------------------------------------------------------------------------------------------- distributed
def test_global_batch_single_process():
    mesh = make_mesh("data=2,fsdp=2,tensor=2")
    local = {"input_ids": np.arange(8 * 5, dtype=np.int32).reshape(8, 5),
             "pixel_values": np.ones((8, 3, 4, 4), np.float32), "facts": ["a"] * 8}
    out = distributed.global_batch(local, mesh)
    assert out["input_ids"].shape == (8, 5) and out["input_ids"].sharding.spec == P(("data", "fsdp"), None)
    np.testing.assert_array_equal(np.asarray(out["input_ids"]), local["input_ids"])
    assert out["pixel_values"].sharding.spec[0] == ("data", "fsdp")
    assert out["facts"] is local["facts"]
    assert distributed.is_main_process()
    assert not distributed.maybe_initialize(env={})


def test_detect_cluster():
    assert distributed.detect_cluster({}) == (None, {})
    kind, kw = distributed.detect_cluster({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4",
                                           "JAX_PROCESS_ID": "2"})
    assert kind == "explicit" and kw == {"coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 2}
    with pytest.raises(ValueError, match="JAX_PROCESS_ID"):
        distributed.detect_cluster({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2"})
    assert distributed.detect_cluster({"SLURM_NTASKS": "8", "SLURM_STEP_ID": "0"})[0] == "slurm"
    assert distributed.detect_cluster({"SLURM_NTASKS": "1", "SLURM_STEP_ID": "0"})[0] is None
    assert distributed.detect_cluster({"TPU_WORKER_HOSTNAMES": "a,b,c,d"})[0] == "tpu"
    assert distributed.detect_cluster({"TPU_WORKER_HOSTNAMES": "localhost"})[0] is None
    assert distributed.detect_cluster({"JAXLAVA_DISTRIBUTED": "0", "TPU_WORKER_HOSTNAMES": "a,b"})[0] is None


# ---------------------------------------------------------------------------------------------- sharded reads
def test_load_sharded_reads_only_each_devices_block(tmp_path):
    from safetensors import safe_open
    from safetensors.numpy import save_file

    from jaxlava.sharding import load_sharded
    full = np.arange(16 * 6, dtype=np.float32).reshape(16, 6)
    save_file({"w": full}, str(tmp_path / "w.safetensors"))
    mesh = make_mesh("fsdp=4,tensor=2")
    sharding = jax.sharding.NamedSharding(mesh, P("fsdp", "tensor"))
    blocks = []
    with safe_open(str(tmp_path / "w.safetensors"), framework="numpy") as f:
        def getter(index):
            block = f.get_slice("w")[index]
            blocks.append(block.shape)
            return block
        arr = load_sharded(getter, full.shape, sharding, dtype=np.float16)
        assert arr.dtype == np.float16 and arr.sharding == sharding
        np.testing.assert_array_equal(np.asarray(arr), full.astype(np.float16))
        assert blocks and all(b == (4, 3) for b in blocks), blocks  # never the whole tensor
        with pytest.raises(ValueError, match=r"getter returned a block of shape \(16, 6\)"):
            load_sharded(lambda index: full, full.shape, sharding)
