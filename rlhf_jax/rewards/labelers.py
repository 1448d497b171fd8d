"""Simulated human labelers: noisy comparisons derived from a gold score.

A labeler with gold scores ``g`` and temperature ``tau`` behaves like a Bradley–Terry / Boltzmann-
rational human (Christiano et al. 2017, "Deep RL from Human Preferences"; the synthetic-label setup
of Gao et al. 2022):

    P(a ≻ b) = σ((g_a − g_b) / τ),

with τ → 0 a noiseless labeler. Pairs closer than ``tie_eps`` are labelled "equally good", which
Christiano et al. train on as the uniform target μ = ½. K-way rankings (InstructGPT, Ouyang et al.
2022) come from the Plackett–Luce model with strengths ``g/τ``; sampling it as the argsort of
``g/τ + Gumbel`` noise gives every pair exactly the Bradley–Terry marginal above, so pairwise and
ranking labels describe the same labeler.

Everything here is host-side NumPy, deterministic given the ``np.random.Generator``.
"""

from __future__ import annotations

import numpy as np


def _as_f64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def _check_tau(tau: float) -> float:
    tau = float(tau)
    if not tau >= 0.0:
        raise ValueError(f"tau must be >= 0 (0 = noiseless), got {tau}")
    return tau


def preference_prob(g_a, g_b, *, tau: float) -> np.ndarray:
    """``P(a ≻ b) = σ((g_a − g_b)/τ)`` in float64; τ = 0 gives 1, ½ or 0 by the sign of the gap."""
    tau = _check_tau(tau)
    d = _as_f64(g_a) - _as_f64(g_b)
    if tau == 0.0:
        return 0.5 * (1.0 + np.sign(d))
    # σ(z) = ½(1 + tanh(z/2)) never overflows, and is exactly 0/1 for |z| large.
    with np.errstate(over="ignore"):
        return 0.5 * (1.0 + np.tanh(d / (2.0 * tau)))


def pairwise_labels(g_a, g_b, *, tau: float, tie_eps: float, rng: np.random.Generator) -> np.ndarray:
    """Noisy pairwise label μ ∈ {1, ½, 0} per pair (μ = 1: ``a`` is preferred).

    ``|g_a − g_b| < tie_eps`` → μ = ½ (tie, a uniform target for the Bradley–Terry loss);
    otherwise μ = 1 with probability ``σ((g_a − g_b)/τ)``, else 0.

    Args:
      g_a, g_b: gold scores, shape [N].
      tau: labeler temperature (> 0; 0 or tiny = noiseless).
      tie_eps: tie threshold on the gold gap (0 disables ties).
      rng: the generator; exactly N uniforms are drawn whatever the ties, so a run is reproducible.
    Returns:
      mu: float32 [N].
    """
    g_a, g_b = _as_f64(g_a), _as_f64(g_b)
    if g_a.shape != g_b.shape or g_a.ndim != 1:
        raise ValueError(f"g_a and g_b must be 1-D of one shape, got {g_a.shape} and {g_b.shape}")
    p = preference_prob(g_a, g_b, tau=tau)
    u = rng.random(g_a.shape[0])
    mu = (u < p).astype(np.float32)
    ties = np.abs(g_a - g_b) < float(tie_eps)
    mu[ties] = 0.5
    return mu


def ranking_labels(g, *, tau: float, rng: np.random.Generator) -> np.ndarray:
    """A Plackett–Luce ranking of K responses per prompt, best first.

    ``order[n] = argsort(−(g[n]/τ + Gumbel))``: the K-way generalisation of the Bradley–Terry labeler,
    with pairwise marginals ``P(a ranked above b) = σ((g_a − g_b)/τ)`` exactly. τ = 0 ranks by ``g``
    (ties in ``g`` keep index order).

    Args:
      g: gold scores [N, K].
      tau: labeler temperature (>= 0).
      rng: the generator (N·K Gumbels drawn, also when τ = 0).
    Returns:
      order: int64 [N, K], indices into axis 1 from best to worst.
    """
    tau = _check_tau(tau)
    g = _as_f64(g)
    if g.ndim != 2:
        raise ValueError(f"g must be [N, K], got shape {g.shape}")
    noise = rng.gumbel(size=g.shape)
    scores = g if tau == 0.0 else g / tau + noise
    return np.argsort(-scores, axis=1, kind="stable")


def label_ceiling(g_a, g_b, mu) -> float:
    """Accuracy of the gold score itself on noisy labels, ties (μ = ½) excluded.

    ``mean over non-tie pairs of [(g_a > g_b) == (μ == 1)]`` — the best held-out accuracy a reward
    model can expect on labels from a noisy labeler. NaN if every pair is a tie.
    """
    g_a, g_b, mu = _as_f64(g_a), _as_f64(g_b), _as_f64(mu)
    keep = mu != 0.5
    if not keep.any():
        return float("nan")
    return float(np.mean((g_a[keep] > g_b[keep]) == (mu[keep] == 1.0)))
