"""Reward-model loss against hand-computed values, and the score position."""
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlava import LlavaModel
from jaxlava.model.heads import init_scalar_head
from jaxlava.rm import pair_scores, preference_loss


def test_preference_loss_hand_computed():
    r = jnp.array([[0.5, -1.0], [2.0, 1.0], [0.0, 0.3]])
    choice = jnp.array([0, 1, 1])
    loss, m = preference_loss(r, choice)
    d = [-1.5, -1.0, 0.3]
    y = [0, 1, 1]
    bce = np.mean([-(yi * math.log(1 / (1 + math.exp(-di))) + (1 - yi) * math.log(1 - 1 / (1 + math.exp(-di))))
                   for di, yi in zip(d, y)])
    center = 1e-3 * abs((0.5 - 1.0 + 2.0 + 1.0 + 0.0 + 0.3) / 3)
    assert abs(float(loss) - (bce + center)) < 1e-6
    assert abs(float(m["accuracy"]) - 2 / 3) < 1e-6  # pair 0: 0.5 >= -1 yes; pair 1: 1 < 2 no; pair 2: yes


def test_score_is_read_at_last_position_of_left_padded_rows():
    from jaxlava.config import LlavaConfig, TextConfig, VisionConfig
    cfg = LlavaConfig(vision=VisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                          num_attention_heads=2, image_size=16, patch_size=8),
                      text=TextConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2), image_token_index=63)
    model = nnx.jit(lambda: LlavaModel(cfg, rngs=nnx.Rngs(0)))()  # one compile instead of one per parameter
    head = init_scalar_head(jax.random.key(0), 32)
    score = nnx.jit(pair_scores)
    a = np.array([[1, 5, 6, 7]])
    padded = np.array([[0, 0, 1, 5, 6, 7]])
    batch = {"input_ids": np.stack([a, a], 1), "attention_mask": np.ones((1, 2, 4), np.int32)}
    batch_l = {"input_ids": np.stack([padded, padded], 1),
               "attention_mask": np.stack([padded != 0] * 2, 1).astype(np.int32)}
    np.testing.assert_allclose(np.asarray(score(model, head, batch)), np.asarray(score(model, head, batch_l)),
                               atol=1e-5)


def test_score_is_the_head_on_the_last_hidden_state():
    """`rm.scores` == w . h + b with h the final-normed hidden state of each row's last real token, computed here
    from the model's hidden states (of the padded batch at index -1, and of each row run alone, unpadded)."""
    from hf_fixtures import make_batch, tiny_hf_config
    from jaxlava.config import LlavaConfig
    from jaxlava.rm import scores
    hf_cfg = tiny_hf_config()
    cfg = LlavaConfig.from_hf_dict(hf_cfg.to_dict())
    model = nnx.jit(lambda: LlavaModel(cfg, rngs=nnx.Rngs(3)))()  # one compile instead of one per parameter
    # left-padded rows of different lengths, one without an image
    ids, mask, px, _ = make_batch(hf_cfg, padding="left", rows=((True, 5, 3), (False, 7, 0), (True, 2, 2)))
    head = {"w": jax.random.normal(jax.random.key(1), (64,)), "b": jnp.asarray(0.37)}
    got = np.asarray(nnx.jit(scores)(model, head, ids, px, mask))
    forward = nnx.jit(lambda m, i, p, k: m(i, p, k, return_hidden=True)[1])
    hidden = forward(model, ids, px, mask)
    hidden = np.asarray(hidden, np.float64)
    w, b = np.asarray(head["w"], np.float64), float(head["b"])
    np.testing.assert_allclose(got, hidden[:, -1] @ w + b, rtol=0, atol=1e-5)
    for row in (1, 2):  # a padded row alone, without its padding: its last position
        real = mask[row].astype(bool)
        assert not real.all()
        h = forward(model, ids[row:row + 1, real], px[row:row + 1], mask[row:row + 1, real])
        assert abs(got[row] - (np.asarray(h, np.float64)[0, -1] @ w + b)) <= 1e-4, row
    assert np.abs(got - (hidden[:, -2] @ w + b)).max() > 1e-3  # the test tells the last position from others


def test_image_dropout_blanks_whole_images_at_rate_p_and_is_off_by_default():
    from jaxlava.rm import drop_images
    px = np.arange(1, 1 + 4000 * 3 * 2 * 2, dtype=np.float32).reshape(4000, 3, 2, 2)
    batch = {"pixel_values": jnp.asarray(px), "choice": np.zeros(4000, np.int32)}
    assert drop_images(batch, jax.random.key(0), 0.0) is batch
    out = np.asarray(drop_images(batch, jax.random.key(0), 0.3)["pixel_values"])
    blank = (out == 0).all(axis=(1, 2, 3))
    kept = (out == px).all(axis=(1, 2, 3))
    assert (blank | kept).all()  # each image is kept whole or blanked whole
    assert abs(blank.mean() - 0.3) < 0.03
    other = np.asarray(drop_images(batch, jax.random.key(1), 0.3)["pixel_values"])
    assert not np.array_equal((other == 0).all(axis=(1, 2, 3)), blank)  # a fresh draw per key


def _tiny_rm():
    """A 16-pixel LLaVA with one layer each, a LoRA adapter and head, and a two-pair batch's ids (4 image tokens)."""
    from jaxlava.config import LlavaConfig, TextConfig, VisionConfig
    from jaxlava.lora import LoraConfig, init_lora
    cfg = LlavaConfig(vision=VisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                          num_attention_heads=2, image_size=16, patch_size=8),
                      text=TextConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2), image_token_index=63)
    lcfg = LoraConfig(r=4, alpha=8, dropout=0.0)
    tr = {"lora": init_lora(cfg, lcfg, jax.random.key(1)),
          "head": {"w": jax.random.normal(jax.random.key(2), (32,)), "b": jnp.asarray(0.0)}}
    ids = np.array([[[63, 63, 63, 63, 5, 6], [63, 63, 63, 63, 7, 8]]] * 2)
    return LlavaModel(cfg, rngs=nnx.Rngs(0)), lcfg, tr, ids


def test_rm_loss_with_image_dropout_scores_the_blanked_batch():
    """With p near 1 every image is blanked: the loss is the loss of the batch with zero pixels, and it differs
    from the loss with the images (so the model did look at them); without an rng nothing is dropped."""
    from jaxlava.rm import rm_loss
    model, lcfg, tr, ids = _tiny_rm()
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids), "choice": np.array([0, 1]),
             "pixel_values": np.asarray(jax.random.normal(jax.random.key(3), (2, 3, 16, 16)))}
    blank = {**batch, "pixel_values": np.zeros_like(batch["pixel_values"])}
    with_images = float(rm_loss(model, tr, batch, lora_cfg=lcfg)[0])
    dropped = float(rm_loss(model, tr, batch, lora_cfg=lcfg, rng=jax.random.key(4), image_dropout=0.999999)[0])
    assert abs(dropped - float(rm_loss(model, tr, blank, lora_cfg=lcfg)[0])) < 1e-6
    assert abs(dropped - with_images) > 1e-6
    assert float(rm_loss(model, tr, batch, lora_cfg=lcfg, image_dropout=0.999999)[0]) == with_images


def test_coarse_images_are_block_means():
    """Each pool x pool block of every channel becomes its mean (numpy reference); 0 and 1 leave the images alone;
    a pool that does not divide the image is refused, naming it."""
    from jaxlava.rm import coarse_images
    px = np.random.default_rng(0).normal(size=(2, 3, 8, 12)).astype(np.float32)
    want = px.reshape(2, 3, 2, 4, 3, 4).mean(axis=(3, 5))
    got = np.asarray(coarse_images(jnp.asarray(px), 4))
    assert got.shape == px.shape and got.dtype == px.dtype
    np.testing.assert_allclose(got, np.repeat(np.repeat(want, 4, axis=2), 4, axis=3), rtol=0, atol=1e-6)
    for off in (0, 1):
        assert coarse_images(px, off) is px
    try:
        coarse_images(jnp.asarray(px), 3)
    except ValueError as e:
        assert "image_pool 3" in str(e) and "8 x 12" in str(e)
    else:
        raise AssertionError("a pool of 3 on 8-pixel rows was accepted")


def test_rm_loss_with_image_pool_sees_only_the_block_means():
    """Two images with the same 4 x 4 block means but different detail: with image_pool 4 the reward model gives
    them the same loss (that of the pre-pooled batch), without it different ones."""
    from jaxlava.rm import coarse_images, rm_loss
    model, lcfg, tr, ids = _tiny_rm()
    # pixels on a 1/64 grid: px + detail and the block sums are exact in float32, so both images pool to the same
    # bits (random floats pool to means that differ in the last bit, a difference the CPU's rounding decides)
    px = np.round(np.asarray(jax.random.normal(jax.random.key(3), (2, 3, 16, 16))) * 64) / 64
    detail = np.tile(np.array([[1.0, -1.0], [-1.0, 1.0]], np.float32), (8, 8))  # mean 0 in every 4 x 4 block
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids), "choice": np.array([0, 1]), "pixel_values": px}
    other = {**batch, "pixel_values": px + detail}
    pooled = {**batch, "pixel_values": np.asarray(coarse_images(jnp.asarray(px), 4))}

    def loss(b, pool):
        return float(rm_loss(model, tr, b, lora_cfg=lcfg, image_pool=pool)[0])
    assert abs(loss(batch, 4) - loss(other, 4)) < 1e-6
    assert abs(loss(batch, 4) - loss(pooled, 0)) < 1e-6
    assert abs(loss(batch, 0) - loss(other, 0)) > 1e-6
