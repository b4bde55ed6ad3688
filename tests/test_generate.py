"""The KV-cache sampler: greedy == transformers' generate, sampling distribution, top-k/top-p, no recompiles."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxlava
from jaxlava.generate import SamplingParams, bucket_length, compiled_programs, filter_logits, sample_logits
from hf_fixtures import make_batch, tiny_hf_model

N_NEW = 12
PAD = 0
# (has_image, text_before, text_after): different prompt lengths -> a left-padded batch
ROWS = ((True, 5, 3), (False, 7, 0), (True, 2, 6), (False, 3, 1))


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    hf = tiny_hf_model(seed=5, gqa=True)
    path = tmp_path_factory.mktemp("gen")
    hf.save_pretrained(path)
    return hf, jaxlava.from_pretrained(str(path))


def _hf_greedy(hf, ids, mask, hf_pixels, eos):
    with torch.no_grad():
        out = hf.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                          pixel_values=torch.tensor(hf_pixels) if len(hf_pixels) else None,
                          do_sample=False, max_new_tokens=N_NEW, eos_token_id=eos, pad_token_id=PAD)
    new = out[:, ids.shape[1]:].numpy()
    return np.pad(new, ((0, 0), (0, N_NEW - new.shape[1])), constant_values=PAD)


def _ours(model, ids, mask, pixels, eos, **kw):
    out = jaxlava.generate(model, ids, pixels, mask, max_new_tokens=N_NEW, eos_token_id=eos, pad_token_id=PAD,
                           **kw)
    return np.asarray(out.tokens), np.asarray(out.lengths), out


def test_greedy_matches_transformers_left_padded_batch_with_images(pair):
    hf, model = pair
    ids, mask, pixels, hf_pixels = make_batch(hf.config, padding="left", rows=ROWS)
    ref = _hf_greedy(hf, ids, mask, hf_pixels, eos=127)  # 127 never emitted here: full length
    got, lengths, _ = _ours(model, ids, mask, pixels, eos=127)
    assert (ref != 127).all()
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(lengths, np.full(len(ROWS), N_NEW))


def test_greedy_eos_mid_row_then_pads(pair):
    hf, model = pair
    ids, mask, pixels, hf_pixels = make_batch(hf.config, padding="left", rows=ROWS)
    free = _hf_greedy(hf, ids, mask, hf_pixels, eos=127)
    # an EOS that some row r emits first at step 3..8 while another row never emits it (keeps going)
    found = [(r, t, int(free[r, t])) for r in range(len(ROWS)) for t in range(3, 9)
             if free[r, t] not in free[r, :t] and free[r, t] != PAD and (free != free[r, t]).all(axis=1).any()]
    assert found, f"no suitable mid-row EOS in {free}"
    r, stop, eos = found[0]
    ref = _hf_greedy(hf, ids, mask, hf_pixels, eos=eos)
    got, lengths, _ = _ours(model, ids, mask, pixels, eos=eos)
    np.testing.assert_array_equal(got, ref)
    assert got[r, stop] == eos and (got[r, stop + 1:] == PAD).all() and lengths[r] == stop + 1
    assert (lengths == N_NEW).any()
    for b in range(len(ROWS)):
        hit = np.flatnonzero(free[b] == eos)
        assert lengths[b] == (hit[0] + 1 if len(hit) else N_NEW)


def test_stop_token_ids_and_batch_of_one(pair):
    hf, model = pair
    ids, mask, pixels, hf_pixels = make_batch(hf.config, padding="left", rows=((True, 4, 2),))
    ref = _hf_greedy(hf, ids, mask, hf_pixels, eos=127)
    got, lengths, out = _ours(model, ids, mask, pixels, eos=127, return_logprobs=True)
    np.testing.assert_array_equal(got, ref)
    lp = np.asarray(out.logprobs)
    assert lp.shape == (1, N_NEW) and (lp <= 0).all() and np.isfinite(lp).all()
    stop = int(ref[0, 2])
    got2, lengths2, _ = _ours(model, ids, mask, pixels, eos=None, stop_token_ids=(stop,))
    k = int(np.flatnonzero(ref[0] == stop)[0])
    np.testing.assert_array_equal(got2[0, :k + 1], ref[0, :k + 1])
    assert (got2[0, k + 1:] == PAD).all() and lengths2[0] == k + 1


def test_greedy_logprobs_match_transformers_scores(pair):
    hf, model = pair
    ids, mask, pixels, hf_pixels = make_batch(hf.config, padding="left", rows=ROWS[:2])
    with torch.no_grad():
        out = hf.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                          pixel_values=torch.tensor(hf_pixels), do_sample=False, max_new_tokens=N_NEW,
                          eos_token_id=127, pad_token_id=PAD, output_logits=True, return_dict_in_generate=True)
    logits = torch.stack(out.logits, 1).float()
    ref = torch.log_softmax(logits, -1).gather(-1, out.sequences[:, ids.shape[1]:, None])[..., 0].numpy()
    _, _, mine = _ours(model, ids, mask, pixels, eos=127, return_logprobs=True)
    np.testing.assert_allclose(np.asarray(mine.logprobs), ref, atol=1e-4)


def test_same_bucket_does_not_recompile(pair):
    hf, model = pair
    a = make_batch(hf.config, padding="left", rows=((True, 3, 2), (False, 6, 0)), seed=1)
    b = make_batch(hf.config, padding="right", rows=((True, 5, 4), (True, 1, 1)), seed=2)
    assert bucket_length(a[0].shape[1]) == bucket_length(b[0].shape[1]) and a[0].shape != b[0].shape
    _ours(model, a[0], a[1], a[2], eos=2, temperature=0.7, rng=jax.random.key(1))
    before = compiled_programs()
    _ours(model, b[0], b[1], b[2], eos=2, temperature=0.9, rng=jax.random.key(2))
    assert compiled_programs() == before


def _chi2_pvalue(counts, probs):
    expected = probs * counts.sum()
    stat = float(((counts - expected) ** 2 / expected).sum())
    dof = len(counts) - 1
    try:
        from scipy.stats import chi2
        return chi2.sf(stat, dof)
    except ImportError:  # Wilson-Hilferty approximation of the chi-square tail
        z = ((stat / dof) ** (1 / 3) - (1 - 2 / (9 * dof))) / math.sqrt(2 / (9 * dof))
        return 0.5 * math.erfc(z / math.sqrt(2))


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_sampling_follows_softmax(temperature):
    logits = jnp.array([1.0, 0.2, -0.5, 2.0, 0.0, -1.5, 0.7, 1.3])
    n = 40_000
    toks, lps = sample_logits(jnp.broadcast_to(logits, (n, 8)), jax.random.key(3), temperature, 1.0,
                              SamplingParams(greedy=False, top_k=0, nucleus=False))
    probs = np.asarray(jax.nn.softmax(logits / temperature))
    counts = np.bincount(np.asarray(toks), minlength=8)
    assert _chi2_pvalue(counts, probs) > 1e-3, (counts, probs * n)
    np.testing.assert_allclose(np.asarray(lps), np.log(probs)[np.asarray(toks)], atol=1e-5)


def test_top_p_keeps_exactly_the_nucleus_and_samples_within_it():
    logits = jnp.log(jnp.array([[0.05, 0.4, 0.1, 0.3, 0.15], [0.05, 0.4, 0.1, 0.3, 0.15]]))
    # cumulative sorted: .4 .7 .85 .95 1.0 -> top_p .7 keeps {1,3}; .71 keeps {1,3,4}
    for top_p, want in [(0.7, {1, 3}), (0.71, {1, 3, 4}), (0.01, {1}), (0.96, {0, 1, 2, 3, 4})]:
        kept, order = filter_logits(logits, 0, jnp.float32(top_p), True)
        got = set(np.asarray(order)[0][np.isfinite(np.asarray(kept)[0])].tolist())
        assert got == want, (top_p, got)
    n = 30_000
    toks, _ = sample_logits(jnp.broadcast_to(logits[0], (n, 5)), jax.random.key(4), 1.0, jnp.float32(0.71),
                            SamplingParams(greedy=False, top_k=0, nucleus=True))
    counts = np.bincount(np.asarray(toks), minlength=5)
    assert counts[0] == counts[2] == 0
    assert _chi2_pvalue(counts[[1, 3, 4]], np.array([0.4, 0.3, 0.15]) / 0.85) > 1e-3


def test_top_k_keeps_k_largest():
    logits = jnp.array([[0.1, 3.0, 2.0, -1.0, 2.5]])
    toks, _ = sample_logits(jnp.broadcast_to(logits[0], (5000, 5)), jax.random.key(5), 1.0, 1.0,
                            SamplingParams(greedy=False, top_k=2, nucleus=False))
    assert set(np.unique(np.asarray(toks)).tolist()) == {1, 4}


def test_sharded_greedy_equals_single_device(pair):
    from jaxlava import sharding
    hf, model = pair
    ids, mask, pixels, _ = make_batch(hf.config, padding="left", rows=ROWS * 2)
    single, single_len, _ = _ours(model, ids, mask, pixels, eos=2)
    mesh = sharding.make_mesh("data=2,fsdp=2,tensor=2")
    with sharding.use_mesh(mesh):
        multi, multi_len, out = _ours(sharding.shard_model(model, mesh), ids, mask, pixels, eos=2)
    assert len(out.tokens.sharding.device_set) == 8
    np.testing.assert_array_equal(multi, single)
    np.testing.assert_array_equal(multi_len, single_len)


@pytest.mark.parametrize("scan", [False, True])
@pytest.mark.parametrize("per_layer", [False, True])
def test_incremental_cache_matches_full_forward(pair, scan, per_layer):
    """Prefill + one-token steps through either cache layout == one full forward (scanned or unrolled stack).

    A per-layer cache always runs the stack unrolled, also on a scan_layers model: with scan and per_layer the
    incremental steps run unrolled while the full forward (no cache) runs scanned."""
    _, base = pair
    from flax import nnx
    from jaxlava.model import LlavaModel, positions_from_mask
    model = LlavaModel(base.config.replace(scan_layers=scan))
    nnx.update(model, nnx.state(base))
    lm = model.language_model
    ids = jnp.asarray(np.random.default_rng(0).integers(3, 100, (2, 9)), jnp.int32)
    mask = jnp.ones_like(ids).at[0, :2].set(0)
    pos = positions_from_mask(mask)
    full, _ = lm(lm.embed(ids), pos, mask)
    cache = lm.init_cache(2, 9, per_layer=per_layer)
    h, cache = lm(lm.embed(ids[:, :6]), pos[:, :6], mask, cache=cache, cache_index=0)
    steps = [h]
    for i in range(6, 9):
        h, cache = lm(lm.embed(ids[:, i:i + 1]), pos[:, i:i + 1], mask, cache=cache, cache_index=i)
        steps.append(h)
    np.testing.assert_allclose(np.asarray(jnp.concatenate(steps, 1))[mask.astype(bool)],
                               np.asarray(full)[mask.astype(bool)], atol=1e-5)


def test_streaming_in_chunks_gives_the_same_tokens(pair):
    hf, model = pair
    ids, mask, pixels, _ = make_batch(hf.config, padding="left", rows=ROWS[:2])
    whole, _, _ = _ours(model, ids, mask, pixels, eos=127, temperature=0.8, rng=jax.random.key(7))
    seen = []
    chunked, _, _ = _ours(model, ids, mask, pixels, eos=127, temperature=0.8, rng=jax.random.key(7),
                          stream=lambda toks, done: seen.append(toks), chunk=5)
    np.testing.assert_array_equal(chunked, whole)
    np.testing.assert_array_equal(np.concatenate(seen, axis=1), whole)
    assert [s.shape[1] for s in seen] == [1, 5, 5, 1]
