"""Bradley–Terry strengths of players from pairwise games, on the Elo scale, with bootstrap
intervals over prompts (host-side numpy: a tournament is at most a few dozen players).

A game between players i and j is won by one of them or tied; a tie counts half a win to each.
With ``w[i, j]`` the (fractional) wins of i over j and ``n[i, j] = w[i, j] + w[j, i]`` the games
between them, the Bradley–Terry model ``P(i beats j) = σ(θ_i − θ_j)`` has the log-likelihood

    ℓ(θ) = Σ_{i≠j} w[i, j] · log σ(θ_i − θ_j) − (λ/2) · Σ_i θ_i²

(λ a weak Gaussian prior, which keeps a player who won or lost every game finite; λ = 0 is the
plain maximum-likelihood fit). ℓ is concave; :func:`fit_bradley_terry` maximises it by Newton's
method: gradient ``g_i = Σ_j w[i, j] − n[i, j] σ(θ_i − θ_j) − λ θ_i``, Hessian ``−(L + λ I)`` with
L the Laplacian of the weights ``n[i, j] p_ij (1 − p_ij)``. Strengths are identified up to a
constant; they are returned with mean zero (the prior fixes the constant too).

The Elo scale is ``elo = 1000 + (400 / ln 10) · θ`` (a 400-point gap is 10:1 odds), shifted so
the anchor (a chosen player, or the mean) is at 1000. :func:`rank` fits the whole tournament and
``n_boot`` bootstrap resamples of its prompts (the games of a prompt stay together) and gives
each player's Elo with the 2.5% and 97.5% percentiles of the resampled fits.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

ELO_PER_NAT = 400.0 / math.log(10.0)
ELO_BASE = 1000.0
TIE_COUNTS = 0.5


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _log_likelihood(theta, w, prior):
    d = theta[:, None] - theta[None, :]
    return float(np.sum(w * -np.logaddexp(0.0, -d)) - 0.5 * prior * np.sum(theta ** 2))


def fit_bradley_terry(wins: np.ndarray, *, prior: float = 1e-3, tol: float = 1e-10,
                      max_iter: int = 200) -> np.ndarray:
    """Maximum-a-posteriori Bradley–Terry log-strengths θ ``[P]`` (mean zero) of the win matrix
    ``wins[i, j]`` (wins of i over j, ties counted half). ``prior=0`` gives the maximum-likelihood
    fit, which exists only when every player both won and lost something in a connected
    tournament (ValueError otherwise)."""
    w = np.asarray(wins, np.float64)
    P = w.shape[0]
    if w.shape != (P, P) or P < 2:
        raise ValueError(f"wins must be a square matrix of at least 2 players, got {w.shape}")
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError("wins must be finite and non-negative")
    w = w * (1.0 - np.eye(P))
    n = w + w.T
    if prior <= 0:
        won, lost = w.sum(1), w.sum(0)
        if (won <= 0).any() or (lost <= 0).any():
            raise ValueError("with prior=0 every player must win and lose at least part of a game "
                             "(the maximum-likelihood strength is infinite otherwise)")
    theta = np.zeros(P)
    ll = _log_likelihood(theta, w, prior)
    for _ in range(max_iter):
        p = _sigmoid(theta[:, None] - theta[None, :])
        grad = (w - n * p).sum(1) - prior * theta
        c = n * p * (1.0 - p)
        hess = np.diag(c.sum(1)) - c + prior * np.eye(P)
        if prior <= 0:  # fix the free constant: Σθ = 0
            hess = hess + np.ones((P, P)) / P
        step = np.linalg.solve(hess, grad)
        t = 1.0
        while True:  # Newton with backtracking (ℓ is concave, so a short enough step ascends)
            new = theta + t * step
            new_ll = _log_likelihood(new, w, prior)
            if new_ll >= ll - 1e-12 or t < 1e-6:
                break
            t *= 0.5
        theta, ll = new, new_ll
        if np.max(np.abs(t * step)) < tol:
            break
    return theta - theta.mean()


def to_elo(theta: np.ndarray, anchor: int | None = None) -> np.ndarray:
    """θ on the Elo scale with ``theta[anchor]`` (or the mean, when None) at 1000."""
    theta = np.asarray(theta, np.float64)
    ref = theta.mean() if anchor is None else theta[anchor]
    return ELO_BASE + ELO_PER_NAT * (theta - ref)


def games_of_scores(scores: np.ndarray, tie_eps: float = 0.0) -> np.ndarray:
    """Per-prompt win matrices ``[prompts, P, P]`` from judged scores ``[P, prompts, n]``: every
    response of player i to a prompt meets every response of player j to it (n² games per pair
    and prompt); the higher score wins, scores within ``tie_eps`` tie (half a win each)."""
    s = np.asarray(scores, np.float64)
    if s.ndim != 3:
        raise ValueError(f"scores must be [players, prompts, samples], got shape {s.shape}")
    diff = s[:, None, :, :, None] - s[None, :, :, None, :]  # [P, P, prompts, n, n]
    won = (diff > tie_eps) + TIE_COUNTS * (np.abs(diff) <= tie_eps)
    won = won.sum(axis=(3, 4)).transpose(2, 0, 1)
    P = s.shape[0]
    return won * (1.0 - np.eye(P))[None]


def win_rates(wins: np.ndarray) -> np.ndarray:
    """``wins[i, j] / games[i, j]`` (nan where i and j never met, and on the diagonal)."""
    w = np.asarray(wins, np.float64)
    n = w + w.T
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(n > 0, w / np.where(n > 0, n, 1.0), np.nan)
    np.fill_diagonal(out, np.nan)
    return out


def rank(games: np.ndarray, names: Sequence[str], *, n_boot: int = 1000, seed: int = 0,
         anchor: int | None = None, prior: float = 1e-3) -> dict:
    """Elo ratings of a tournament given as per-prompt win matrices ``games [prompts, P, P]``.

    Returns ``{"players": [{name, elo, elo_low, elo_high, rank, win_rate}], "win_rate": [P, P]
    lists (None where two players never met and on the diagonal), "games": [P, P] list, "n_prompts", "n_boot", "seed", "anchor"}`` with players in the
    order given; ``win_rate`` of a player is its share of all its games. Deterministic in
    ``seed`` (the bootstrap's generator)."""
    g = np.asarray(games, np.float64)
    if g.ndim != 3 or g.shape[1] != g.shape[2] or g.shape[1] != len(names):
        raise ValueError(f"games must be [prompts, {len(names)}, {len(names)}], got {g.shape}")
    if len(names) < 2:
        raise ValueError("a ranking needs at least 2 players")
    total = g.sum(0)
    elo = to_elo(fit_bradley_terry(total, prior=prior), anchor)
    rng = np.random.default_rng(seed)
    boots = np.empty((n_boot, len(names)))
    for b in range(n_boot):
        pick = rng.integers(0, len(g), len(g))
        boots[b] = to_elo(fit_bradley_terry(g[pick].sum(0), prior=prior), anchor)
    lo, hi = (np.percentile(boots, [2.5, 97.5], axis=0) if n_boot else
              (np.full(len(names), np.nan), np.full(len(names), np.nan)))
    played = total.sum(1) + total.sum(0)
    share = np.where(played > 0, total.sum(1) / np.where(played > 0, played, 1), np.nan)
    order = np.argsort(-elo, kind="stable")
    ranks = np.empty(len(names), int)
    ranks[order] = np.arange(1, len(names) + 1)
    players = [{"name": str(nm), "elo": float(elo[i]), "elo_low": float(lo[i]), "elo_high": float(hi[i]),
                "rank": int(ranks[i]), "win_rate": float(share[i])} for i, nm in enumerate(names)]
    rates = [[None if not np.isfinite(x) else float(x) for x in row] for row in win_rates(total)]
    return {"players": players, "win_rate": rates, "games": total.tolist(),
            "n_prompts": int(len(g)), "n_boot": int(n_boot), "seed": int(seed), "anchor": anchor}
