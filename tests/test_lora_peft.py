"""LoRA: init, merge, roles over one base; PEFT IO parity with peft 0.21 + transformers in both directions;
the LLaVA-RLHF RM layout and pickle refusal."""
import json
import logging
import os

import jax
import numpy as np
import peft
import pytest
import torch
from safetensors.numpy import load_file, save_file
from transformers import LlavaForConditionalGeneration

import jaxlava
from jaxlava.train.lora import LoraConfig, init_lora, lora_dims, make_lora, merge_lora
from jaxlava.train.peft_io import (AdapterFormatError, load_adapter, load_reward_model_adapter, save_adapter,
                                   save_reward_model_adapter, target_regex)
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


def random_adapter(model, seed=0):
    """Non-trivial adapter (b != 0) so that it changes the logits."""
    params = init_lora(jax.random.key(seed), model.config, LCFG)
    rng = np.random.default_rng(seed)
    return {k: {"a": np.asarray(v["a"]), "b": 0.05 * rng.standard_normal(v["b"].shape).astype(np.float32)}
            for k, v in params.items()}


def _real(a, mask):
    return a[mask.astype(bool)]


def test_init_is_peft_like_and_a_noop(export):
    model, _ = export
    params = init_lora(jax.random.key(0), model.config, LCFG)
    dims = lora_dims(model.config)
    for name, (din, dout) in dims.items():
        a, b = np.asarray(params[name]["a"]), np.asarray(params[name]["b"])
        assert a.shape == (2, din, 4) and b.shape == (2, 4, dout)
        assert np.abs(a).max() <= 1 / np.sqrt(din) and np.abs(a).max() > 0.5 / np.sqrt(din)
        assert not b.any()
    ids, mask, px, _ = make_batch(_hf_cfg(export))
    np.testing.assert_array_equal(np.asarray(model(ids, px, mask)),
                                  np.asarray(model(ids, px, mask, lora=make_lora(params, LCFG))))


def _hf_cfg(export):
    from transformers import AutoConfig
    return AutoConfig.from_pretrained(export[1])


def test_merge_equals_adapter_and_roles_share_the_base(export):
    model, path = export
    ids, mask, px, _ = make_batch(_hf_cfg(export))
    p1, p2 = random_adapter(model, 1), random_adapter(model, 2)
    with_1 = np.asarray(model(ids, px, mask, lora=make_lora(p1, LCFG)))
    with_2 = np.asarray(model(ids, px, mask, lora=make_lora(p2, LCFG)))
    base = np.asarray(model(ids, px, mask))
    assert np.abs(with_1 - base).max() > 1e-2 and np.abs(with_1 - with_2).max() > 1e-2
    merged = merge_lora(model, p1, LCFG.scale)
    np.testing.assert_allclose(_real(np.asarray(merged(ids, px, mask)), mask), _real(with_1, mask), atol=1e-4)
    # the source model is untouched and the merged model shares every non-adapted weight with it
    np.testing.assert_array_equal(np.asarray(model(ids, px, mask)), base)
    assert merged.language_model.embed_tokens[...] is model.language_model.embed_tokens[...]


def test_jaxlava_adapter_loads_in_peft_with_same_logits(export, tmp_path):
    model, path = export
    params = random_adapter(model, 3)
    save_adapter(str(tmp_path), params, LCFG, base_model_name_or_path=path)
    keys = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert "base_model.model.model.language_model.layers.1.self_attn.k_proj.lora_A.weight" in keys
    hf = LlavaForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    pm = peft.PeftModel.from_pretrained(hf, str(tmp_path)).eval()
    wrapped = [n for n, m in pm.named_modules() if hasattr(m, "lora_A")]
    assert len(wrapped) == 14 and not any("vision" in n for n in wrapped)
    ids, mask, px, hf_px = make_batch(hf.config)
    ref = hf_logits(pm, ids, mask, hf_px)
    got = np.asarray(model(ids, px, mask, lora=make_lora(params, LCFG)))
    assert np.abs(_real(got, mask) - _real(ref, mask)).max() <= 1e-4
    with pm.disable_adapter():
        base = hf_logits(pm, ids, mask, hf_px)
    assert np.abs(_real(ref - base, mask)).max() > 1e-2, "the adapter must be active in PEFT"


def test_peft_adapter_reads_into_jaxlava_with_same_logits(export, tmp_path):
    model, path = export
    hf = LlavaForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=target_regex(), init_lora_weights=False)
    torch.manual_seed(0)
    pm = peft.get_peft_model(hf, cfg).eval()
    pm.save_pretrained(str(tmp_path))
    ids, mask, px, hf_px = make_batch(hf.config)
    with torch.no_grad():
        ref = hf_logits(pm, ids, mask, hf_px)
        pm.disable_adapter_layers()
        base = hf_logits(pm, ids, mask, hf_px)
    assert np.abs(_real(ref - base, mask)).max() > 1e-2, "the PEFT adapter must change the logits"
    params, lcfg = load_adapter(str(tmp_path), model.config)
    assert (lcfg.r, lcfg.alpha, set(params)) == (4, 8.0, set(LCFG.targets))
    got = np.asarray(model(ids, px, mask, lora=make_lora(params, lcfg)))
    assert np.abs(_real(got, mask) - _real(ref, mask)).max() <= 1e-4


def _write(folder, tensors, cfg):
    os.makedirs(folder, exist_ok=True)
    save_file(tensors, os.path.join(folder, "adapter_model.safetensors"))
    with open(os.path.join(folder, "adapter_config.json"), "w") as fh:
        json.dump(cfg, fh)


def test_original_key_spelling_vision_tensors_and_errors(export, tmp_path, caplog):
    model, _ = export
    params = random_adapter(model, 4)
    save_adapter(str(tmp_path / "new"), params, LCFG)
    t = load_file(str(tmp_path / "new" / "adapter_model.safetensors"))
    cfg = json.load(open(tmp_path / "new" / "adapter_config.json"))
    # LLaVA-RLHF release (LlavaLlamaForCausalLM) spelling + a zero vision-tower LoRA from a plain-list target
    old = {k.replace("model.language_model.layers", "model.layers"): v for k, v in t.items()}
    vis = "base_model.model.model.vision_tower.encoder.layers.0.self_attn.q_proj.lora_{}.weight"
    old[vis.format("A")], old[vis.format("B")] = np.ones((4, 32), np.float32), np.zeros((32, 4), np.float32)
    _write(str(tmp_path / "old"), old, {**cfg, "target_modules": ["q_proj", "k_proj"]})
    with caplog.at_level(logging.WARNING, logger="jaxlava.train.peft_io"):
        got, _ = load_adapter(str(tmp_path / "old"), model.config)
    assert "vision tower" in caplog.text
    for k in params:
        np.testing.assert_array_equal(got[k]["a"], params[k]["a"])
        np.testing.assert_array_equal(got[k]["b"], params[k]["b"])
    old[vis.format("B")][0, 0] = 1.0
    _write(str(tmp_path / "vis"), old, cfg)
    with pytest.raises(AdapterFormatError, match="vision_tower.*language model only"):
        load_adapter(str(tmp_path / "vis"))
    missing = {k: v for k, v in t.items() if "layers.1.mlp.up_proj.lora_B" not in k}
    _write(str(tmp_path / "miss"), missing, cfg)
    with pytest.raises(AdapterFormatError, match="layer 1 up_proj"):
        load_adapter(str(tmp_path / "miss"), model.config)
    _write(str(tmp_path / "dora"), t, {**cfg, "use_dora": True})
    with pytest.raises(AdapterFormatError, match="use_dora"):
        load_adapter(str(tmp_path / "dora"))
    os.makedirs(tmp_path / "bin")
    json.dump(cfg, open(tmp_path / "bin" / "adapter_config.json", "w"))
    torch.save({"x": torch.zeros(1)}, tmp_path / "bin" / "adapter_model.bin")
    with pytest.raises(AdapterFormatError, match="torch pickle.*safetensors"):
        load_adapter(str(tmp_path / "bin"))


def test_reward_model_layout_round_trip_and_pickle_head_refused(export, tmp_path):
    model, _ = export
    params = random_adapter(model, 5)
    head = {"w": np.linspace(-1, 1, 64).astype(np.float32), "b": np.float32(0.25)}
    rm = tmp_path / "rm_lora_adapter_model"
    save_reward_model_adapter(str(rm), params, LCFG, head)
    assert sorted(os.listdir(rm)) == ["adapter_model", "reward_head.safetensors"]
    h = load_file(str(rm / "reward_head.safetensors"))
    assert h["weight"].shape == (1, 64) and h["bias"].shape == (1,)
    got, lcfg, got_head = load_reward_model_adapter(str(rm), model.config)
    assert lcfg.scale == LCFG.scale
    np.testing.assert_array_equal(got["q_proj"]["b"], params["q_proj"]["b"])
    np.testing.assert_array_equal(got_head["w"], head["w"])
    assert got_head["b"].shape == () and float(got_head["b"]) == 0.25
    # the release's head is a torch pickle named `reward_head`
    os.remove(rm / "reward_head.safetensors")
    torch.save({"weight": torch.zeros(1, 64), "bias": torch.zeros(1)}, rm / "reward_head")
    with pytest.raises(AdapterFormatError, match="(?s)reward_head is not a safetensors file.*weights_only=True"):
        load_reward_model_adapter(str(rm), model.config)
