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
    model = LlavaModel(cfg, rngs=nnx.Rngs(0))
    head = init_scalar_head(jax.random.key(0), 32)
    a = np.array([[1, 5, 6, 7]])
    padded = np.array([[0, 0, 1, 5, 6, 7]])
    batch = {"input_ids": np.stack([a, a], 1), "attention_mask": np.ones((1, 2, 4), np.int32)}
    batch_l = {"input_ids": np.stack([padded, padded], 1),
               "attention_mask": np.stack([padded != 0] * 2, 1).astype(np.int32)}
    np.testing.assert_allclose(np.asarray(pair_scores(model, head, batch)),
                               np.asarray(pair_scores(model, head, batch_l)), atol=1e-5)
