"""`python -m jaxlava.export`: RM runs export as base + PEFT adapter, or merged; SFT runs as one model."""
import json

import jax
import numpy as np
import peft
import pytest
import torch
from safetensors.numpy import load_file
from transformers import LlavaForConditionalGeneration

import jaxlava
import jaxlava.hf
from hf_fixtures import make_batch, tiny_hf_model
from jaxlava import rm
from jaxlava.export import ExportError, export
from jaxlava.lora import LoraConfig, init_lora, make_lora
from jaxlava.model.heads import init_scalar_head
from jaxlava.peft_io import save_reward_model_adapter


def _torch(ids, mask, hf_px):
    return dict(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                pixel_values=torch.tensor(hf_px), output_hidden_states=True)


def test_rm_run_exports_adapter_and_merged(tmp_path):
    hf = tiny_hf_model(seed=7)
    base_dir = tmp_path / "base"
    hf.save_pretrained(base_dir)
    base = jaxlava.from_pretrained(str(base_dir))
    lcfg = LoraConfig(r=4, alpha=8)
    params = init_lora(base.config, lcfg, jax.random.key(0))
    params = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(1), x.shape), params)
    head = init_scalar_head(jax.random.key(2), 64)
    head["b"] = head["b"] + 0.25
    run = tmp_path / "run"
    save_reward_model_adapter(str(run / "adapter"), params, lcfg, head, base_model_name_or_path=str(base_dir))
    (run / "config.json").write_text(json.dumps({"stage": "rm", "init": str(base_dir)}))
    export(str(run), str(tmp_path / "plain"))
    assert (tmp_path / "plain" / "adapter" / "adapter_model" / "adapter_config.json").exists()
    export(str(run), str(tmp_path / "merged"), merge=True)
    assert (tmp_path / "merged" / "reward_head.safetensors").exists()
    ids, mask, px, hf_px = make_batch(hf.config, padding="left")
    real = mask.astype(bool)
    lora = make_lora(params, lcfg)
    want, want_hidden = (np.asarray(a) for a in base(ids, px, mask, lora=lora, return_hidden=True))
    want_scores = np.asarray(rm.scores(base, head, ids, px, mask, lora=lora))
    got = np.asarray(jaxlava.from_pretrained(str(tmp_path / "merged"))(ids, px, mask))
    assert np.abs(got - want)[real].max() <= 1e-4
    # the plain export in transformers + PEFT: base folder + PeftModel.from_pretrained(adapter) + the reward head
    torch_base = LlavaForConditionalGeneration.from_pretrained(str(tmp_path / "plain"), dtype=torch.float32)
    peft_model = peft.PeftModel.from_pretrained(torch_base.eval(),
                                                str(tmp_path / "plain" / "adapter" / "adapter_model")).eval()
    with torch.no_grad():
        out = peft_model(**_torch(ids, mask, hf_px))
    logits, hidden = out.logits.numpy(), out.hidden_states[-1].numpy()  # the final-normed hidden states
    assert np.abs(logits - want)[real].max() <= 1e-4
    assert np.abs(hidden - want_hidden)[real].max() <= 1e-4
    h = load_file(str(tmp_path / "plain" / "adapter" / "reward_head.safetensors"))
    torch_scores = hidden[:, -1] @ h["weight"][0] + h["bias"][0]  # left padded: -1 is each row's last token
    assert np.abs(torch_scores - want_scores).max() <= 1e-4
    assert np.abs(logits - np.asarray(base(ids, px, mask)))[real].max() > 1e-2  # the adapter is applied


def test_sft_run_exports_the_model_with_its_side_files(tmp_path):
    """An SFT RUN_DIR (RUN_DIR/hf + config.json, stage sft) exports as one llava-hf model that transformers loads
    with no missing/unexpected keys, tensor for tensor the run's model, with the tokenizer/processor files."""
    hf = tiny_hf_model(seed=9, gqa=True)
    run = tmp_path / "run"
    hf.save_pretrained(run / "hf")
    for f in ("tokenizer_config.json", "preprocessor_config.json"):
        (run / "hf" / f).write_text(json.dumps({"from": "the run"}))
    (run / "config.json").write_text(json.dumps({"stage": "sft", "out": str(run)}))
    out = tmp_path / "out"
    assert export(str(run), str(out)) == "sft model"
    for f in ("tokenizer_config.json", "preprocessor_config.json"):
        assert json.loads((out / f).read_text()) == {"from": "the run"}
    src = jaxlava.from_pretrained(str(run / "hf"))
    a, b = jaxlava.hf.state_dict(jaxlava.from_pretrained(str(out))), jaxlava.hf.state_dict(src)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    reloaded, info = LlavaForConditionalGeneration.from_pretrained(str(out), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    ids, mask, px, hf_px = make_batch(hf.config)
    with torch.no_grad():
        ref = reloaded.eval()(**_torch(ids, mask, hf_px)).logits.numpy()
        orig = hf(**_torch(ids, mask, hf_px)).logits.numpy()
    real = mask.astype(bool)
    assert np.abs(ref - orig)[real].max() <= 1e-5
    assert np.abs(np.asarray(src(ids, px, mask)) - ref)[real].max() <= 1e-4


def test_unfinished_run_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"stage": "sft"}))
    with pytest.raises(ExportError, match="has not finished"):
        export(str(tmp_path), str(tmp_path / "out"))
