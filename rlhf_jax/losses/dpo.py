"""Offline preference losses: DPO (Rafailov et al. 2023), IPO (Azar et al. 2023), cDPO (label
smoothing) and SimPO (Meng et al. 2024), as one loss over implicit rewards.

Every member scores a response y to a prompt x with an *implicit reward*

    DPO / IPO / cDPO:  r(y) = β·(log π_θ(y|x) − log π_ref(y|x))
    SimPO:             r(y) = β·log π_θ(y|x) / |y|          (reference-free, length-normalised)

where log π(y|x) is the masked sum of the response's token logprobs. A comparison of responses a
and b with target μ = P(a preferred) (1: a won, ½: a tie, 0: b won) gives d = r(a) − r(b) and

    L = μ·ℓ(d) + (1 − μ)·ℓ(−d)

with ℓ the per-pair loss of the preferred-minus-rejected difference x:

    sigmoid (DPO, cDPO, SimPO):  ℓ(x) = −(1 − ε)·log σ(x − γ) − ε·log σ(−(x − γ))
    ipo:                         ℓ(x) = (x/β − 1/(2β))²   (x/β is the raw log-ratio difference)

ε is cDPO's label smoothing (the label is flipped with probability ε), γ SimPO's target margin
(0 for DPO). With μ ∈ {0, 1} this is exactly each paper's loss. K-way rankings become all C(K,2)
pairs weighted 1/C(K,2) (``losses.reward.ranking_pairs``, as the reward model sees them), so each
prompt counts once: DPO and the reward model learn from the same labels.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rlhf_jax.losses.common import masked_mean
from rlhf_jax.losses.registry import Registry
from rlhf_jax.losses.reward import ranking_pairs

Array = jax.Array

PREFERENCE_LOSSES: Registry = Registry("preference loss")
"""Name -> ``ℓ(x, hp)``, the loss of one pair given preferred-minus-rejected implicit reward x."""


@PREFERENCE_LOSSES.register("sigmoid")
def sigmoid_pair_loss(x: Array, hp: dict) -> Array:
    """DPO's −log σ(x), with cDPO's label smoothing ε and SimPO's margin γ."""
    z = x - hp["margin"]
    eps = hp["label_smoothing"]
    return -(1.0 - eps) * jax.nn.log_sigmoid(z) - eps * jax.nn.log_sigmoid(-z)


@PREFERENCE_LOSSES.register("ipo")
def ipo_pair_loss(x: Array, hp: dict) -> Array:
    """IPO's squared loss, (h − 1/(2β))² with h = x/β the raw log-ratio difference."""
    beta = hp["beta"]
    return jnp.square(x / beta - 0.5 / beta)


def response_logprob(token_logp: Array, mask: Array, length_normalize: bool = False) -> Array:
    """log π(y|x) = Σ_t m_t·log π(y_t|…), or that sum over the response's length (SimPO)."""
    m = mask.astype(jnp.float32)
    total = jnp.sum(token_logp * m, axis=-1)
    return total / jnp.maximum(m.sum(-1), 1.0) if length_normalize else total


def comparison_pairs(values: Array, mu: Array | None = None, order: Array | None = None):
    """Per-response values ``[B, K]`` as pairs: ``(a, b, μ, w)``, flat.

    K = 2 with targets ``mu`` [B]: a = response 0, b = response 1, w = 1. A ranking ``order``
    [B, K] (indices best → worst): all C(K,2) pairs, a ranked above b, μ = 1, w = 1/C(K,2).
    """
    if order is None:
        a, b = values[:, 0], values[:, 1]
        return a, b, jnp.asarray(mu, jnp.float32), jnp.ones_like(a)
    ia, ib, w = ranking_pairs(values.shape[1])
    ranked = jnp.take_along_axis(values, order.astype(jnp.int32), axis=1)
    a, b = ranked[:, ia].reshape(-1), ranked[:, ib].reshape(-1)
    return a, b, jnp.ones_like(a), jnp.broadcast_to(jnp.asarray(w), ranked[:, ia].shape).reshape(-1)


def preference_loss(rewards: Array, labels: dict, hp: dict, kind: str = "sigmoid",
                    logps: Array | None = None):
    """The family's loss over implicit rewards ``[B, K]``; ``labels`` holds ``mu`` (K = 2) or
    ``order``. Returns ``(loss, metrics)``.

    Metrics over decisive pairs (μ ∈ {0, 1}), oriented to the preferred response:
    ``rewards/chosen``, ``rewards/rejected``, ``rewards/margin`` and ``rewards/accuracy`` (the
    fraction with r(chosen) > r(rejected)); with ``logps`` [B, K] also ``logps/chosen`` and
    ``logps/rejected``; ``loss/preference`` is the loss.
    """
    pair_loss = PREFERENCE_LOSSES.get(kind)
    a, b, mu, w = comparison_pairs(rewards, labels.get("mu"), labels.get("order"))
    d = a - b
    per_pair = mu * pair_loss(d, hp) + (1.0 - mu) * pair_loss(-d, hp)
    loss = masked_mean(per_pair, w)
    decisive = ((mu == 0.0) | (mu == 1.0)).astype(jnp.float32) * (w > 0)
    a_won = mu == 1.0
    chosen, rejected = jnp.where(a_won, a, b), jnp.where(a_won, b, a)
    metrics = {"loss/preference": loss,
               "rewards/chosen": masked_mean(chosen, decisive),
               "rewards/rejected": masked_mean(rejected, decisive),
               "rewards/margin": masked_mean(chosen - rejected, decisive),
               "rewards/accuracy": masked_mean((chosen > rejected).astype(jnp.float32), decisive)}
    if logps is not None:
        la, lb, _, _ = comparison_pairs(logps, labels.get("mu"), labels.get("order"))
        metrics["logps/chosen"] = masked_mean(jnp.where(a_won, la, lb), decisive)
        metrics["logps/rejected"] = masked_mean(jnp.where(a_won, lb, la), decisive)
    return loss, jax.lax.stop_gradient(metrics)
