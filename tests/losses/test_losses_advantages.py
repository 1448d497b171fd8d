import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.losses import ADVANTAGE_ESTIMATORS, gae, group_baseline

NAN = float("nan")
REWARDS = jnp.array([[0.1, -0.2, 0.3, 0.0, 1.0], [0.5, 0.0, 2.0, 99.0, -99.0]])
VALUES = jnp.array([[0.5, 0.4, 0.3, 0.2, 0.1], [1.0, -0.5, 0.25, 123.0, NAN]])
MASK = jnp.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])


def python_gae(rewards, values, length, gamma, lam):
    """Textbook GAE on the valid prefix of one row; V after the last token is 0."""
    adv = [0.0] * length
    last = 0.0
    for t in reversed(range(length)):
        v_next = values[t + 1] if t + 1 < length else 0.0
        delta = rewards[t] + gamma * v_next - values[t]
        last = delta + gamma * lam * last
        adv[t] = last
    return adv


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8)])
def test_gae_matches_python_loop(gamma, lam):
    adv, ret = jax.jit(gae)(REWARDS, VALUES, MASK, gamma, lam)
    r, v = np.asarray(REWARDS).tolist(), np.asarray(VALUES).tolist()
    for b, length in enumerate([5, 3]):
        want = python_gae(r[b], v[b], length, gamma, lam) + [0.0] * (5 - length)
        np.testing.assert_allclose(adv[b], want, rtol=1e-5, atol=1e-6)
        want_ret = [a + vv for a, vv in zip(want[:length], v[b][:length])] + [0.0] * (5 - length)
        np.testing.assert_allclose(ret[b], want_ret, rtol=1e-5, atol=1e-6)
    assert np.all(np.isfinite(adv)) and np.all(np.isfinite(ret))


def test_gae_hand_values_short_row():
    # row 1: R = [.5, 0, 2], V = [1, -.5, .25]
    adv, ret = gae(REWARDS, VALUES, MASK, 1.0, 0.95)
    np.testing.assert_allclose(adv[1], [1.291875, 2.4125, 1.75, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(ret[1], [2.291875, 1.9125, 2.0, 0, 0], rtol=1e-6)
    adv, ret = gae(REWARDS, VALUES, MASK, 0.9, 0.8)
    np.testing.assert_allclose(adv[1], [0.4792, 1.985, 1.75, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(ret[1], [1.4792, 1.485, 2.0, 0, 0], rtol=1e-6)


def test_gae_general_mask_hole_ends_episode_and_grad_is_finite():
    r = jnp.array([[1.0, 5.0, 2.0, 3.0]])
    v = jnp.array([[0.5, NAN, 1.0, 0.0]])
    m = jnp.array([[1, 0, 1, 1]])
    adv, _ = gae(r, v, m, 1.0, 1.0)
    # t=0 ends at the hole: A0 = 1 - 0.5; t=2,3: A3 = 3, A2 = 2 + 0 - 1 + 3 = 4
    np.testing.assert_allclose(adv, [[0.5, 0.0, 4.0, 3.0]])
    g = jax.grad(lambda v: jnp.sum(gae(r, v, m, 1.0, 1.0)[0]))(v)
    assert np.all(np.isfinite(g))


def test_gae_vmap_over_gamma_lambda():
    gammas = jnp.array([1.0, 0.9])
    lams = jnp.array([0.95, 0.8])
    adv, _ = jax.jit(jax.vmap(gae, in_axes=(None, None, None, 0, 0)))(REWARDS, VALUES, MASK,
                                                                      gammas, lams)
    np.testing.assert_allclose(adv[0, 1, :3], [1.291875, 2.4125, 1.75], rtol=1e-6)
    np.testing.assert_allclose(adv[1, 1, :3], [0.4792, 1.985, 1.75], rtol=1e-6)


SCORES = jnp.array([1.0, 2.0, 3.0, 0.0, 0.0, 6.0])


def test_group_baselines_hand_values():
    np.testing.assert_allclose(group_baseline(SCORES, 3, "rloo"), [-1.5, 0, 1.5, -3, -3, 6])
    # group stds (k-1): 1 and sqrt(12)
    s12 = 3.46410162
    np.testing.assert_allclose(group_baseline(SCORES, 3, "grpo", eps=0.0),
                               [-1, 0, 1, -2 / s12, -2 / s12, 4 / s12], rtol=1e-6)
    np.testing.assert_allclose(group_baseline(SCORES, 3, "grpo"),
                               [-1 / 1.0001, 0, 1 / 1.0001, -2 / (s12 + 1e-4), -2 / (s12 + 1e-4),
                                4 / (s12 + 1e-4)], rtol=1e-6)
    np.testing.assert_allclose(group_baseline(SCORES, 3, "dr_grpo"), [-1, 0, 1, -2, -2, 4])
    np.testing.assert_allclose(group_baseline(SCORES, 3, "reinforce"), [-1, 0, 1, -2, -2, 4])
    greedy = jnp.array([1.0, 1.0, 1.0, 2.0, 2.0, 2.0])  # ReMax-style given baseline
    np.testing.assert_allclose(group_baseline(SCORES, 3, "reinforce", baseline=greedy),
                               [0, 1, 2, -2, -2, 4])


def test_group_baseline_errors_and_registry():
    with pytest.raises(ValueError, match="multiple"):
        group_baseline(SCORES, 4, "rloo")
    with pytest.raises(KeyError, match="did you mean 'rloo'"):
        group_baseline(SCORES, 3, "rlo")
    np.testing.assert_allclose(ADVANTAGE_ESTIMATORS.get("rloo")(SCORES, 2), [-1, 1, 3, -3, -6, 6])
    out = jax.jit(group_baseline, static_argnums=(1, 2))(SCORES, 3, "grpo")
    assert out.shape == (6,)
