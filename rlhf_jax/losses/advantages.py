"""Advantage estimators: GAE with a critic (token level) and critic-free group baselines
(sequence level: REINFORCE with a batch-mean or moving-average baseline, RLOO, GRPO, Dr. GRPO,
ReMax), and DAPO's zero-variance group mask.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from rlhf_jax.losses.registry import ADVANTAGE_ESTIMATORS, Registry

Array = jax.Array


@ADVANTAGE_ESTIMATORS.register("gae")
def gae(rewards: Array, values: Array, mask: Array, gamma, lam):
    """Generalised advantage estimation (Schulman et al. 2016), reverse ``lax.scan`` over time.

    With m the response mask (1 on valid tokens):
        δ_t = R_t + γ·V_{t+1}·m_{t+1} − V_t
        A_t = m_t·(δ_t + γλ·m_{t+1}·A_{t+1}),      returns G_t = m_t·(A_t + V_t)
    so V after the last valid token is 0 (the episode ends there) and padded positions get A = G = 0
    whatever garbage R or V hold there. A hole in a general mask ends the episode at the hole.
    rewards, values, mask: [B, T]; gamma, lam: floats or traced scalars. Returns (advantages,
    returns), float32 [B, T]. Stop gradients yourself if ``values`` carry them (callers usually do).
    """
    ok = jnp.broadcast_to(mask, rewards.shape) != 0
    m = ok.astype(jnp.float32)
    r = jnp.where(ok, rewards, 0.0).astype(jnp.float32)
    v = jnp.where(ok, values, 0.0).astype(jnp.float32)
    gamma = jnp.asarray(gamma, jnp.float32)
    lam = jnp.asarray(lam, jnp.float32)

    m_next = jnp.concatenate([m[:, 1:], jnp.zeros_like(m[:, :1])], axis=1)
    v_next = jnp.concatenate([v[:, 1:], jnp.zeros_like(v[:, :1])], axis=1)
    delta = r + gamma * v_next * m_next - v

    def step(a_next, xs):
        delta_t, m_t, m_next_t = xs
        a_t = m_t * (delta_t + gamma * lam * m_next_t * a_next)
        return a_t, a_t

    xs = (delta.T, m.T, m_next.T)  # scan over time: [T, B]
    _, adv = jax.lax.scan(step, jnp.zeros_like(delta[:, 0]), xs, reverse=True)
    adv = adv.T
    return adv, m * (adv + v)


# --- critic-free, sequence-level estimators (one scalar score per response) -------------------


def _groups(scores: Array, group_size: int) -> Array:
    """[B] -> [B // k, k]: rows are grouped as consecutive blocks of k samples of one prompt."""
    b = scores.shape[0]
    if group_size < 1 or b % group_size != 0:
        raise ValueError(f"batch size {b} is not a multiple of group_size {group_size}")
    return scores.astype(jnp.float32).reshape(b // group_size, group_size)


@ADVANTAGE_ESTIMATORS.register("rloo")
def rloo_advantages(scores: Array, group_size: int) -> Array:
    """RLOO (Kool et al. 2019; Ahmadian et al. 2024): A_i = R_i − mean_{j≠i, same prompt} R_j."""
    if group_size < 2:
        raise ValueError("rloo needs group_size >= 2")
    g = _groups(scores, group_size)
    baseline = (jnp.sum(g, axis=1, keepdims=True) - g) / (group_size - 1)
    return (g - baseline).reshape(-1)


@ADVANTAGE_ESTIMATORS.register("grpo")
def grpo_advantages(scores: Array, group_size: int, eps=1e-4) -> Array:
    """GRPO (Shao et al. 2024): A_i = (R_i − mean_group) / (std_group + eps).

    std is the sample (k − 1) standard deviation, as in the reference implementation (TRL).
    """
    if group_size < 2:
        raise ValueError("grpo needs group_size >= 2")
    g = _groups(scores, group_size)
    mean = jnp.mean(g, axis=1, keepdims=True)
    std = jnp.std(g, axis=1, keepdims=True, ddof=1)
    return ((g - mean) / (std + eps)).reshape(-1)


@ADVANTAGE_ESTIMATORS.register("dr_grpo")
def dr_grpo_advantages(scores: Array, group_size: int) -> Array:
    """Dr. GRPO (Liu et al. 2025): A_i = R_i − mean_group (no std division)."""
    g = _groups(scores, group_size)
    return (g - jnp.mean(g, axis=1, keepdims=True)).reshape(-1)


@ADVANTAGE_ESTIMATORS.register("reinforce")
def reinforce_advantages(scores: Array, baseline: Array | None = None) -> Array:
    """REINFORCE with a baseline (Williams 1992): A = R − b, b = batch mean unless given.

    ``baseline`` may be a scalar or [B] (ReMax: the reward of the greedy response per prompt).
    """
    s = scores.astype(jnp.float32)
    b = jnp.mean(s) if baseline is None else jnp.asarray(baseline, jnp.float32)
    return s - b


@ADVANTAGE_ESTIMATORS.register("remax")
def remax_advantages(scores: Array, greedy_scores: Array) -> Array:
    """ReMax (Li et al. 2023): A_i = R_i − R(x_i, ŷ_greedy), the score of the greedy response to the
    same prompt as a per-prompt baseline (one extra greedy rollout per prompt)."""
    return scores.astype(jnp.float32) - jnp.asarray(greedy_scores, jnp.float32)


def moving_average_baseline(ema: Array, count: Array, batch_mean: Array, decay):
    """Baseline for REINFORCE from earlier batches only: the bias-corrected exponential moving
    average ``b = ema / (1 − decay^count)`` of past batch-mean returns (the batch mean itself while
    ``count`` = 0). Returns ``(b, new_ema, new_count)`` with ``new_ema = decay·ema + (1 − decay)·batch_mean``.
    """
    decay = jnp.asarray(decay, jnp.float32)
    count = jnp.asarray(count, jnp.float32)
    debias = 1.0 - decay ** count
    b = jnp.where(count > 0, ema / jnp.where(count > 0, debias, 1.0), batch_mean)
    return b, decay * ema + (1.0 - decay) * batch_mean, count + 1.0


def zero_variance_groups(scores: Array, group_size: int, tol=1e-6) -> Array:
    """[B] float32: 1 for every member of a group whose k scores are all equal (max − min ≤ tol).

    Such a group has A = 0 for every member under any group baseline and carries no signal (DAPO's
    dynamic sampling masks these out of the loss instead of resampling).
    """
    g = _groups(scores, group_size)
    flat = (jnp.max(g, axis=1) - jnp.min(g, axis=1)) <= tol
    return jnp.repeat(flat.astype(jnp.float32), group_size)


GROUP_MODES: Registry = Registry("group baseline mode")
GROUP_MODES.register("rloo")(lambda s, k, baseline, eps: rloo_advantages(s, k))
GROUP_MODES.register("grpo")(lambda s, k, baseline, eps: grpo_advantages(s, k, eps=eps))
GROUP_MODES.register("dr_grpo")(lambda s, k, baseline, eps: dr_grpo_advantages(s, k))
GROUP_MODES.register("reinforce")(lambda s, k, baseline, eps: reinforce_advantages(s, baseline))


def group_baseline(scores: Array, group_size: int, mode: str = "rloo", baseline=None,
                   eps=1e-4) -> Array:
    """Sequence-level advantages A = R − b for ``mode`` in 'rloo', 'grpo', 'dr_grpo', 'reinforce'.

    scores [B] with rows grouped as consecutive blocks of ``group_size`` samples per prompt
    (ignored by 'reinforce', which uses ``baseline`` or the batch mean). Returns [B] float32;
    broadcast over the response tokens with ``A[:, None] * mask``.
    """
    return GROUP_MODES.get(mode)(scores, group_size, baseline, eps)
