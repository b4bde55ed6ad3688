"""LoRA (jaxlava.lora): init, merge, roles over one base; PEFT IO (jaxlava.peft_io) parity with peft 0.21 +
transformers in both directions; old key spellings; the LLaVA-RLHF RM layout and pickle refusal."""
import json
import logging
import os
import warnings

import jax
import ml_dtypes
import numpy as np
import peft
import pytest
import torch
from flax import nnx
from safetensors.numpy import load_file, save_file
from transformers import LlavaForConditionalGeneration

import jaxlava
from jaxlava.lora import (TARGETS, LoraConfig, init_lora, lora_dims, lora_param_count, lora_shardings, make_lora,
                          merge_lora)
from jaxlava.peft_io import (AdapterFormatError, load_adapter, load_reward_head, load_reward_model_adapter,
                             save_adapter, save_reward_head, save_reward_model_adapter, target_regex)
from hf_fixtures import hf_logits, make_batch, tiny_hf_model

LCFG = LoraConfig(r=4, alpha=8.0)  # scale 2


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """A jaxlava model and its HF export (GQA, so k/v have their own flat width)."""
    src = tmp_path_factory.mktemp("src")
    tiny_hf_model(seed=5, gqa=True).save_pretrained(src)
    model = jaxlava.from_pretrained(str(src))
    out = tmp_path_factory.mktemp("export")
    jaxlava.save_pretrained(model, str(out))
    return model, str(out)


@pytest.fixture(scope="module")
def batch(export):
    from transformers import AutoConfig
    return make_batch(AutoConfig.from_pretrained(export[1]))


def random_adapter(model, seed=0, lcfg=LCFG):
    """Non-trivial adapter (b != 0) so that it changes the logits."""
    params = init_lora(model.config, lcfg, jax.random.key(seed))
    rng = np.random.default_rng(seed)
    return {k: {"a": np.asarray(v["a"]), "b": 0.05 * rng.standard_normal(v["b"].shape).astype(np.float32)}
            for k, v in params.items()}


def _real(a, mask):
    return a[mask.astype(bool)]


def _hf(path):
    return LlavaForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()


def test_defaults_init_is_peft_like_and_a_noop(export, batch):
    d = LoraConfig()
    assert (d.r, d.alpha, d.dropout, d.targets, d.scale) == (64, 16.0, 0.0, TARGETS, 0.25)  # spec §3.1
    with pytest.raises(ValueError, match="embed_tokens"):
        LoraConfig(targets=("q_proj", "embed_tokens"))
    model, _ = export
    params = init_lora(model.config, LCFG, jax.random.key(0))
    dims = lora_dims(model.config)
    assert dims["k_proj"] == (64, 32) and dims["o_proj"] == (64, 64)  # GQA: 2 kv heads x 16
    for name, (din, dout) in dims.items():
        a, b = np.asarray(params[name]["a"]), np.asarray(params[name]["b"])
        assert a.shape == (2, din, 4) and b.shape == (2, 4, dout)
        assert np.abs(a).max() <= 1 / np.sqrt(din) and np.abs(a).max() > 0.5 / np.sqrt(din)
        assert not b.any()
    assert lora_param_count(model.config, LCFG) == sum(x.size for x in jax.tree.leaves(params))
    # PEFT's own init of lora_A has the same bound (kaiming_uniform(a=sqrt(5)) -> 1/sqrt(in))
    pm = peft.get_peft_model(tiny_hf_model(gqa=True), peft.LoraConfig(r=4, lora_alpha=8, target_modules=target_regex()))
    peft_a = dict(pm.named_parameters())[
        "base_model.model.model.language_model.layers.0.mlp.down_proj.lora_A.default.weight"].detach().numpy()
    assert 0.5 / np.sqrt(96) < np.abs(peft_a).max() <= 1 / np.sqrt(96)
    ids, mask, px, _ = batch
    np.testing.assert_array_equal(np.asarray(model(ids, px, mask)),
                                  np.asarray(model(ids, px, mask, lora=make_lora(params, LCFG))))


def test_merge_equals_adapter_roles_share_the_base_and_merged_exports(export, batch, tmp_path):
    model, _ = export
    ids, mask, px, hf_px = batch
    p1, p2 = random_adapter(model, 1), random_adapter(model, 2)
    with_1 = np.asarray(model(ids, px, mask, lora=make_lora(p1, LCFG)))
    with_2 = np.asarray(model(ids, px, mask, lora=make_lora(p2, LCFG)))
    base = np.asarray(model(ids, px, mask))
    assert np.abs(_real(with_1 - base, mask)).max() > 1e-2 and np.abs(_real(with_1 - with_2, mask)).max() > 1e-2
    base_state = {k: np.asarray(v.get_value()) for k, v in nnx.to_flat_state(nnx.state(model))}
    merged = merge_lora(model, p1, LCFG)
    assert np.abs(_real(np.asarray(merged(ids, px, mask)) - with_1, mask)).max() <= 1e-5
    # the base is unchanged and shares no Variable or buffer with the merged model
    after = dict(nnx.to_flat_state(nnx.state(model)))
    for k, v in nnx.to_flat_state(nnx.state(merged)):
        np.testing.assert_array_equal(np.asarray(after[k].get_value()), base_state[k])
        assert v is not after[k] and v.get_value() is not after[k].get_value(), k
    merged.language_model.embed_tokens.set_value(merged.language_model.embed_tokens.get_value() * 0)
    jax.tree.map(lambda a: a.delete(), nnx.state(merged))  # e.g. donated by a jitted step
    np.testing.assert_array_equal(np.asarray(model(ids, px, mask)), base)
    # the merged export loads in transformers and gives the adapter's logits
    merged = merge_lora(model, p1, LCFG)
    jaxlava.save_pretrained(merged, str(tmp_path))
    ref = hf_logits(_hf(str(tmp_path)), ids, mask, hf_px)
    assert np.abs(_real(ref - with_1, mask)).max() <= 1e-4


def test_dropout_only_with_rng_and_sharded_adapter(export, batch):
    from jax.sharding import PartitionSpec as P

    from jaxlava.sharding import make_mesh
    model, _ = export
    ids, mask, px, _ = batch
    params = random_adapter(model, 7)
    lcfg = LoraConfig(r=4, alpha=8.0, dropout=0.5)
    plain = np.asarray(model(ids, px, mask, lora=make_lora(params, LCFG)))
    np.testing.assert_array_equal(np.asarray(model(ids, px, mask, lora=make_lora(params, lcfg))), plain)
    dropped = np.asarray(model(ids, px, mask, lora=make_lora(params, lcfg, rng=jax.random.key(1))))
    assert np.abs(_real(dropped - plain, mask)).max() > 1e-3
    # the adapter is laid out by the rule table: in/out dims like the kernels they adapt, rank replicated
    mesh = make_mesh("fsdp=4,tensor=2")
    sh = lora_shardings(params, mesh)
    assert sh["q_proj"]["a"].spec == P(None, "fsdp", None) and sh["q_proj"]["b"].spec == P(None, None, "tensor")
    assert sh["down_proj"]["a"].spec == P(None, "tensor", None) and sh["down_proj"]["b"].spec == P(None, None, "fsdp")
    placed = jax.device_put(params, sh)
    np.testing.assert_allclose(np.asarray(model(ids, px, mask, lora=make_lora(placed, LCFG))), plain, atol=1e-5)


def _assert_peft_loaded_exactly(pm, folder):
    """Every tensor of the file is a LoRA weight of pm and every LoRA weight of pm came from the file."""
    ours = load_file(os.path.join(folder, "adapter_model.safetensors"))
    theirs = {k: v.detach().numpy() for k, v in peft.get_peft_model_state_dict(pm).items()}
    assert set(ours) == set(theirs)
    for k in ours:
        np.testing.assert_array_equal(ours[k], theirs[k], err_msg=k)


def test_jaxlava_adapter_loads_in_peft_with_same_logits(export, batch, tmp_path):
    model, path = export
    params = random_adapter(model, 3)
    save_adapter(str(tmp_path), params, LCFG, base_model_name_or_path=path)
    keys = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert "base_model.model.model.language_model.layers.1.self_attn.k_proj.lora_A.weight" in keys
    assert keys["base_model.model.model.language_model.layers.1.self_attn.k_proj.lora_B.weight"].shape == (32, 4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pm = peft.PeftModel.from_pretrained(_hf(path), str(tmp_path)).eval()
    assert not [w for w in caught if "missing adapter keys" in str(w.message)]
    _assert_peft_loaded_exactly(pm, str(tmp_path))
    wrapped = [n for n, m in pm.named_modules() if hasattr(m, "lora_A")]
    assert len(wrapped) == 14 and not any("vision" in n for n in wrapped)
    assert all(m.scaling["default"] == LCFG.scale for n, m in pm.named_modules() if hasattr(m, "lora_A"))
    ids, mask, px, hf_px = batch
    ref = hf_logits(pm, ids, mask, hf_px)
    got = np.asarray(model(ids, px, mask, lora=make_lora(params, LCFG)))
    assert np.abs(_real(got, mask) - _real(ref, mask)).max() <= 1e-4
    with pm.disable_adapter():
        base = hf_logits(pm, ids, mask, hf_px)
    assert np.abs(_real(ref - base, mask)).max() > 1e-2, "the adapter must be active in PEFT"


def test_peft_adapter_reads_into_jaxlava_with_same_logits(export, batch, tmp_path):
    model, path = export
    cfg = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules=target_regex())
    pm = peft.get_peft_model(_hf(path), cfg).eval()
    torch.manual_seed(0)
    with torch.no_grad():  # PEFT initialises lora_B to zero: randomise every LoRA weight
        for n, p in pm.named_parameters():
            if "lora_" in n:
                p.copy_(0.1 * torch.randn_like(p))
    pm.save_pretrained(str(tmp_path))
    ids, mask, px, hf_px = batch
    ref = hf_logits(pm, ids, mask, hf_px)
    with pm.disable_adapter():
        base = hf_logits(pm, ids, mask, hf_px)
    assert np.abs(_real(ref - base, mask)).max() > 1e-2, "the PEFT adapter must change the logits"
    params, lcfg = load_adapter(str(tmp_path), model.config)
    assert (lcfg.r, lcfg.alpha, lcfg.dropout, lcfg.scale, lcfg.targets) == (4, 8.0, 0.1, 2.0, TARGETS)
    got = np.asarray(model(ids, px, mask, lora=make_lora(params, lcfg)))
    assert np.abs(_real(got, mask) - _real(ref, mask)).max() <= 1e-4


def test_config_round_trip_subset_and_bf16(export, tmp_path):
    model, path = export
    lcfg = LoraConfig(r=8, alpha=3.5, dropout=0.05, targets=("v_proj", "q_proj", "down_proj"))
    params = random_adapter(model, 6, lcfg)
    save_adapter(str(tmp_path / "a"), params, lcfg, dtype=ml_dtypes.bfloat16)
    d = json.load(open(tmp_path / "a" / "adapter_config.json"))
    assert (d["r"], d["lora_alpha"], d["lora_dropout"], d["peft_type"]) == (8, 3.5, 0.05, "LORA")
    got, got_cfg = load_adapter(str(tmp_path / "a"), model.config)
    assert (got_cfg.r, got_cfg.alpha, got_cfg.dropout, got_cfg.scale) == (8, 3.5, 0.05, 3.5 / 8)
    assert set(got_cfg.targets) == set(lcfg.targets) == set(got)
    for k in params:
        assert got[k]["a"].dtype == np.float32
        np.testing.assert_array_equal(got[k]["b"], params[k]["b"].astype(ml_dtypes.bfloat16).astype(np.float32))
    # PEFT wraps exactly the chosen projections with the same scale
    pm = peft.PeftModel.from_pretrained(_hf(path), str(tmp_path / "a"))
    wrapped = {n.rsplit(".", 1)[-1]: m for n, m in pm.named_modules() if hasattr(m, "lora_A")}
    assert set(wrapped) == set(lcfg.targets) and all(m.scaling["default"] == 3.5 / 8 for m in wrapped.values())


def _write(folder, tensors, cfg):
    os.makedirs(folder, exist_ok=True)
    save_file(tensors, os.path.join(folder, "adapter_model.safetensors"))
    with open(os.path.join(folder, "adapter_config.json"), "w") as fh:
        json.dump(cfg, fh)


def test_old_key_spellings_vision_tensors_and_errors(export, tmp_path, caplog):
    model, _ = export
    params = random_adapter(model, 4)
    save_adapter(str(tmp_path / "new"), params, LCFG)
    t = load_file(str(tmp_path / "new" / "adapter_model.safetensors"))
    cfg = json.load(open(tmp_path / "new" / "adapter_config.json"))
    spellings = {"hf4": "base_model.model.language_model.model.layers",  # transformers 4.x llava-hf
                 "orig": "base_model.model.model.layers"}  # LlavaLlamaForCausalLM (LLaVA-RLHF release)
    for tag, prefix in spellings.items():
        renamed = {k.replace("base_model.model.model.language_model.layers", prefix)
                   .replace(".weight", ".default.weight"): v for k, v in t.items()}
        _write(str(tmp_path / tag), renamed, {**cfg, "target_modules": list(TARGETS)})
        got, got_cfg = load_adapter(str(tmp_path / tag), model.config)
        assert got_cfg.scale == LCFG.scale
        for k in params:
            np.testing.assert_array_equal(got[k]["a"], params[k]["a"])
            np.testing.assert_array_equal(got[k]["b"], params[k]["b"])
    # a plain-list target also wraps CLIP's q_proj: a fresh (B == 0) vision LoRA is ignored, a trained one refused
    old = {k.replace("model.language_model.layers", "model.layers"): v for k, v in t.items()}
    vis = "base_model.model.model.vision_tower.encoder.layers.0.self_attn.q_proj.lora_{}.weight"
    old[vis.format("A")], old[vis.format("B")] = np.ones((4, 32), np.float32), np.zeros((32, 4), np.float32)
    _write(str(tmp_path / "old"), old, {**cfg, "target_modules": ["q_proj", "k_proj"]})
    with caplog.at_level(logging.WARNING, logger="jaxlava.peft_io"):
        got, _ = load_adapter(str(tmp_path / "old"), model.config)
    assert "vision tower" in caplog.text
    np.testing.assert_array_equal(got["up_proj"]["b"], params["up_proj"]["b"])
    old[vis.format("B")][0, 0] = 1.0
    _write(str(tmp_path / "vis"), old, cfg)
    with pytest.raises(AdapterFormatError, match="vision_tower.*language model only"):
        load_adapter(str(tmp_path / "vis"))
    _write(str(tmp_path / "proj"), {**t, "base_model.model.model.multi_modal_projector.linear_1.lora_A.weight":
                                     np.ones((4, 32), np.float32)}, cfg)
    with pytest.raises(AdapterFormatError, match="multi_modal_projector.*decoder projection"):
        load_adapter(str(tmp_path / "proj"))
    missing = {k: v for k, v in t.items() if "layers.1.mlp.up_proj.lora_B" not in k}
    _write(str(tmp_path / "miss"), missing, cfg)
    with pytest.raises(AdapterFormatError, match="layer 1 up_proj"):
        load_adapter(str(tmp_path / "miss"), model.config)
    _write(str(tmp_path / "rank"), t, {**cfg, "r": 8})
    with pytest.raises(AdapterFormatError, match="r=8"):
        load_adapter(str(tmp_path / "rank"))
    _write(str(tmp_path / "dora"), t, {**cfg, "use_dora": True})
    with pytest.raises(AdapterFormatError, match="use_dora"):
        load_adapter(str(tmp_path / "dora"))
    with pytest.raises(AdapterFormatError, match="no adapter_config.json"):
        load_adapter(str(tmp_path))
    os.makedirs(tmp_path / "bin")
    json.dump(cfg, open(tmp_path / "bin" / "adapter_config.json", "w"))
    torch.save({"x": torch.zeros(1)}, tmp_path / "bin" / "adapter_model.bin")
    with pytest.raises(AdapterFormatError, match="(?s)adapter_model.bin is a torch pickle.*safetensors.*save_file"):
        load_adapter(str(tmp_path / "bin"))


def test_reward_head_and_rm_layout_round_trip_pickle_refused(export, tmp_path):
    model, _ = export
    head = {"w": np.linspace(-1, 1, 64).astype(np.float32), "b": np.float32(0.25)}
    save_reward_head(str(tmp_path / "h"), head)
    h = load_file(str(tmp_path / "h" / "reward_head.safetensors"))
    assert h["weight"].shape == (1, 64) and h["bias"].shape == (1,)
    got = load_reward_head(str(tmp_path / "h"), hidden_size=64)
    np.testing.assert_array_equal(got["w"], head["w"])
    assert got["b"].shape == () and float(got["b"]) == 0.25
    with pytest.raises(AdapterFormatError, match="head width 64 != model hidden size 32"):
        load_reward_head(str(tmp_path / "h" / "reward_head.safetensors"), hidden_size=32)

    params = random_adapter(model, 5)
    rm = tmp_path / "rm_lora_adapter_model"
    save_reward_model_adapter(str(rm), params, LCFG, head)
    assert sorted(os.listdir(rm)) == ["adapter_model", "reward_head.safetensors"]
    got, lcfg, got_head = load_reward_model_adapter(str(rm), model.config)
    assert (lcfg.r, lcfg.alpha, lcfg.scale) == (LCFG.r, LCFG.alpha, LCFG.scale)
    for k in params:
        np.testing.assert_array_equal(got[k]["b"], params[k]["b"])
    np.testing.assert_array_equal(got_head["w"], head["w"])
    # the release's head is a torch pickle named `reward_head`
    os.remove(rm / "reward_head.safetensors")
    torch.save({"weight": torch.zeros(1, 64), "bias": torch.zeros(1)}, rm / "reward_head")
    with pytest.raises(AdapterFormatError,
                       match="(?s)reward_head is not a safetensors file.*weights_only=True.*reward_head.safetensors"):
        load_reward_model_adapter(str(rm), model.config)
    os.remove(rm / "reward_head")
    with pytest.raises(AdapterFormatError, match="no reward_head.safetensors"):
        load_reward_model_adapter(str(rm), model.config)
