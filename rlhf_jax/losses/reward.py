"""Reward-model losses: Bradley–Terry on pairwise comparisons, K-way rankings, normalisation.

Christiano et al. 2017 (ties as a uniform target), Ziegler et al. 2019 (normalisation to mean 0,
std 1), Stiennon et al. 2020 (reference responses score 0), Ouyang et al. 2022 / InstructGPT
(all K(K−1)/2 pairs of a ranking, weighted 1/C(K,2) so each prompt counts once).
"""
from __future__ import annotations

from itertools import combinations

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.losses.common import masked_mean
from rlhf_jax.losses.registry import LOSSES, Registry

Array = jax.Array


@LOSSES.register("bradley_terry")
def bradley_terry_loss(r_a: Array, r_b: Array, mu: Array, weight: Array | None = None,
                       margin=0.0, center_coef=0.0):
    """Pairwise Bradley–Terry cross-entropy. Returns ``(loss, metrics)``.

    Per pair (d = r_a − r_b, μ = P(a preferred), μ ∈ {1, ½, 0}):
        ℓ = −[μ·log σ(d − m) + (1 − μ)·log σ(−d − m)]
    where the margin m (scalar or [N]) is applied only to decisive pairs (μ ∈ {0, 1}); ties (μ = ½
    or any 0 < μ < 1) use m = 0. Loss = Σ w·ℓ / Σ w + c·Σ w·(r_a + r_b)² / Σ w (weights default 1;
    with equal weights the centering term is c·mean((r_a + r_b)²)). Pairs with w = 0 are padding.

    Metrics (over pairs with w > 0): ``reward/loss``, ``reward/bt_loss`` (without centering),
    ``reward/accuracy`` and ``reward/margin`` (r_a − r_b signed toward the preferred response) over
    decisive pairs only, ``reward/n_ties``, ``reward/mean``.
    """
    r_a = r_a.astype(jnp.float32)
    r_b = r_b.astype(jnp.float32)
    mu = jnp.broadcast_to(jnp.asarray(mu, jnp.float32), r_a.shape)
    w = jnp.ones_like(r_a) if weight is None else jnp.broadcast_to(
        jnp.asarray(weight, jnp.float32), r_a.shape)
    decisive = (mu == 0.0) | (mu == 1.0)
    m = jnp.where(decisive, jnp.asarray(margin, jnp.float32), 0.0)
    d = r_a - r_b
    per_pair = -(mu * jax.nn.log_sigmoid(d - m) + (1.0 - mu) * jax.nn.log_sigmoid(-d - m))
    bt = masked_mean(per_pair, w)
    center = masked_mean(jnp.square(r_a + r_b), w)
    loss = bt + jnp.asarray(center_coef, jnp.float32) * center

    valid = w > 0
    dec = (decisive & valid).astype(jnp.float32)
    signed = jnp.where(mu == 1.0, d, -d)
    metrics = {
        "reward/loss": loss,
        "reward/bt_loss": bt,
        "reward/accuracy": masked_mean((signed > 0).astype(jnp.float32), dec),
        "reward/margin": masked_mean(signed, dec),
        "reward/n_ties": jnp.sum((~decisive & valid).astype(jnp.float32)),
        "reward/mean": masked_mean(0.5 * (r_a + r_b), valid),
    }
    return loss, jax.lax.stop_gradient(metrics)


def ranking_pairs(k: int):
    """All C(k, 2) pairs of a ranking of k responses: ``(idx_a, idx_b, weight)`` numpy arrays.

    Indices are *rank positions* (0 = best): idx_a[p] < idx_b[p], so a is ranked above b.
    Every weight is 1/C(k, 2), so the weights of one prompt sum to 1.
    """
    if k < 2:
        raise ValueError(f"a ranking needs k >= 2 responses, got {k}")
    pairs = np.array(list(combinations(range(k), 2)), dtype=np.int32)
    n = len(pairs)
    return pairs[:, 0], pairs[:, 1], np.full((n,), 1.0 / n, dtype=np.float32)


@LOSSES.register("kway_bradley_terry")
def kway_bradley_terry_loss(rewards: Array, order: Array, margin=0.0, center_coef=0.0,
                            prompt_weight: Array | None = None):
    """InstructGPT K-way ranking loss: Bradley–Terry (μ = 1) over all C(K,2) pairs per prompt.

    rewards [B, K] (one forward per response); order [B, K] indices of the responses from best to
    worst. Each pair is weighted 1/C(K,2) (times ``prompt_weight`` [B], default 1), so the loss is
    (1/B)·Σ_prompts (1/C(K,2))·Σ_pairs ℓ — each prompt counts once. Returns ``(loss, metrics)``.
    """
    b, k = rewards.shape
    ia, ib, w = ranking_pairs(k)
    ranked = jnp.take_along_axis(rewards, order.astype(jnp.int32), axis=1)
    r_a = ranked[:, ia].reshape(-1)
    r_b = ranked[:, ib].reshape(-1)
    weight = jnp.broadcast_to(jnp.asarray(w), (b, len(w)))
    if prompt_weight is not None:
        weight = weight * jnp.asarray(prompt_weight, jnp.float32)[:, None]
    return bradley_terry_loss(r_a, r_b, jnp.ones_like(r_a), weight.reshape(-1),
                              margin=margin, center_coef=center_coef)


# --- normalisation of a trained reward model -------------------------------------------------

NORMALIZATIONS: Registry = Registry("reward normalization")


@NORMALIZATIONS.register("mean_std")
def _fit_mean_std(scores, reference_scores=None, eps=1e-8):
    s = jnp.asarray(scores, jnp.float32)
    mean, std = jnp.mean(s), jnp.std(s)
    gain = 1.0 / (std + eps)
    return gain, -mean * gain


@NORMALIZATIONS.register("reference_zero")
def _fit_reference_zero(scores=None, reference_scores=None, eps=1e-8):
    if reference_scores is None:
        raise ValueError("mode 'reference_zero' needs reference_scores")
    return jnp.asarray(1.0, jnp.float32), -jnp.mean(jnp.asarray(reference_scores, jnp.float32))


def fit_normalization(scores, mode: str = "mean_std", reference_scores=None, eps=1e-8):
    """Gain and bias so that ``gain·s + bias`` is normalised. Returns ``(gain, bias)`` scalars.

    'mean_std' (Ziegler et al. 2019): gain = 1/std, bias = −mean/std over ``scores`` (e.g. samples
    of the initial policy) -> mean 0, std 1 (population std). 'reference_zero' (Stiennon et al.
    2020): gain = 1, bias = −mean(reference_scores) -> reference responses score 0 on average.
    """
    return NORMALIZATIONS.get(mode)(scores, reference_scores=reference_scores, eps=eps)


def apply_normalization(scores: Array, gain, bias) -> Array:
    """gain·scores + bias."""
    return gain * scores + bias
