"""A composable policy-gradient objective: importance ratio × clipping × loss aggregation.

Every on-policy algorithm of the registry (PPO, A2C, REINFORCE, RLOO, GRPO, Dr. GRPO, DAPO, GSPO,
CISPO, ReMax) minimises one per-token loss ``l_t`` built from three orthogonal choices, each a pure
function registered by name (RLHF_NOTES, "The 2025 policy-gradient variants"). With
``Δ_t = log π_θ(y_t) − log π_old(y_t)`` on valid tokens (m_t = 1) and the advantage ``A_t``:

**Ratio** (``RATIOS``)
  * ``token``: ρ_t = exp(Δ_t)                                    (PPO, GRPO, DAPO, CISPO)
  * ``sequence``: ρ_t = s_i = exp(Σ_t m_t·Δ_t / Σ_t m_t)  for every token of response i (GSPO,
    Zheng et al. 2025: the length-normalised sequence log-ratio)
  * ``none``: no ratio, the plain score-function loss l_t = −A_t·log π_θ(y_t) (A2C, Gopher; vanilla
    REINFORCE); it has nothing to clip, so the algorithms' configs require ``clip: none`` with it.

**Clip** (``CLIPS``), ε_l = ``clip_eps``, ε_h = ``clip_eps_high``
  * ``ppo``: l = max(−ρ·A, −clip(ρ, 1 − ε_l, 1 + ε_h)·A) (symmetric when ε_h = ε_l; "clip-higher"
    when ε_h > ε_l, DAPO, Yu et al. 2025)
  * ``dual``: the ``ppo`` loss, bounded above by −c·A where A < 0 (dual-clip, Ye et al. 2020)
  * ``cispo``: l = −sg(min(ρ, 1 + ε_h))·A·log π_θ (MiniMax-M1, 2025): the clipped weight is a
    constant, so every token keeps its gradient
  * ``none``: l = −ρ·A (importance-weighted, unclipped)

**Aggregation** (``AGGREGATIONS``, verl's names) of l [B, T] with mask m
  * ``token_mean``: Σ_{i,t} l·m / Σ_{i,t} m
  * ``seq_mean_token_mean``: mean_i (Σ_t l·m / Σ_t m)       (GRPO's original)
  * ``seq_mean_token_sum``: mean_i Σ_t l·m                   (REINFORCE: −(R − b)·Σ_t log π)
  * ``seq_mean_token_sum_norm``: Σ_{i,t} l·m / (n·T), T the response buffer length (Dr. GRPO)
  where "mean_i" and n run over the responses with at least one valid token, so a response masked
  out entirely (padding, DAPO's zero-variance groups) contributes nothing and dilutes nothing.

All masked entries may hold garbage: they are removed with ``jnp.where`` before any arithmetic.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from rlhf_jax.losses.common import kl_estimate, masked_mean
from rlhf_jax.losses.registry import Registry

Array = jax.Array

RATIOS: Registry = Registry("importance ratio")
CLIPS: Registry = Registry("clip mode")
AGGREGATIONS: Registry = Registry("loss aggregation")


def _ok(mask: Array, shape) -> Array:
    return jnp.broadcast_to(mask, shape) != 0


# --- ratios: (logp, old_logp, mask) -> ρ [B, T] (differentiable in logp), or None -------------


@RATIOS.register("token")
def token_ratio(logp: Array, old_logp: Array, mask: Array) -> Array:
    """ρ_t = exp(log π_θ(y_t) − log π_old(y_t)); 1 on padding."""
    ok = _ok(mask, logp.shape)
    return jnp.exp(jnp.where(ok, logp - jax.lax.stop_gradient(old_logp), 0.0))


@RATIOS.register("sequence")
def sequence_ratio(logp: Array, old_logp: Array, mask: Array) -> Array:
    """GSPO: s_i = exp(mean_t Δ_t over the valid tokens of row i), broadcast over the row."""
    ok = _ok(mask, logp.shape)
    delta = jnp.where(ok, logp - jax.lax.stop_gradient(old_logp), 0.0)
    n = jnp.maximum(ok.sum(-1, keepdims=True), 1).astype(jnp.float32)
    return jnp.broadcast_to(jnp.exp(delta.sum(-1, keepdims=True) / n), logp.shape)


@RATIOS.register("none")
def no_ratio(logp: Array, old_logp: Array, mask: Array) -> None:
    """No importance ratio: the score-function loss −A·log π (on-policy only)."""
    return None


# --- clip modes: (ratio, logp, adv, hp) -> (per-token loss [B, T], clip active [B, T]) ----------
# "active" is 1.0 where the clip changes the token's gradient (the clipfrac diagnostic).


def _eps(hp):
    lo = jnp.asarray(hp["clip_eps"], jnp.float32)
    return lo, jnp.asarray(hp.get("clip_eps_high", lo), jnp.float32)


def _ppo_active(ratio, adv, lo, hi):
    return ((adv > 0) & (ratio > 1.0 + hi)) | ((adv < 0) & (ratio < 1.0 - lo))


@CLIPS.register("ppo")
def ppo_clip(ratio: Array, logp: Array, adv: Array, hp):
    """max(−ρA, −clip(ρ, 1 − ε_low, 1 + ε_high)·A)."""
    lo, hi = _eps(hp)
    loss = jnp.maximum(-adv * ratio, -adv * jnp.clip(ratio, 1.0 - lo, 1.0 + hi))
    return loss, _ppo_active(ratio, adv, lo, hi).astype(jnp.float32)


@CLIPS.register("dual")
def dual_clip(ratio: Array, logp: Array, adv: Array, hp):
    """Dual-clip PPO: for A < 0 the loss is additionally capped at −c·A (c > 1, ``dual_clip_c``)."""
    c = jnp.asarray(hp["dual_clip_c"], jnp.float32)
    lo, hi = _eps(hp)
    base, _ = ppo_clip(ratio, logp, adv, hp)
    active = _ppo_active(ratio, adv, lo, hi) | ((adv < 0) & (ratio > c))
    return jnp.where(adv < 0, jnp.minimum(base, -c * adv), base), active.astype(jnp.float32)


@CLIPS.register("cispo")
def cispo_clip(ratio: Array, logp: Array, adv: Array, hp):
    """CISPO: −sg(min(ρ, 1 + ε_high))·A·log π_θ (the clipped weight carries no gradient)."""
    _, hi = _eps(hp)
    weight = jax.lax.stop_gradient(jnp.minimum(ratio, 1.0 + hi))
    return -weight * adv * logp, (ratio > 1.0 + hi).astype(jnp.float32)


@CLIPS.register("none")
def no_clip(ratio: Array, logp: Array, adv: Array, hp):
    """−ρ·A, unclipped."""
    return -adv * ratio, jnp.zeros_like(ratio)


# --- aggregations: (loss [B, T], mask) -> scalar -----------------------------------------------


def _row_stats(x: Array, mask: Array):
    ok = _ok(mask, x.shape)
    s = jnp.where(ok, x, 0.0).sum(-1)
    n = ok.sum(-1).astype(jnp.float32)
    return s, n, (n > 0).astype(jnp.float32)


def _mean_over_rows(per_row: Array, has: Array) -> Array:
    count = has.sum()
    return jnp.where(count > 0, (per_row * has).sum() / jnp.maximum(count, 1.0), 0.0)


@AGGREGATIONS.register("token_mean")
def token_mean(x: Array, mask: Array) -> Array:
    """Σ x·m / Σ m over the whole batch (0 if nothing is valid)."""
    return masked_mean(x, mask)


@AGGREGATIONS.register("seq_mean_token_mean")
def seq_mean_token_mean(x: Array, mask: Array) -> Array:
    """mean over non-empty rows of (Σ_t x·m / Σ_t m)."""
    s, n, has = _row_stats(x, mask)
    return _mean_over_rows(s / jnp.maximum(n, 1.0), has)


@AGGREGATIONS.register("seq_mean_token_sum")
def seq_mean_token_sum(x: Array, mask: Array) -> Array:
    """mean over non-empty rows of Σ_t x·m."""
    s, _, has = _row_stats(x, mask)
    return _mean_over_rows(s, has)


@AGGREGATIONS.register("seq_mean_token_sum_norm")
def seq_mean_token_sum_norm(x: Array, mask: Array) -> Array:
    """Σ_{i,t} x·m / (n_rows · T): a divisor that does not depend on the response lengths."""
    s, _, has = _row_stats(x, mask)
    return _mean_over_rows(s, has) / x.shape[-1]


# --- the objective ------------------------------------------------------------------------------


def policy_gradient_loss(logp: Array, old_logp: Array, advantages: Array, mask: Array, hp, *,
                         ratio: str = "token", clip: str = "ppo", aggregation: str = "token_mean"):
    """The policy loss ``AGG(l_t)`` for the chosen ratio / clip / aggregation. Returns (loss, metrics).

    logp [B, T] (differentiable), old_logp [B, T] and advantages [B, T] (treated as constants),
    mask [B, T]; ``hp`` holds ``clip_eps`` (ε_low), optionally ``clip_eps_high`` (default ε_low) and
    ``dual_clip_c`` (arrays, so they can change without recompiling).
    Metrics over valid tokens: ``policy/loss``, ``policy/approxkl`` (½·mean Δ²), ``policy/clipfrac``
    (fraction of tokens whose clipped term is the active one: for ``cispo`` where the weight is
    capped), ``policy/ratio_mean``, ``policy/adv_mean``.
    """
    ok = _ok(mask, logp.shape)
    logp_c = jnp.where(ok, logp, 0.0)
    adv = jnp.where(ok, jax.lax.stop_gradient(advantages), 0.0)
    delta = jnp.where(ok, logp - jax.lax.stop_gradient(old_logp), 0.0)
    rho = RATIOS.get(ratio)(logp, old_logp, mask)
    if rho is None:
        per_token = -adv * logp_c
        rho_sg, clipped = jnp.ones_like(logp_c), jnp.zeros_like(logp_c)
    else:
        rho = jnp.where(ok, rho, 1.0)
        per_token, clipped = CLIPS.get(clip)(rho, logp_c, adv, hp)
        rho_sg = jax.lax.stop_gradient(rho)
        clipped = jax.lax.stop_gradient(clipped)
    loss = AGGREGATIONS.get(aggregation)(per_token, mask)
    metrics = {
        "policy/loss": loss,
        "policy/approxkl": 0.5 * masked_mean(jnp.square(delta), mask),
        "policy/clipfrac": masked_mean(clipped, mask),
        "policy/ratio_mean": masked_mean(rho_sg, mask),
        "policy/adv_mean": masked_mean(adv, mask),
    }
    return loss, jax.lax.stop_gradient(metrics)


def kl_loss_term(logp: Array, ref_logp: Array, mask: Array, estimator: str = "k3",
                 aggregation: str = "token_mean") -> Array:
    """KL to the reference as a loss term (GRPO: β·k3), aggregated like the policy loss.

    Differentiable in ``logp``; ``ref_logp`` is a constant. k1 = Δ, k2 = ½Δ², k3 = e^{−Δ} − 1 + Δ
    with Δ = log π_θ − log π_ref per token (0 on padding).
    """
    per_token = kl_estimate(logp, jax.lax.stop_gradient(ref_logp), mask, estimator)
    return AGGREGATIONS.get(aggregation)(per_token, mask)
