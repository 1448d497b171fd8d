"""ILQL's pieces against values worked out by hand: the expectile loss, the CQL term, the
terminal rewards and Bellman targets, and the advantage-shifted logits used at generation."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.losses.ilql import cql_loss, expectile_loss, ilql_loss, shifted_logits, terminal_rewards


def test_expectile_loss_weights_the_two_signs_by_tau():
    diff = jnp.asarray([[2.0, -1.0, 3.0]])
    mask = jnp.asarray([[1, 1, 0]])
    # (0.7·4 + 0.3·1) / 2 valid entries
    assert float(expectile_loss(diff, mask, 0.7)) == pytest.approx((0.7 * 4 + 0.3 * 1) / 2)
    # τ = ½ is half the mean squared error
    assert float(expectile_loss(diff, mask, 0.5)) == pytest.approx(0.5 * (4 + 1) / 2)
    # its minimiser over a constant V is the τ-expectile: above the mean for τ > ½
    q = jnp.asarray([0.0, 0.0, 1.0, 3.0])
    vs = jnp.linspace(-1, 4, 5001)
    losses = jax.vmap(lambda v: expectile_loss((q - v)[None], jnp.ones((1, 4)), 0.9))(vs)
    best = float(vs[jnp.argmin(losses)])
    # the 0.9-expectile e solves 0.9·Σ_{q>e}(q − e) = 0.1·Σ_{q<e}(e − q)
    e = best
    lhs = 0.9 * sum(max(x - e, 0) for x in (0, 0, 1, 3))
    rhs = 0.1 * sum(max(e - x, 0) for x in (0, 0, 1, 3))
    assert lhs == pytest.approx(rhs, abs=2e-3) and best > 1.0  # the mean is 1


def test_cql_term_is_logsumexp_minus_the_taken_q():
    q = jnp.asarray([[[1.0, 2.0, 0.0], [0.0, 0.0, 0.0]]])   # [B=1, T=2, V=3]
    actions = jnp.asarray([[1, 2]])
    mask = jnp.asarray([[1, 1]])
    want = ((math.log(math.e + math.e ** 2 + 1) - 2.0) + (math.log(3.0) - 0.0)) / 2
    assert float(cql_loss(q, actions, mask)) == pytest.approx(want, rel=1e-6)


def test_terminal_rewards_sit_at_the_last_valid_token():
    mask = jnp.asarray([[1, 1, 1, 0], [1, 1, 1, 1]])
    r = np.asarray(terminal_rewards(jnp.asarray([2.0, -1.0]), mask))
    np.testing.assert_array_equal(r, [[0, 0, 2.0, 0], [0, 0, 0, -1.0]])


def test_bellman_targets_and_the_whole_loss_by_hand():
    """One response of 2 tokens, vocabulary 2, reward 1, γ = 0.5, τ = 0.7."""
    Q1 = jnp.asarray([[[0.2, 0.4], [0.1, 0.6]]])
    Q2 = jnp.asarray([[[0.3, 0.1], [0.5, 0.2]]])
    T1 = jnp.asarray([[[0.0, 0.5], [0.0, 0.8]]])
    T2 = jnp.asarray([[[0.0, 0.3], [0.0, 0.9]]])
    v = jnp.asarray([[0.4, 0.7]])
    actions = jnp.asarray([[1, 1]])
    mask = jnp.asarray([[1, 1]])
    lm = jnp.asarray([[-1.0, -2.0]])
    hp = {"gamma": 0.5, "tau": 0.7, "cql_coef": 0.1, "awac_coef": 1.0}
    loss, m = ilql_loss((Q1, Q2), (T1, T2), v, lm, actions, mask, jnp.asarray([1.0]), hp)
    # y_0 = 0 + 0.5·V(s_1) = 0.35; y_1 = 1 (terminal)
    y = [0.35, 1.0]
    lq = np.mean([(0.4 - y[0]) ** 2, (0.6 - y[1]) ** 2]) + np.mean([(0.1 - y[0]) ** 2, (0.2 - y[1]) ** 2])
    # min target Q at the taken tokens: 0.3, 0.8; u = 0.3 − 0.4 = −0.1 (weight 0.3), 0.8 − 0.7 (0.7)
    lv = (0.3 * 0.01 + 0.7 * 0.01) / 2
    lse = lambda a, b: math.log(math.exp(a) + math.exp(b))  # noqa: E731
    lc = np.mean([lse(0.2, 0.4) - 0.4, lse(0.1, 0.6) - 0.6]) + np.mean([lse(0.3, 0.1) - 0.1, lse(0.5, 0.2) - 0.2])
    want = lq + lv + 0.1 * lc + 1.5
    assert float(m["loss/q"]) == pytest.approx(lq, rel=1e-5)
    assert float(m["loss/v"]) == pytest.approx(lv, rel=1e-5)
    assert float(m["loss/cql"]) == pytest.approx(lc, rel=1e-5)
    assert float(loss) == pytest.approx(want, rel=1e-5)
    # the targets are constants: no gradient reaches the target heads, none flows through y into V
    g = jax.grad(lambda t1: ilql_loss((Q1, Q2), (t1, T2), v, lm, actions, mask, jnp.asarray([1.0]), hp)[0])(T1)
    assert float(jnp.abs(g).sum()) == 0.0


def test_shifted_logits_add_beta_times_the_advantage():
    logits = jnp.asarray([[1.0, 2.0, 3.0]])
    t1, t2 = jnp.asarray([[0.5, 0.0, 1.0]]), jnp.asarray([[0.2, 0.4, 2.0]])
    v = jnp.asarray([0.1])
    got = np.asarray(shifted_logits(logits, (t1, t2), v, 2.0))
    logp = np.asarray(jax.nn.log_softmax(logits, -1))
    adv = np.minimum([0.5, 0.0, 1.0], [0.2, 0.4, 2.0]) - 0.1
    np.testing.assert_allclose(got, logp + 2.0 * adv, rtol=1e-6)
    # β = 0 samples the LM itself
    np.testing.assert_allclose(np.asarray(shifted_logits(logits, (t1, t2), v, 0.0)), logp, rtol=1e-6)
