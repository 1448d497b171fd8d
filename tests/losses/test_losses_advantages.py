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


# --- group baselines, zero-variance groups, ReMax and the moving-average baseline vs plain loops ---

import math  # noqa: E402

from rlhf_jax.losses import (  # noqa: E402
    dr_grpo_advantages, grpo_advantages, moving_average_baseline, remax_advantages,
    rloo_advantages, zero_variance_groups)

LOOP_SCORES = [0.3, 1.7, -0.4, 2.2, 0.0, 0.9, 5.0, -1.1]
LOOP_TOL = dict(rtol=1e-5, atol=1e-6)


def loop_groups(scores, k):
    return [scores[g:g + k] for g in range(0, len(scores), k)]


def loop_rloo(scores, k):
    out = []
    for grp in loop_groups(scores, k):
        for i, r in enumerate(grp):
            others = [grp[j] for j in range(k) if j != i]
            out.append(r - sum(others) / len(others))
    return out


def loop_grpo(scores, k, eps):
    out = []
    for grp in loop_groups(scores, k):
        mean = sum(grp) / k
        std = math.sqrt(sum((r - mean) ** 2 for r in grp) / (k - 1))
        out.extend((r - mean) / (std + eps) for r in grp)
    return out


def loop_dr_grpo(scores, k):
    out = []
    for grp in loop_groups(scores, k):
        mean = sum(grp) / k
        out.extend(r - mean for r in grp)
    return out


@pytest.mark.parametrize("k", [2, 4])
def test_group_estimators_match_python_loops(k):
    s = jnp.array(LOOP_SCORES, jnp.float32)
    np.testing.assert_allclose(rloo_advantages(s, k), loop_rloo(LOOP_SCORES, k), **LOOP_TOL)
    np.testing.assert_allclose(grpo_advantages(s, k), loop_grpo(LOOP_SCORES, k, 1e-4), **LOOP_TOL)
    np.testing.assert_allclose(grpo_advantages(s, k, eps=0.5), loop_grpo(LOOP_SCORES, k, 0.5),
                               **LOOP_TOL)
    np.testing.assert_allclose(dr_grpo_advantages(s, k), loop_dr_grpo(LOOP_SCORES, k), **LOOP_TOL)
    for mode, want in [("rloo", loop_rloo(LOOP_SCORES, k)),
                       ("grpo", loop_grpo(LOOP_SCORES, k, 1e-4)),
                       ("dr_grpo", loop_dr_grpo(LOOP_SCORES, k))]:
        np.testing.assert_allclose(group_baseline(s, k, mode), want, **LOOP_TOL, err_msg=mode)


def test_group_estimators_k2_hand_values():
    # k = 2, group (0.3, 1.7): RLOO baseline is the other sample -> ∓1.4;
    # mean 1.0, sample std |1.7 − 0.3|/√2 -> GRPO ∓0.7/(0.98995 + 1e-4); Dr. GRPO ∓0.7
    s = jnp.array([0.3, 1.7])
    np.testing.assert_allclose(rloo_advantages(s, 2), [-1.4, 1.4], **LOOP_TOL)
    std = 1.4 / math.sqrt(2)
    np.testing.assert_allclose(grpo_advantages(s, 2), [-0.7 / (std + 1e-4), 0.7 / (std + 1e-4)],
                               **LOOP_TOL)
    np.testing.assert_allclose(dr_grpo_advantages(s, 2), [-0.7, 0.7], **LOOP_TOL)


def test_group_estimators_reject_too_small_groups():
    s = jnp.array(LOOP_SCORES)
    with pytest.raises(ValueError):
        rloo_advantages(s, 1)
    with pytest.raises(ValueError):
        grpo_advantages(s, 1)
    with pytest.raises(ValueError, match="multiple"):
        dr_grpo_advantages(s, 3)


def test_zero_variance_groups():
    # k = 3: all equal | within tol (spread 5e-7 ≤ 1e-6) | not equal
    s = jnp.array([1.0, 1.0, 1.0, 2.0, 2.0 + 5e-7, 2.0, 0.0, 0.0, 0.01], jnp.float32)
    out = zero_variance_groups(s, 3)
    np.testing.assert_array_equal(out, [1, 1, 1, 1, 1, 1, 0, 0, 0])
    assert out.dtype == jnp.float32
    np.testing.assert_array_equal(zero_variance_groups(s, 3, tol=0.0), [1, 1, 1, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(zero_variance_groups(s, 3, tol=0.02), [1] * 9)
    # every group baseline is 0 on the flat group
    np.testing.assert_allclose(rloo_advantages(s, 3)[:3], [0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(grpo_advantages(s, 3)[:3], [0, 0, 0], atol=1e-6)


def test_remax_advantages_subtract_greedy_score():
    scores = [0.5, 1.5, -1.0, 3.0]
    greedy = [1.0, 1.0, 2.0, 2.0]  # one greedy rollout per prompt, repeated over its samples
    want = [r - g for r, g in zip(scores, greedy)]
    out = remax_advantages(jnp.array(scores), jnp.array(greedy))
    np.testing.assert_allclose(out, want, **LOOP_TOL)
    np.testing.assert_allclose(out, [-0.5, 0.5, -3.0, 1.0], **LOOP_TOL)
    assert ADVANTAGE_ESTIMATORS.get("remax") is remax_advantages


def test_moving_average_baseline_three_steps_vs_hand_loop():
    decay = 0.9
    batch_means = [2.0, -1.0, 4.0]
    ema, count = jnp.float32(0.0), jnp.float32(0.0)
    past = []
    for step, m in enumerate(batch_means):
        b, ema, count = moving_average_baseline(ema, count, jnp.float32(m), decay)
        if not past:
            want = m  # nothing seen yet: the batch mean itself
        else:  # bias-corrected EMA = weighted mean of past batch means with weights decay^age
            weights = [decay ** (len(past) - 1 - j) for j in range(len(past))]
            want = sum(w * x for w, x in zip(weights, past)) / sum(weights)
        np.testing.assert_allclose(b, want, **LOOP_TOL, err_msg=f"step {step}")
        past.append(m)
        raw = sum((1 - decay) * decay ** (len(past) - 1 - j) * x for j, x in enumerate(past))
        np.testing.assert_allclose(ema, raw, **LOOP_TOL)
        assert float(count) == len(past)
    # hand values: b = 2, 2, (0.9·2 − 1)/1.9; final ema = 0.1·(0.81·2 − 0.9 + 4) = 0.472
    np.testing.assert_allclose(ema, 0.472, **LOOP_TOL)
    b3, _, _ = moving_average_baseline(jnp.float32(0.08), jnp.float32(2.0), jnp.float32(4.0), decay)
    np.testing.assert_allclose(b3, 0.8 / 1.9, **LOOP_TOL)
