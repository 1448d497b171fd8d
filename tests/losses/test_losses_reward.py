import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.losses import (
    apply_normalization, bradley_terry_loss, fit_normalization, kway_bradley_terry_loss,
    ranking_pairs)

SP_M1 = 0.31326169  # -log σ(1)  = log(1 + e^-1)
SP_P1 = 1.31326169  # -log σ(-1) = log(1 + e^1)


def test_bt_decisive_and_tie():
    ra, rb = jnp.array([1.0, 1.0, 1.0]), jnp.zeros(3)
    for mu, want in [(1.0, SP_M1), (0.0, SP_P1), (0.5, 0.81326169)]:
        loss, _ = bradley_terry_loss(ra[:1], rb[:1], jnp.array([mu]))
        np.testing.assert_allclose(loss, want, rtol=1e-6)
    loss, m = bradley_terry_loss(ra, rb, jnp.array([1.0, 0.5, 0.0]))
    np.testing.assert_allclose(loss, (SP_M1 + 0.81326169 + SP_P1) / 3, rtol=1e-6)
    assert float(m["reward/accuracy"]) == 0.5  # the tie is excluded
    assert float(m["reward/margin"]) == 0.0  # (+1 and -1) signed toward the preferred
    assert float(m["reward/n_ties"]) == 1.0


def test_bt_weights():
    loss, m = bradley_terry_loss(jnp.ones(3), jnp.zeros(3), jnp.array([1.0, 0.5, 0.0]),
                                 weight=jnp.array([2.0, 1.0, 1.0]))
    np.testing.assert_allclose(loss, 0.68826169, rtol=1e-6)  # (2·SP_M1 + 0.81326 + SP_P1)/4
    # zero weight = padding: excluded from loss and from the metrics
    loss, m = bradley_terry_loss(jnp.ones(3), jnp.zeros(3), jnp.array([1.0, 0.5, 0.0]),
                                 weight=jnp.array([1.0, 0.0, 0.0]))
    np.testing.assert_allclose(loss, SP_M1, rtol=1e-6)
    assert float(m["reward/accuracy"]) == 1.0 and float(m["reward/n_ties"]) == 0.0


def test_bt_margin_applies_toward_preferred_and_not_to_ties():
    ra, rb = jnp.ones(1), jnp.zeros(1)
    cases = [(1.0, 0.47407698),   # -log σ(1 - 0.5)
             (0.0, 1.70141328),   # -log σ(-1 - 0.5)
             (0.5, 0.81326169)]   # tie: no margin
    for mu, want in cases:
        loss, _ = bradley_terry_loss(ra, rb, jnp.array([mu]), margin=0.5)
        np.testing.assert_allclose(loss, want, rtol=1e-6)


def test_bt_centering():
    loss, m = bradley_terry_loss(jnp.array([1.0]), jnp.array([0.5]), jnp.array([1.0]),
                                 center_coef=0.01)
    np.testing.assert_allclose(loss, 0.47407698 + 0.01 * 2.25, rtol=1e-6)
    loss, m = bradley_terry_loss(jnp.array([1.0, -1.0]), jnp.array([0.5, 0.0]), jnp.ones(2),
                                 center_coef=jnp.float32(0.1))
    # bt = (0.47407698 + 1.31326169)/2; center = (2.25 + 1)/2
    np.testing.assert_allclose(loss, 0.89366934 + 0.1625, rtol=1e-6)
    np.testing.assert_allclose(m["reward/bt_loss"], 0.89366934, rtol=1e-6)
    # the centering gradient pulls the sum toward 0
    g = jax.grad(lambda r: bradley_terry_loss(r, jnp.zeros(1), jnp.ones(1), center_coef=1.0)[0])
    assert float(g(jnp.array([20.0]))[0]) > 0


def test_bt_stable_for_large_rewards():
    loss, _ = bradley_terry_loss(jnp.array([-200.0]), jnp.array([200.0]), jnp.ones(1))
    np.testing.assert_allclose(loss, 400.0, rtol=1e-6)


@pytest.mark.parametrize("k,n", [(3, 3), (4, 6)])
def test_ranking_pairs(k, n):
    ia, ib, w = ranking_pairs(k)
    assert len(ia) == len(ib) == len(w) == n
    assert np.all(ia < ib)
    assert len({(a, b) for a, b in zip(ia, ib)}) == n
    np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(w, 1.0 / n)


def test_ranking_pairs_k3_explicit():
    ia, ib, _ = ranking_pairs(3)
    assert list(zip(ia.tolist(), ib.tolist())) == [(0, 1), (0, 2), (1, 2)]


def test_kway_loss_equals_explicit_pairwise_sum():
    rewards = jnp.array([[0.2, 1.0, -0.5], [0.0, 0.3, 0.6]])
    order = jnp.array([[1, 0, 2], [0, 2, 1]])  # best -> worst
    sp = lambda x: math.log1p(math.exp(x))  # -log σ(d) = sp(-d)
    # prompt 0: 1.0>0.2, 1.0>-0.5, 0.2>-0.5; prompt 1: 0.0>0.6, 0.0>0.3, 0.6>0.3
    p0 = (sp(-0.8) + sp(-1.5) + sp(-0.7)) / 3
    p1 = (sp(0.6) + sp(0.3) + sp(-0.3)) / 3
    loss, m = kway_bradley_terry_loss(rewards, order)
    np.testing.assert_allclose(loss, (p0 + p1) / 2, rtol=1e-6)
    np.testing.assert_allclose(m["reward/accuracy"], 4.0 / 6.0, rtol=1e-6)
    # each prompt counts once: a prompt with K=4 has the same total weight as one with K=3
    loss1, _ = kway_bradley_terry_loss(rewards[:1], order[:1])
    np.testing.assert_allclose(loss1, p0, rtol=1e-6)
    # prompt_weight 0 drops a prompt
    loss_w, _ = kway_bradley_terry_loss(rewards, order, prompt_weight=jnp.array([1.0, 0.0]))
    np.testing.assert_allclose(loss_w, p0, rtol=1e-6)


def test_kway_k4_jit():
    r = jnp.array([[4.0, 3.0, 2.0, 1.0]])
    loss, m = jax.jit(kway_bradley_terry_loss)(r, jnp.array([[0, 1, 2, 3]]))
    sp = lambda x: math.log1p(math.exp(x))
    want = (3 * sp(-1) + 2 * sp(-2) + sp(-3)) / 6  # gaps 1,1,1,2,2,3
    np.testing.assert_allclose(loss, want, rtol=1e-6)
    assert float(m["reward/accuracy"]) == 1.0


def test_fit_normalization_mean_std():
    s = jnp.array([1.0, 2.0, 3.0, 4.0])
    gain, bias = fit_normalization(s, "mean_std")
    np.testing.assert_allclose(gain, 0.89442719, rtol=1e-6)  # 1/sqrt(1.25)
    np.testing.assert_allclose(bias, -2.23606798, rtol=1e-6)  # -2.5/sqrt(1.25)
    out = apply_normalization(s, gain, bias)
    np.testing.assert_allclose(jnp.mean(out), 0.0, atol=1e-6)
    np.testing.assert_allclose(jnp.std(out), 1.0, rtol=1e-6)


def test_fit_normalization_reference_zero():
    gain, bias = fit_normalization(jnp.array([5.0, 7.0]), "reference_zero",
                                   reference_scores=jnp.array([0.5, 1.5]))
    assert float(gain) == 1.0 and float(bias) == -1.0
    np.testing.assert_allclose(apply_normalization(jnp.array([0.5, 1.5, 3.0]), gain, bias),
                               [-0.5, 0.5, 2.0])
    with pytest.raises(ValueError, match="reference_scores"):
        fit_normalization(jnp.ones(2), "reference_zero")
    with pytest.raises(KeyError, match="did you mean 'mean_std'"):
        fit_normalization(jnp.ones(2), "mean-std")
