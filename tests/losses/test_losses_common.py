import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.losses import (
    KL_ESTIMATORS, entropy_from_logits, explained_variance, kl_estimate, masked_mean, masked_sum,
    masked_var, masked_whiten, token_logprobs)

NAN = float("nan")


def test_token_logprobs_hand_values_with_temperature():
    logits = jnp.array([[[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]])
    tokens = jnp.array([[2, 1]])
    out = token_logprobs(logits, tokens, temperature=2.0)
    # logits/2 = [.5, 1, 1.5]: 1.5 - logsumexp = -log(1 + e^-.5 + e^-1); uniform: log(1/3)
    np.testing.assert_allclose(out, [[-0.68026967, -1.09861229]], rtol=1e-6)
    assert out.dtype == jnp.float32


def test_token_logprobs_equals_log_softmax_gather_and_traced_temperature():
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    logits = jax.random.normal(k1, (2, 5, 7)).astype(jnp.bfloat16)
    tokens = jax.random.randint(k2, (2, 5), 0, 7)
    t = 0.7
    ref = jax.nn.log_softmax(logits.astype(jnp.float32) / t, axis=-1)
    ref = np.take_along_axis(np.asarray(ref), np.asarray(tokens)[..., None], -1)[..., 0]
    out = jax.jit(token_logprobs)(logits, tokens, jnp.float32(t))
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
    assert out.dtype == jnp.float32


def test_masked_sum_mean_var_ignore_garbage():
    x = jnp.array([[1.0, 2.0, NAN], [3.0, 4.0, jnp.inf]])
    m = jnp.array([[1, 1, 0], [1, 1, 0]])
    assert float(masked_sum(x, m)) == 10.0
    assert float(masked_mean(x, m)) == 2.5
    np.testing.assert_allclose(masked_mean(x, m, axis=1), [1.5, 3.5])
    np.testing.assert_allclose(masked_var(x, m), 5.0 / 3.0, rtol=1e-6)  # unbiased
    np.testing.assert_allclose(masked_var(x, m, unbiased=False), 1.25, rtol=1e-6)
    # mean over all valid tokens, not mean of row means
    m2 = jnp.array([[1, 0, 0], [1, 1, 0]])
    np.testing.assert_allclose(masked_mean(x, m2), 8.0 / 3.0, rtol=1e-6)


def test_masked_mean_empty_mask_is_zero_with_finite_grad():
    x = jnp.array([1.0, 2.0])
    m = jnp.zeros(2)
    assert float(masked_mean(x, m)) == 0.0
    g = jax.grad(lambda x: masked_mean(x, m))(x)
    assert np.all(np.isfinite(g))


def test_masked_whiten_ignores_padded_garbage():
    x = jnp.array([[1.0, 2.0, 3.0, NAN], [4.0, 5.0, 1e9, -jnp.inf]])
    m = jnp.array([[1, 1, 1, 0], [1, 1, 0, 0]])
    w = masked_whiten(x, m)
    # valid entries 1..5: mean 3, population var 2
    s = 0.70710678
    np.testing.assert_allclose(w, [[-2 * s, -s, 0.0, 0.0], [s, 2 * s, 0.0, 0.0]], atol=1e-6)
    w2 = masked_whiten(x, m, shift_mean=False)
    np.testing.assert_allclose(w2, [[-2 * s + 3, -s + 3, 3.0, 0.0], [s + 3, 2 * s + 3, 0, 0]],
                               atol=1e-5)
    g = jax.grad(lambda x: jnp.sum(masked_whiten(x, m) * jnp.arange(4.0)))(x)
    assert np.all(np.isfinite(g))


def test_entropy_from_logits():
    logits = jnp.array([[[0.0, 0.0, 0.0, 0.0], [0.0, math.log(3.0), -100.0, -100.0]]])
    np.testing.assert_allclose(entropy_from_logits(logits), [[1.38629436, 0.56233514]], rtol=1e-5)
    # temperature: logits [0, 2 log 3] at T = 2 -> p = [1/4, 3/4]
    t2 = jnp.array([[[0.0, 2 * math.log(3.0)]]])
    np.testing.assert_allclose(entropy_from_logits(t2, temperature=2.0), [[0.56233514]], rtol=1e-5)
    masked = jnp.array([[[0.0, 0.0, -jnp.inf, -jnp.inf]]])
    np.testing.assert_allclose(entropy_from_logits(masked), [[0.69314718]], rtol=1e-6)
    g = jax.grad(lambda z: jnp.sum(entropy_from_logits(z)))(masked)
    assert np.all(np.isfinite(g))


def test_explained_variance():
    target = jnp.array([1.0, 2.0, 3.0, 4.0, 77.0])
    pred = jnp.array([1.0, 2.0, 3.0, 5.0, NAN])
    m = jnp.array([1, 1, 1, 1, 0])
    # Var[diff] = 0.1875, Var[target] = 1.25 -> 1 - 0.15
    np.testing.assert_allclose(explained_variance(pred, target, m), 0.85, rtol=1e-6)
    np.testing.assert_allclose(explained_variance(target, target, m), 1.0)
    assert float(explained_variance(pred, jnp.ones(5), m)) == 0.0


def test_kl_estimators_hand_values():
    logp = jnp.array([-1.0, -2.0, -0.5])
    ref = jnp.array([-1.5, -1.0, -0.5])  # log_ratio = [0.5, -1, 0]
    np.testing.assert_allclose(KL_ESTIMATORS.get("k1")(logp, ref), [0.5, -1.0, 0.0])
    np.testing.assert_allclose(KL_ESTIMATORS.get("k2")(logp, ref), [0.125, 0.5, 0.0])
    np.testing.assert_allclose(KL_ESTIMATORS.get("k3")(logp, ref), [0.10653066, 0.71828183, 0.0],
                               rtol=1e-6)


def test_k3_nonnegative_and_k_estimators_unbiased_ordering():
    k1, k2 = jax.random.split(jax.random.PRNGKey(1))
    logp = 3.0 * jax.random.normal(k1, (64, 32))
    ref = 3.0 * jax.random.normal(k2, (64, 32))
    assert float(jnp.min(KL_ESTIMATORS.get("k3")(logp, ref))) >= 0.0
    assert float(jnp.min(KL_ESTIMATORS.get("k2")(logp, ref))) >= 0.0


def test_kl_estimate_zero_on_padding_and_unknown_name():
    logp = jnp.array([[0.0, jnp.inf]])
    ref = jnp.array([[1.0, NAN]])
    m = jnp.array([[1, 0]])
    np.testing.assert_allclose(kl_estimate(logp, ref, m, "k3"), [[math.e - 2, 0.0]], rtol=1e-6)
    with pytest.raises(KeyError, match="did you mean 'k3'"):
        kl_estimate(logp, ref, m, "k33")
