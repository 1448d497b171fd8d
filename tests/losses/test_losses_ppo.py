import math

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.losses import (
    a2c_policy_loss, kl_penalized_rewards, last_valid_index, ppo_policy_loss, ppo_value_loss)

NAN = float("nan")

# token:            1     2     3     4     5     pad
RATIO = [1.5, 1.1, 0.5, 0.5, 1.5]
ADV = jnp.array([[2.0, 1.0, -1.0, 1.0, -2.0, NAN]])
OLD = jnp.array([[-1.0, -2.0, -0.5, -1.5, -3.0, -1000.0]])
LOGP = OLD + jnp.array([[math.log(r) for r in RATIO] + [2000.0]])
MASK = jnp.array([[1, 1, 1, 1, 1, 0]])


def test_ppo_policy_loss_hand_values():
    loss, m = ppo_policy_loss(LOGP, OLD, ADV, MASK, 0.2)
    # per token max(-ρA, -clip(ρ)A):
    #  1: ρ=1.5, A=+2 -> max(-3, -2.4)  = -2.4 (clipped)
    #  2: ρ=1.1, A=+1 -> max(-1.1,-1.1) = -1.1 (inside the clip range)
    #  3: ρ=0.5, A=-1 -> max(0.5, 0.8)  =  0.8 (clipped)
    #  4: ρ=0.5, A=+1 -> max(-0.5,-0.8) = -0.5 (not clipped: pessimistic term is unclipped)
    #  5: ρ=1.5, A=-2 -> max(3, 2.4)    =  3.0 (not clipped)
    np.testing.assert_allclose(loss, -0.04, atol=1e-6)  # (-2.4 - 1.1 + 0.8 - 0.5 + 3) / 5
    np.testing.assert_allclose(m["policy/clipfrac"], 0.4, rtol=1e-6)
    np.testing.assert_allclose(m["policy/ratio_mean"], 1.02, rtol=1e-6)
    np.testing.assert_allclose(m["policy/approxkl"], 0.1298794, rtol=1e-5)


def test_ppo_policy_grad_zero_where_clipped_and_finite_on_padding():
    g = jax.grad(lambda lp: ppo_policy_loss(lp, OLD, ADV, MASK, 0.2)[0])(LOGP)
    # d(-ρA)/dlogp = -ρA/5 where unclipped, 0 where clipped or padded
    np.testing.assert_allclose(g, [[0.0, -0.22, 0.0, -0.1, 0.6, 0.0]], atol=1e-6)


def test_ppo_policy_loss_no_clipping_at_ratio_one():
    loss, m = ppo_policy_loss(OLD, OLD, ADV, MASK, 0.2)
    np.testing.assert_allclose(loss, -(2 + 1 - 1 + 1 - 2) / 5, atol=1e-6)
    assert float(m["policy/clipfrac"]) == 0.0 and float(m["policy/approxkl"]) == 0.0


def test_ppo_policy_loss_jit_vmap_over_clip_eps():
    f = jax.jit(jax.vmap(ppo_policy_loss, in_axes=(None, None, None, None, 0)))
    losses, m = f(LOGP, OLD, ADV, MASK, jnp.array([0.2, 0.6]))
    np.testing.assert_allclose(losses[0], -0.04, atol=1e-6)
    # ε = 0.6: clip range [0.4, 1.6] contains every ratio -> plain -mean(ρA)
    np.testing.assert_allclose(losses[1], -(3 + 1.1 - 0.5 + 0.5 - 3) / 5, atol=1e-6)
    np.testing.assert_allclose(m["policy/clipfrac"], [0.4, 0.0], atol=1e-6)


V = jnp.array([[1.0, 0.6, 0.0, 2.0, NAN]])
V_OLD = jnp.array([[0.5, 0.5, 0.5, 1.0, 7.0]])
G = jnp.array([[1.0, 1.0, -1.0, 0.0, jnp.inf]])
VMASK = jnp.array([[1, 1, 1, 1, 0]])


def test_ppo_value_loss_hand_values():
    loss, m = ppo_value_loss(V, V_OLD, G, VMASK, 0.2)
    #  1: (1-1)²=0,   V_clip=0.7 -> 0.09 (clipped)
    #  2: 0.16,       V_clip=0.6 -> 0.16
    #  3: 1.0,        V_clip=0.3 -> 1.69 (clipped)
    #  4: 4.0,        V_clip=1.2 -> 1.44 (unclipped is larger)
    np.testing.assert_allclose(loss, 0.5 * (0.09 + 0.16 + 1.69 + 4.0) / 4, rtol=1e-6)  # 0.7425
    np.testing.assert_allclose(m["val/clipfrac"], 0.5)
    np.testing.assert_allclose(m["val/vpred"], 0.9, rtol=1e-6)
    np.testing.assert_allclose(m["val/error"], 1.29, rtol=1e-6)
    g = jax.grad(lambda v: ppo_value_loss(v, V_OLD, G, VMASK, 0.2)[0])(V)
    # 0.5·2·(V - G)/4 where unclipped: token 2 -> -0.1, token 4 -> 0.5; clipped/pad -> 0
    np.testing.assert_allclose(g, [[0.0, -0.1, 0.0, 0.5, 0.0]], atol=1e-6)


def test_ppo_value_loss_vmap_over_clip():
    f = jax.jit(jax.vmap(ppo_value_loss, in_axes=(None, None, None, None, 0)))
    losses, _ = f(V, V_OLD, G, VMASK, jnp.array([0.2, 10.0]))
    np.testing.assert_allclose(losses, [0.7425, 0.5 * (0 + 0.16 + 1 + 4) / 4], rtol=1e-6)


def test_a2c_policy_loss():
    logp = jnp.array([[-1.0, -2.0, 5.0]])
    adv = jnp.array([[2.0, 0.5, NAN]])
    m = jnp.array([[1, 1, 0]])
    loss, met = a2c_policy_loss(logp, adv, m)
    np.testing.assert_allclose(loss, 1.5)  # -(-2 - 1)/2
    g = jax.grad(lambda lp: a2c_policy_loss(lp, adv, m)[0])(logp)
    np.testing.assert_allclose(g, [[-1.0, -0.25, 0.0]])


def test_kl_penalized_rewards_score_at_last_valid_token():
    scores = jnp.array([1.0, 2.0, 3.0])
    logp = jnp.array([[-1.0, -1.0, -1.0, 5.0], [-2.0, 7.0, 7.0, 7.0], [1.0, 1.0, 1.0, 1.0]])
    ref = jnp.array([[-1.5, -0.5, -1.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    mask = jnp.array([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    rewards, kl = kl_penalized_rewards(scores, logp, ref, mask, 0.1)
    np.testing.assert_allclose(kl, [[0.5, -0.5, 0, 0], [-1, 0, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_allclose(rewards, [[-0.05, 0.05, 1.0, 0], [2.1, 0, 0, 0], [0, 0, 0, 0]],
                               rtol=1e-6)
    np.testing.assert_array_equal(last_valid_index(mask), [2, 0, -1])
    # k3 estimator, traced beta under jit
    f = jax.jit(kl_penalized_rewards, static_argnames="estimator")
    rewards3, kl3 = f(scores, logp, ref, mask, jnp.float32(2.0), estimator="k3")
    np.testing.assert_allclose(kl3[0], [0.10653066, 0.14872127, 0, 0], rtol=1e-5)
    np.testing.assert_allclose(rewards3[0], [-0.21306132, -0.29744254, 1.0, 0], rtol=1e-5)
    np.testing.assert_allclose(rewards3[1], [2.0 - 2 * 0.71828183, 0, 0, 0], rtol=1e-5)
