"""Array-level building blocks shared by every loss: token log-probs, masked statistics,
whitening, entropy, explained variance and the per-token KL estimators k1/k2/k3.

Conventions: masks are 0/1 (bool, int or float) and broadcastable to the data; values at masked
positions may be garbage (even NaN/inf) and never leak into results or gradients, because they are
removed with ``jnp.where`` (not multiplied by 0). Masked means are (sum / count) over *all* valid
entries, never means of per-row means.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from rlhf_jax.losses.registry import KL_ESTIMATORS

Array = jax.Array


def token_logprobs(logits: Array, tokens: Array, temperature=1.0) -> Array:
    """log π(tokens_t | ·) = log_softmax(logits / temperature)[tokens], float32.

    logits [B, T, V], tokens [B, T] -> [B, T]. ``temperature`` may be a traced scalar; use the same
    temperature as the sampler, or the ratio/KL is inflated (RLHF notes).
    """
    z = logits.astype(jnp.float32) / jnp.asarray(temperature, jnp.float32)
    logp = jax.nn.log_softmax(z, axis=-1)
    return jnp.take_along_axis(logp, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]


def _clean(x: Array, mask: Array, fill=0.0) -> Array:
    """x with masked entries replaced by ``fill`` (so garbage cannot reach values or gradients)."""
    return jnp.where(jnp.broadcast_to(mask, jnp.shape(x)) != 0, x, fill)


def _valid(x: Array, mask: Array) -> Array:
    """x·mask with masked entries forced to exactly 0 (NaN/inf garbage included)."""
    m = jnp.broadcast_to(mask, jnp.shape(x)).astype(jnp.result_type(x, jnp.float32))
    return _clean(x, mask) * m


def masked_sum(x: Array, mask: Array, axis=None) -> Array:
    """Σ x·mask over ``axis`` (all axes by default)."""
    return jnp.sum(_valid(x, mask), axis=axis)


def masked_count(mask: Array, axis=None, shape=None) -> Array:
    """Σ mask over ``axis`` (float32); ``shape`` broadcasts the mask first."""
    m = jnp.asarray(mask).astype(jnp.float32)
    if shape is not None:
        m = jnp.broadcast_to(m, shape)
    return jnp.sum(m, axis=axis)


def _safe_div(num: Array, den: Array) -> Array:
    """num / den, 0 where den == 0 (gradient-safe)."""
    ok = den != 0
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)


def masked_mean(x: Array, mask: Array, axis=None) -> Array:
    """Σ(x·mask) / Σ mask over ``axis``; 0 where the count is 0."""
    return _safe_div(masked_sum(x, mask, axis), masked_count(mask, axis, jnp.shape(x)))


def masked_var(x: Array, mask: Array, unbiased: bool = True) -> Array:
    """Variance of the valid entries of x (all axes). ``unbiased`` uses count − 1 (0 if count ≤ 1)."""
    x = _clean(x, mask)
    mean = masked_mean(x, mask)
    sq = masked_sum(jnp.square(x - mean), mask)
    count = masked_count(mask, None, jnp.shape(x))
    return _safe_div(sq, count - 1.0 if unbiased else count)


def masked_whiten(x: Array, mask: Array, shift_mean: bool = True, eps=1e-8,
                  unbiased: bool = False) -> Array:
    """(x − mean) / sqrt(var + eps) with mean/var over all valid entries; padded positions -> 0.

    With ``shift_mean=False`` the mean is added back (scale only, as for rewards). Variance is the
    population one by default (``unbiased=True`` for the count − 1 version used by TRL).
    """
    x = _clean(x, mask)
    mean = masked_mean(x, mask)
    var = masked_var(x, mask, unbiased=unbiased)
    xc = x - mean
    w = xc * jax.lax.rsqrt(var + eps)
    if not shift_mean:
        w = w + mean
    return _valid(w, mask)


def entropy_from_logits(logits: Array, temperature=1.0) -> Array:
    """H_t = −Σ_v p_v log p_v with p = softmax(logits / temperature). [B, T, V] -> [B, T] float32.

    Safe with −inf logits (masked vocabulary): such terms contribute 0 and no NaN gradients.
    """
    z = logits.astype(jnp.float32) / jnp.asarray(temperature, jnp.float32)
    logp = jax.nn.log_softmax(z, axis=-1)
    p = jnp.exp(logp)
    logp = jnp.where(p > 0, logp, 0.0)
    return -jnp.sum(p * logp, axis=-1)


def explained_variance(pred: Array, target: Array, mask: Array) -> Array:
    """1 − Var[target − pred] / Var[target] over valid entries (0 when Var[target] = 0).

    A critic diagnostic (cleanrl ``val/vf_explained_var``); gradient stopped.
    """
    pred = _clean(jax.lax.stop_gradient(pred), mask)
    target = _clean(jax.lax.stop_gradient(target), mask)
    var_y = masked_var(target, mask, unbiased=False)
    var_d = masked_var(target - pred, mask, unbiased=False)
    return jnp.where(var_y > 0, 1.0 - _safe_div(var_d, var_y), 0.0)


# --- per-token KL estimators (Schulman, "Approximating KL divergence"), log_ratio = logp − ref ---


@KL_ESTIMATORS.register("k1")
def kl_k1(logp: Array, ref_logp: Array) -> Array:
    """k1 = log π/π_ref: unbiased for KL(π‖π_ref) under samples of π, high variance, can be < 0."""
    return logp - ref_logp


@KL_ESTIMATORS.register("k2")
def kl_k2(logp: Array, ref_logp: Array) -> Array:
    """k2 = ½·(log π/π_ref)²: biased, low variance, ≥ 0."""
    return 0.5 * jnp.square(logp - ref_logp)


@KL_ESTIMATORS.register("k3")
def kl_k3(logp: Array, ref_logp: Array) -> Array:
    """k3 = (π_ref/π − 1) − log π_ref/π = (exp(−log_ratio) − 1) + log_ratio: unbiased, ≥ 0."""
    log_ratio = logp - ref_logp
    return jnp.expm1(-log_ratio) + log_ratio


def kl_estimate(logp: Array, ref_logp: Array, mask: Array, estimator="k1") -> Array:
    """Per-token KL from a registered estimator name (or a callable), 0 on padding."""
    fn = estimator if callable(estimator) else KL_ESTIMATORS.get(estimator)
    return _clean(fn(_clean(logp, mask), _clean(ref_logp, mask)), mask)
