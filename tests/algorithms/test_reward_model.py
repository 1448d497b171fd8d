"""The reward model composed with the LM: pairwise (with ties) and K-way batches, accuracies."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.algorithms.reward_model import (gold_order_accuracy, init_reward_model, make_rm_loss,
                                              pairwise_accuracy, ranking_accuracy, rm_scores)
from rlhf_jax.losses.reward import bradley_terry_loss, kway_bradley_terry_loss
from rlhf_jax.models import get_preset, init_params


@pytest.fixture(scope="module")
def rm():
    cfg = get_preset("tiny", vocab_size=32, max_len=16, n_layers=1)
    params = init_reward_model(cfg, init_params(cfg, jax.random.PRNGKey(0)), jax.random.PRNGKey(1))
    return cfg, params


def _batch(B, K, L=6, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 32, (B, K, L)).astype(np.int32)
    mask = np.ones((B, K, L), np.int32)
    mask[:, :, :2] = rng.integers(0, 2, (B, K, 2))  # some left padding
    mask[:, :, -1] = rng.integers(0, 2, (B, K))     # some right padding
    return ids, mask


def test_pairwise_batch_matches_bradley_terry_on_scores(rm):
    cfg, params = rm
    ids, mask = _batch(4, 2)
    mu = jnp.array([1.0, 0.0, 0.5, 1.0])
    hp = {"margin": jnp.float32(0.0), "center_coef": jnp.float32(0.01)}
    loss, metrics = make_rm_loss(cfg)(params, {"input_ids": ids, "attention_mask": mask, "mu": mu}, hp)
    r = rm_scores(cfg, params, ids.reshape(8, -1), mask.reshape(8, -1)).reshape(4, 2)
    want, _ = bradley_terry_loss(r[:, 0], r[:, 1], mu, center_coef=0.01)
    np.testing.assert_allclose(loss, want, rtol=1e-6)
    assert float(metrics["reward/n_ties"]) == 1.0


def test_kway_batch_matches_kway_loss(rm):
    cfg, params = rm
    ids, mask = _batch(3, 4, seed=1)
    order = jnp.array([[0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2]])
    hp = {"margin": jnp.float32(0.0), "center_coef": jnp.float32(0.0)}
    loss, _ = make_rm_loss(cfg)(params, {"input_ids": ids, "attention_mask": mask, "order": order}, hp)
    r = rm_scores(cfg, params, ids.reshape(12, -1), mask.reshape(12, -1)).reshape(3, 4)
    want, _ = kway_bradley_terry_loss(r, order)
    np.testing.assert_allclose(loss, want, rtol=1e-6)


def test_accuracies_by_hand():
    scores = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0], [0.0, 3.0]])
    mu = np.array([1.0, 1.0, 0.5, 0.0])
    # non-tie rows: 0 right, 1 wrong, 3 right -> 2/3
    assert pairwise_accuracy(scores, mu) == pytest.approx(2 / 3)
    s = np.array([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0]])
    order = np.array([[0, 1, 2], [0, 1, 2]])
    # row 0: all 3 pairs right; row 1: all 3 wrong -> 1/2
    assert ranking_accuracy(s, order) == pytest.approx(0.5)
    gold = np.array([[0.9, 0.5, 0.51], [0.3, 0.2, 0.1]])
    # row 0: (0,1) right, (0,2) right, (1,2) a tie at eps 0.02 (left out); row 1: 3 wrong -> 2/5
    assert gold_order_accuracy(s, gold, tie_eps=0.02) == pytest.approx(2 / 5)
    assert gold_order_accuracy(s, gold) == pytest.approx(2 / 6)  # (1,2) counts: 2.0 > 1.0 but 0.5 < 0.51
    assert np.isnan(gold_order_accuracy(s, np.ones_like(s)))
