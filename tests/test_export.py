"""`python -m jaxlava.export`: RM runs export as base + PEFT adapter, or merged; SFT runs as one model."""
import json

import jax
import numpy as np
import pytest

import jaxlava
from hf_fixtures import make_batch, tiny_hf_model
from jaxlava.export import ExportError, export
from jaxlava.lora import LoraConfig, init_lora, make_lora
from jaxlava.model.heads import init_scalar_head
from jaxlava.peft_io import save_reward_model_adapter


def test_rm_run_exports_adapter_and_merged(tmp_path):
    hf = tiny_hf_model(seed=7)
    base_dir = tmp_path / "base"
    hf.save_pretrained(base_dir)
    base = jaxlava.from_pretrained(str(base_dir))
    lcfg = LoraConfig(r=4, alpha=8)
    params = init_lora(base.config, lcfg, jax.random.key(0))
    params = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(1), x.shape), params)
    run = tmp_path / "run"
    save_reward_model_adapter(str(run / "adapter"), params, lcfg, init_scalar_head(jax.random.key(2), 64),
                              base_model_name_or_path=str(base_dir))
    (run / "config.json").write_text(json.dumps({"stage": "rm", "init": str(base_dir)}))
    export(str(run), str(tmp_path / "plain"))
    assert (tmp_path / "plain" / "adapter" / "adapter_model" / "adapter_config.json").exists()
    export(str(run), str(tmp_path / "merged"), merge=True)
    assert (tmp_path / "merged" / "reward_head.safetensors").exists()
    ids, mask, px, _ = make_batch(hf.config)
    want = np.asarray(base(ids, px, mask, lora=make_lora(params, lcfg)))
    got = np.asarray(jaxlava.from_pretrained(str(tmp_path / "merged"))(ids, px, mask))
    assert np.abs(got - want)[mask.astype(bool)].max() <= 1e-4


def test_unfinished_run_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"stage": "sft"}))
    with pytest.raises(ExportError, match="has not finished"):
        export(str(tmp_path), str(tmp_path / "out"))
