"""PPO for language models (Schulman et al. 2017; Ziegler et al. 2019; Stiennon et al. 2020;
Ouyang et al. 2022) and A2C (Gopher, Rae et al. 2021): KL-penalised per-token rewards, the clipped
policy surrogate and the clipped value loss. One episode = one response, reward at the end.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from rlhf_jax.losses.common import kl_estimate, masked_mean
from rlhf_jax.losses.pg import policy_gradient_loss
from rlhf_jax.losses.registry import LOSSES

Array = jax.Array


def last_valid_index(mask: Array) -> Array:
    """Index of the last nonzero entry of each row of mask [B, T] (−1 for an empty row).

    Equals sum(mask) − 1 for masks contiguous from position 0 (1…1 0…0).
    """
    t = mask.shape[-1]
    ok = mask != 0
    pos = jnp.where(ok, jnp.arange(t), -1)
    return jnp.max(pos, axis=-1)


def kl_penalized_rewards(scores: Array, logp: Array, ref_logp: Array, mask: Array, beta,
                         estimator="k1"):
    """Per-token RLHF reward R_t = −β·kl_t (+ r_φ(x, y) at the last valid token).

    scores [B] (reward-model score per response), logp / ref_logp [B, T] (policy and reference
    log-probs of the sampled tokens, from the same temperature-scaled logits), mask [B, T], beta a
    float or traced scalar, ``estimator`` a KL_ESTIMATORS name ('k1', 'k2', 'k3') or callable.
    The score goes to the last valid token of each row (sum(mask) − 1 for contiguous masks); rows
    with an empty mask get nothing. Returns ``(rewards [B, T], kl [B, T])``, both 0 on padding.
    """
    kl = kl_estimate(logp, ref_logp, mask, estimator)
    rewards = -jnp.asarray(beta, jnp.float32) * kl
    last = last_valid_index(mask)
    at_last = (jnp.arange(mask.shape[-1])[None, :] == last[:, None]).astype(jnp.float32)
    rewards = rewards + at_last * scores.astype(jnp.float32)[:, None]
    return rewards, kl


@LOSSES.register("ppo_policy")
def ppo_policy_loss(logp: Array, old_logp: Array, advantages: Array, mask: Array, clip_eps):
    """Clipped surrogate: ρ = exp(logp − old_logp),
        L = masked_mean(max(−ρ·A, −clip(ρ, 1 − ε, 1 + ε)·A))
    over all valid tokens: the ``token`` ratio, ``ppo`` clip and ``token_mean`` aggregation of
    ``losses.pg.policy_gradient_loss`` (same metrics). ``old_logp`` and ``advantages`` are constants.
    """
    return policy_gradient_loss(logp, old_logp, advantages, mask, {"clip_eps": clip_eps},
                                ratio="token", clip="ppo", aggregation="token_mean")


@LOSSES.register("ppo_value")
def ppo_value_loss(values: Array, old_values: Array, returns: Array, mask: Array, clip_eps_v):
    """Clipped value loss: V_clip = V_old + clip(V − V_old, −ε_v, ε_v),
        L = ½·masked_mean(max((V − G)², (V_clip − G)²)).
    ``old_values`` and ``returns`` are treated as constants. Metrics: ``val/loss``,
    ``val/clipfrac`` (fraction where the clipped error is the larger), ``val/vpred`` (mean V),
    ``val/error`` (mean (V − G)²).
    """
    ok = jnp.broadcast_to(mask, values.shape) != 0
    v = jnp.where(ok, values, 0.0)
    v_old = jnp.where(ok, jax.lax.stop_gradient(old_values), 0.0)
    g = jnp.where(ok, jax.lax.stop_gradient(returns), 0.0)
    eps = jnp.asarray(clip_eps_v, jnp.float32)
    v_clip = v_old + jnp.clip(v - v_old, -eps, eps)
    err = jnp.square(v - g)
    err_clip = jnp.square(v_clip - g)
    loss = 0.5 * masked_mean(jnp.maximum(err, err_clip), mask)
    metrics = {
        "val/loss": loss,
        "val/clipfrac": masked_mean((err_clip > err).astype(jnp.float32), mask),
        "val/vpred": masked_mean(v, mask),
        "val/error": masked_mean(err, mask),
    }
    return loss, jax.lax.stop_gradient(metrics)


@LOSSES.register("a2c_policy")
def a2c_policy_loss(logp: Array, advantages: Array, mask: Array):
    """A2C policy loss (Gopher): L = −masked_mean(logp·A), no ratio, A treated as a constant
    (``policy_gradient_loss`` with ratio ``none``). Returns ``(loss, metrics)``."""
    return policy_gradient_loss(logp, logp, advantages, mask, {"clip_eps": 0.0}, ratio="none",
                                clip="none", aggregation="token_mean")
