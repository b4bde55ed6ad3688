"""jaxlava logits == transformers' PyTorch LLaVA logits on tiny random models (fp32, <= 1e-4)."""
import numpy as np
import pytest

import jaxlava
from hf_fixtures import IMAGE_TOKEN, hf_logits, make_batch, tiny_hf_model

CASES = {
    "mha-layer-2-default": dict(layer=-2, strategy="default"),
    "gqa-layer-1-full": dict(gqa=True, layer=-1, strategy="full"),
    "tied": dict(tied=True),
    "llama3-rope": dict(rope={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                              "high_freq_factor": 4.0, "original_max_position_embeddings": 16}),
    "linear-rope": dict(rope={"rope_type": "linear", "factor": 2.0}),
    "multi-layer-features": dict(layer=[-3, -1], strategy="default"),
}


def _real(a, mask):
    return a[mask.astype(bool)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = {}
    for name, kw in CASES.items():
        path = tmp_path_factory.mktemp(name)
        model = tiny_hf_model(seed=len(out), **kw)
        model.save_pretrained(path)
        out[name] = (model, str(path))
    return out


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("padding", ["right", "left"])
def test_logits_match_transformers(exported, name, padding):
    hf, path = exported[name]
    ids, mask, pixels, hf_pixels = make_batch(hf.config, padding=padding)
    ref = hf_logits(hf, ids, mask, hf_pixels)
    model = jaxlava.from_pretrained(path)
    got = np.asarray(model(ids, pixels, mask))
    err = np.abs(_real(got, mask) - _real(ref, mask)).max()
    assert err <= 1e-4, f"{name}/{padding}: max |diff| {err}"


def test_left_and_right_padding_agree(exported):
    hf, path = exported["gqa-layer-1-full"]
    model = jaxlava.from_pretrained(path)
    ids_r, mask_r, px, _ = make_batch(hf.config, padding="right")
    ids_l, mask_l, _, _ = make_batch(hf.config, padding="left")
    a = _real(np.asarray(model(ids_r, px, mask_r)), mask_r)
    b = _real(np.asarray(model(ids_l, px, mask_l)), mask_l)
    assert np.abs(a - b).max() <= 1e-5


def test_bf16_path_runs_and_reports_error(exported, capsys):
    hf, path = exported["mha-layer-2-default"]
    ids, mask, pixels, hf_pixels = make_batch(hf.config)
    ref = hf_logits(hf, ids, mask, hf_pixels)
    model = jaxlava.from_pretrained(path, dtype="bfloat16")
    got = np.asarray(model(ids, pixels, mask))
    assert got.dtype == np.float32 and np.isfinite(got).all()
    err = np.abs(_real(got, mask) - _real(ref, mask)).max()
    print(f"bf16 params+compute: max |logit diff| vs fp32 torch = {err:.4f}")
    assert err < 0.5  # sanity bound only: bf16 has ~3 significant digits


def test_hidden_states_option(exported):
    hf, path = exported["tied"]
    ids, mask, pixels, _ = make_batch(hf.config)
    model = jaxlava.from_pretrained(path)
    logits, hidden = model(ids, pixels, mask, return_hidden=True)
    assert hidden.shape == (*ids.shape, hf.config.text_config.hidden_size)
    np.testing.assert_allclose(np.asarray(model.lm_logits(hidden)), np.asarray(logits), atol=1e-6)


def test_placeholder_count_mismatch_names_both_numbers(exported):
    hf, path = exported["mha-layer-2-default"]
    ids, mask, pixels, _ = make_batch(hf.config)
    ids[0, np.argmax(ids[0] == IMAGE_TOKEN)] = 5  # drop one placeholder
    model = jaxlava.from_pretrained(path)
    n = (hf.config.vision_config.image_size // hf.config.vision_config.patch_size) ** 2
    with pytest.raises(ValueError, match=rf"{n - 1} image placeholder tokens.*{n} features"):
        model(ids, pixels, mask)
