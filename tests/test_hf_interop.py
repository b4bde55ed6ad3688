"""HF import/export: round trip, transformers loads our export, original-LLaVA layout, error paths."""
import json
import os

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import save_file
from transformers import LlavaForConditionalGeneration

import jaxlava
from jaxlava.hf import CheckpointError
from hf_fixtures import IMAGE_TOKEN, hf_logits, make_batch, tiny_hf_model


def _tensors(folder):
    out = {}
    for f in sorted(os.listdir(folder)):
        if f.endswith(".safetensors"):
            with safe_open(os.path.join(folder, f), "np") as h:
                out.update({k: h.get_tensor(k) for k in h.keys()})
    return out


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    model = tiny_hf_model(seed=3, gqa=True)
    path = tmp_path_factory.mktemp("hf")
    model.save_pretrained(path)
    (path / "tokenizer_config.json").write_text("{}")
    return model, str(path)


def test_round_trip_is_bit_identical_and_transformers_loads_it(hf_dir, tmp_path):
    hf, path = hf_dir
    model = jaxlava.from_pretrained(path)
    out = tmp_path / "export"
    jaxlava.save_pretrained(model, str(out))
    assert (out / "tokenizer_config.json").exists(), "side files are copied along"
    src = {k.replace("vision_tower.", "vision_tower.vision_model.", 1) if k.startswith("vision_tower.") else k: v
           for k, v in _tensors(path).items()}
    dst = _tensors(str(out))
    assert set(src) == set(dst)
    for k in src:
        assert src[k].dtype == dst[k].dtype and np.array_equal(src[k], dst[k]), k
    reloaded, info = LlavaForConditionalGeneration.from_pretrained(str(out), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    ids, mask, _, hf_pixels = make_batch(hf.config, padding="left")
    np.testing.assert_allclose(hf_logits(reloaded.eval(), ids, mask, hf_pixels),
                               hf_logits(hf, ids, mask, hf_pixels), atol=1e-5, rtol=0)


def test_sharded_export_with_index(hf_dir, tmp_path):
    hf, path = hf_dir
    model = jaxlava.from_pretrained(path)
    jaxlava.save_pretrained(model, str(tmp_path), max_shard_bytes=20_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    again = jaxlava.from_pretrained(str(tmp_path))
    ids, mask, px, _ = make_batch(hf.config)
    np.testing.assert_array_equal(np.asarray(again(ids, px, mask)), np.asarray(model(ids, px, mask)))
    _, info = LlavaForConditionalGeneration.from_pretrained(str(tmp_path), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]


@pytest.mark.parametrize("spelling", ["memory", "hub"])
def test_key_spellings(hf_dir, tmp_path, spelling):
    hf, path = hf_dir
    renamed = {}
    for k, v in _tensors(path).items():
        if spelling == "memory":  # transformers 5 state_dict() names
            k = ("model." + k if k.startswith(("vision_tower.", "multi_modal_projector.")) else
                 k.replace("language_model.model.", "model.language_model.").replace("language_model.lm_head", "lm_head"))
        else:
            k = k.replace("vision_tower.", "vision_tower.vision_model.", 1)
        renamed[k] = v
    save_file(renamed, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(open(os.path.join(path, "config.json")).read())
    ids, mask, px, hf_px = make_batch(hf.config)
    got = np.asarray(jaxlava.from_pretrained(str(tmp_path))(ids, px, mask))
    ref = hf_logits(hf, ids, mask, hf_px)
    assert np.abs(got - ref)[mask.astype(bool)].max() <= 1e-4


def test_linear_projector_exports_to_transformers(tmp_path):
    cfg = jaxlava.LlavaConfig.from_hf_dict(tiny_hf_model().config.to_dict()).replace(projector_type="linear")
    from flax import nnx
    model = jaxlava.LlavaModel(cfg, rngs=nnx.Rngs(1))
    jaxlava.save_pretrained(model, str(tmp_path))
    hf = LlavaForConditionalGeneration.from_pretrained(str(tmp_path)).eval()
    ids, mask, px, hf_px = make_batch(hf.config)  # the exported config is a transformers LlavaConfig
    got = np.asarray(model(ids, px, mask))
    assert np.abs(got - hf_logits(hf, ids, mask, hf_px))[mask.astype(bool)].max() <= 1e-4


def _write_original_layout(hf, root, projector="linear"):
    """An original LLaVA `sft_model` folder (LlavaLlamaForCausalLM names) + a separate CLIP folder.

    projector "linear": `model.mm_projector.{weight,bias}` (LLaVA-RLHF, no mm_projector_type); "mlp2x_gelu":
    `model.mm_projector.{0,2}.{weight,bias}` (nn.Sequential(Linear, GELU, Linear)) and mm_projector_type."""
    sd = {k: v.numpy() for k, v in hf.state_dict().items()}
    text = {}
    for k, v in sd.items():
        if k.startswith("model.language_model."):
            text["model." + k[len("model.language_model."):]] = v
        elif k == "lm_head.weight":
            text[k] = v
    if projector == "linear":
        text["model.mm_projector.weight"] = sd["model.multi_modal_projector.linear_1.weight"]
        text["model.mm_projector.bias"] = sd["model.multi_modal_projector.linear_1.bias"]
    else:
        for i, name in ((0, "linear_1"), (2, "linear_2")):
            for p in ("weight", "bias"):
                text[f"model.mm_projector.{i}.{p}"] = sd[f"model.multi_modal_projector.{name}.{p}"]
    text["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(8, np.float32)
    os.makedirs(root / "sft_model")
    save_file(text, str(root / "sft_model" / "model.safetensors"))
    cfg = hf.config.text_config.to_dict()
    cfg.update(model_type="llava_llama", mm_vision_tower="openai/clip-vit-large-patch14",
               mm_vision_select_layer=hf.config.vision_feature_layer, mm_hidden_size=32,
               mm_vision_select_feature="patch", mm_use_im_start_end=False)
    if projector != "linear":
        cfg["mm_projector_type"] = projector
    (root / "sft_model" / "config.json").write_text(json.dumps(cfg))
    clip = {"vision_model." + k[len("model.vision_tower."):]: v for k, v in sd.items()
            if k.startswith("model.vision_tower.")}
    clip["text_model.embeddings.token_embedding.weight"] = np.zeros((4, 4), np.float32)  # CLIPModel text half
    os.makedirs(root / "clip")
    save_file(clip, str(root / "clip" / "model.safetensors"))
    (root / "clip" / "config.json").write_text(json.dumps({"vision_config": hf.config.vision_config.to_dict()}))


def test_original_llava_layout_loads_and_matches(tmp_path):
    hf = tiny_hf_model(seed=5, act="linear")
    with torch.no_grad():  # a linear projector == HF MLP with identity activation and identity second layer
        hf.model.multi_modal_projector.linear_2.weight.copy_(torch.eye(64))
        hf.model.multi_modal_projector.linear_2.bias.zero_()
    _write_original_layout(hf, tmp_path)
    with pytest.raises(CheckpointError, match="vision_tower_path"):
        jaxlava.from_pretrained(str(tmp_path / "sft_model"))
    model, report = jaxlava.from_pretrained(str(tmp_path / "sft_model"), vision_tower_path=str(tmp_path / "clip"),
                                            return_report=True)
    assert model.config.projector_type == "linear" and not report.unused
    ids, mask, px, hf_px = make_batch(hf.config, padding="left")
    ours = ids.copy()
    ours[ids == IMAGE_TOKEN] = model.config.image_token_index
    got = np.asarray(model(ours, px, mask))
    assert np.abs(got - hf_logits(hf, ids, mask, hf_px))[mask.astype(bool)].max() <= 1e-4


def test_original_llava_mlp2x_gelu_projector_loads_and_matches(tmp_path):
    """The original layout's two-layer projector (`mm_projector.0` / `.2`, LLaVA-1.5) is read into linear_1 /
    linear_2: logits equal transformers' with the same weights (a gelu projector with both layers trained)."""
    hf = tiny_hf_model(seed=6, act="gelu")
    _write_original_layout(hf, tmp_path, projector="mlp2x_gelu")
    model, report = jaxlava.from_pretrained(str(tmp_path / "sft_model"), vision_tower_path=str(tmp_path / "clip"),
                                            return_report=True)
    assert model.config.projector_type == "mlp2x_gelu" and not report.unused and not report.missing
    ids, mask, px, hf_px = make_batch(hf.config, padding="left")
    ours = ids.copy()
    ours[ids == IMAGE_TOKEN] = model.config.image_token_index
    got = np.asarray(model(ours, px, mask))
    assert np.abs(got - hf_logits(hf, ids, mask, hf_px))[mask.astype(bool)].max() <= 1e-4


def test_shape_mismatch_names_tensor_and_shapes(hf_dir, tmp_path):
    _, path = hf_dir
    t = _tensors(path)
    t["language_model.model.layers.1.mlp.up_proj.weight"] = np.zeros((95, 64), np.float32)
    save_file(t, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(open(os.path.join(path, "config.json")).read())
    with pytest.raises(CheckpointError, match=r"layers\.1\.mlp\.up_proj\.weight.*\(95, 64\).*\(96, 64\)"):
        jaxlava.from_pretrained(str(tmp_path))


def test_missing_tensor_is_named(hf_dir, tmp_path):
    _, path = hf_dir
    t = _tensors(path)
    del t["language_model.model.norm.weight"]
    save_file(t, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(open(os.path.join(path, "config.json")).read())
    with pytest.raises(CheckpointError, match=r"1 tensors missing.*language_model\.model\.norm\.weight"):
        jaxlava.from_pretrained(str(tmp_path))


def test_unused_tensor_is_reported(hf_dir, tmp_path):
    _, path = hf_dir
    t = _tensors(path)
    t["language_model.model.extra.weight"] = np.zeros(3, np.float32)
    save_file(t, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(open(os.path.join(path, "config.json")).read())
    _, report = jaxlava.from_pretrained(str(tmp_path), return_report=True)
    assert report.unused == ["language_model.model.extra.weight"]


def test_pickle_bin_is_refused(hf_dir, tmp_path):
    _, path = hf_dir
    (tmp_path / "config.json").write_text(open(os.path.join(path, "config.json")).read())
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin.*safetensors only.*save_file"):
        jaxlava.from_pretrained(str(tmp_path))
