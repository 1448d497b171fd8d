"""Reward head (last non-pad token) and value head (per token)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.models import (forward, get_preset, init_params, init_reward_head, init_value_head,
                             last_token_index, last_token_scalar, token_scalars)


def test_last_token_index_left_right_and_both_padding():
    mask = jnp.array([
        [0, 0, 1, 1, 1],   # left padded -> 4
        [1, 1, 1, 0, 0],   # right padded -> 2
        [0, 1, 1, 0, 0],   # both -> 2
        [1, 1, 1, 1, 1],   # none -> 4
        [0, 0, 0, 1, 0],   # a single token -> 3
    ])
    np.testing.assert_array_equal(last_token_index(mask), [4, 2, 2, 4, 3])


def test_reward_head_reads_last_non_pad_token_hand_values():
    # hidden[b, t] = (t + 1) * [1, 2] + 10 * b; head w = [1, -1], bias 0.5
    B, T = 3, 4
    hidden = (jnp.arange(1, T + 1, dtype=jnp.float32)[None, :, None] * jnp.array([1.0, 2.0])
              + 10.0 * jnp.arange(B, dtype=jnp.float32)[:, None, None])
    head = {"kernel": jnp.array([1.0, -1.0]), "bias": jnp.float32(0.5)}
    mask = jnp.array([[0, 1, 1, 1], [1, 1, 0, 0], [0, 1, 1, 0]])
    # row 0 -> t=3: (4 + 0) - (8 + 0) + .5 = -3.5; row 1 -> t=1: (2+10) - (4+10) + .5 = -1.5
    # row 2 -> t=2: (3+20) - (6+20) + .5 = -2.5
    out = last_token_scalar(head, hidden, mask)
    assert out.shape == (B,) and out.dtype == jnp.float32
    np.testing.assert_allclose(out, [-3.5, -1.5, -2.5], rtol=1e-6)
    # Changing anything after the last real token (or in the padding) does not change the reward.
    noisy = hidden + 100.0 * (1 - mask)[:, :, None]
    np.testing.assert_allclose(last_token_scalar(head, noisy, mask), out, rtol=1e-6)


def test_reward_head_on_model_is_padding_invariant():
    cfg = get_preset("tiny")
    shapes = jax.eval_shape(lambda r: init_params(cfg, r), jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map(lambda s: jnp.asarray(rng.normal(0, 0.02, s.shape), s.dtype), shapes)
    head = init_reward_head(jax.random.PRNGKey(1), cfg.d_model)
    seq = jax.random.randint(jax.random.PRNGKey(2), (6,), 1, cfg.vocab_size)
    ids = jnp.zeros((3, 9), jnp.int32)
    ids = ids.at[0, 3:].set(seq).at[1, :6].set(seq).at[2, 1:7].set(seq)
    mask = (jnp.arange(9)[None] >= jnp.array([3, 0, 1])[:, None]) & (
        jnp.arange(9)[None] < jnp.array([9, 6, 7])[:, None])
    mask = mask.astype(jnp.int32)

    @jax.jit
    def rewards(p, h, i, m):
        return last_token_scalar(h, forward(cfg, p, i, m)[1], m)

    r = rewards(params, head, ids, mask)
    ref = rewards(params, head, jnp.zeros((3, 9), jnp.int32).at[:, :6].set(seq),
                  jnp.zeros((3, 9), jnp.int32).at[:, :6].set(1))
    np.testing.assert_allclose(r, ref, atol=1e-5)
    np.testing.assert_allclose(r, r[0], atol=1e-5)  # left / right / both padded: same reward
    assert abs(float(r[0])) > 1e-4


@pytest.mark.parametrize("d", [8192])
def test_reward_head_init_std(d):
    # Stiennon et al. 2020: w ~ N(0, 1 / sqrt(d_model + 1)) (std), bias 0.
    stds = []
    for seed in range(8):
        head = init_reward_head(jax.random.PRNGKey(seed), d)
        assert head["kernel"].shape == (d,) and head["kernel"].dtype == jnp.float32
        assert float(head["bias"]) == 0.0
        stds.append(float(jnp.std(head["kernel"])))
        assert abs(float(jnp.mean(head["kernel"]))) < 4 / np.sqrt(d) / np.sqrt(d + 1)
    target = 1 / np.sqrt(d + 1)
    # std estimate over 8 * 8192 draws: relative s.e. ~ 1 / sqrt(2 * 65536) ~ 0.3%
    np.testing.assert_allclose(np.mean(stds), target, rtol=0.015)
    np.testing.assert_allclose(stds, target, rtol=0.05)


def test_value_head_shape_and_init():
    B, T, D = 2, 5, 16
    hidden = jax.random.normal(jax.random.PRNGKey(0), (B, T, D)).astype(jnp.bfloat16)
    zero = init_value_head(jax.random.PRNGKey(1), D)
    v = token_scalars(zero, hidden)
    assert v.shape == (B, T) and v.dtype == jnp.float32
    np.testing.assert_array_equal(v, 0.0)

    head = init_value_head(jax.random.PRNGKey(1), 4096, scale=0.1)
    assert head["kernel"].shape == (4096,) and float(head["bias"]) == 0.0
    np.testing.assert_allclose(float(jnp.std(head["kernel"])), 0.1, rtol=0.05)

    head = {"kernel": jnp.arange(D, dtype=jnp.float32) / D, "bias": jnp.float32(-1.0)}
    expected = np.asarray(hidden, np.float32) @ (np.arange(D) / D) - 1.0
    np.testing.assert_allclose(token_scalars(head, hidden), expected, rtol=1e-5, atol=1e-5)
