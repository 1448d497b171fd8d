"""Bradley–Terry / Elo on tournaments whose answer is known: hand-computed fits, planted
strengths recovered within the bootstrap interval, a dominant player first, ties, win rates."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rlhf_jax.metrics.elo import (ELO_PER_NAT, fit_bradley_terry, games_of_scores, rank, to_elo,
                                  win_rates)


def test_two_players_closed_form_with_ties():
    # 3 wins, 2 ties, 1 loss for player 0: w01 = 3 + 2·½ = 4, w10 = 1 + 2·½ = 2, so the MLE has
    # σ(θ0 − θ1) = 4/6, i.e. θ0 − θ1 = log 2, an Elo gap of 400·log10(2) ≈ 120.41.
    scores = np.array([[[1.0, 1.0, 1.0, 0.5, 0.5, 0.0]], [[0.0, 0.0, 0.0, 0.5, 0.5, 1.0]]])  # [2, 1, 6]
    # pair the samples one to one: one prompt per game
    games = np.stack([games_of_scores(scores[:, :, s:s + 1])[0] for s in range(6)])
    assert games.sum(0).tolist() == [[0, 4.0], [2.0, 0]]
    theta = fit_bradley_terry(games.sum(0), prior=0.0)
    assert theta[0] - theta[1] == pytest.approx(math.log(2.0), abs=1e-9)
    elo = to_elo(theta, anchor=1)
    assert elo[1] == 1000.0 and elo[0] - elo[1] == pytest.approx(400 * math.log10(2.0), abs=1e-6)


def test_three_player_mle_satisfies_the_score_equations():
    w = np.array([[0, 7, 3], [2, 0, 6.5], [4, 1.5, 0]])
    theta = fit_bradley_terry(w, prior=0.0)
    n = w + w.T
    p = 1 / (1 + np.exp(-(theta[:, None] - theta[None, :])))
    np.testing.assert_allclose((n * p).sum(1) - np.diag(n * p), w.sum(1), atol=1e-8)  # expected = observed wins
    assert abs(theta.sum()) < 1e-12


def test_games_of_scores_counts_by_hand():
    # 3 players, 2 prompts, 2 samples each: every sample meets every sample of the other player
    s = np.array([[[3, 1], [0, 0]],
                  [[2, 2], [0, 1]],
                  [[1, 1], [5, 5]]], float)
    g = games_of_scores(s)
    # prompt 0: p0 (3,1) vs p1 (2,2): 3>2, 3>2, 1<2, 1<2 -> 2 wins each; vs p2 (1,1): 3>1 x2, 1=1 x2 -> 2 + 1 = 3
    assert g[0].tolist() == [[0, 2, 3], [2, 0, 4], [1, 0, 0]]
    # prompt 1: p0 (0,0) vs p1 (0,1): 0=0 x2 (1), 0<1 x2 -> 1 win; p1 vs p0 = 4 - 1 = 3
    assert g[1].tolist() == [[0, 1, 0], [3, 0, 0], [4, 4, 0]]
    wr = win_rates(g.sum(0))
    assert wr[0, 1] == pytest.approx(3 / 8) and wr[1, 0] == pytest.approx(5 / 8)
    assert wr[2, 0] == pytest.approx(5 / 8) and np.isnan(wr[0, 0])
    np.testing.assert_allclose(wr + wr.T, np.where(np.eye(3) > 0, np.nan, 1.0))


def _simulated(theta, n_prompts, rng):
    """Each prompt: one game per pair of players. A tenth of the games tie; the rest are won with
    the probability q that keeps i's expected score at the Bradley–Terry p: 0.05 + 0.9 q = p."""
    P = len(theta)
    g = np.zeros((n_prompts, P, P))
    for i in range(P):
        for j in range(i + 1, P):
            p = 1 / (1 + np.exp(-(theta[i] - theta[j])))
            u = rng.random(n_prompts)
            tie = u > 0.9
            won = (rng.random(n_prompts) < (p - 0.05) / 0.9) & ~tie
            g[:, i, j] = won + 0.5 * tie
            g[:, j, i] = (~won & ~tie) + 0.5 * tie
    return g


def test_planted_strengths_recovered_within_the_bootstrap_interval():
    planted_elo = np.array([1000.0, 1150.0, 900.0, 1300.0, 1050.0])
    theta = (planted_elo - 1000.0) / ELO_PER_NAT
    g = _simulated(theta, 400, np.random.default_rng(0))
    out = rank(g, ["a", "b", "c", "d", "e"], n_boot=300, seed=1, anchor=0)
    truth = planted_elo - planted_elo[0] + 1000.0
    for p, t in zip(out["players"], truth):
        assert p["elo_low"] <= t <= p["elo_high"], (p, t)
        assert p["elo_high"] - p["elo_low"] < 120, p  # informative, not vacuous
    assert [p["rank"] for p in out["players"]] == [4, 2, 5, 1, 3]
    again = rank(g, ["a", "b", "c", "d", "e"], n_boot=300, seed=1, anchor=0)
    assert again == out  # deterministic given the seed


def test_dominant_player_is_first_and_finite():
    g = _simulated(np.zeros(4), 50, np.random.default_rng(3))
    g[:, 3, :3] = 1.0  # player 3 wins every game it plays
    g[:, :3, 3] = 0.0
    out = rank(g, ["p0", "p1", "p2", "boss"], n_boot=100, seed=0)
    boss = out["players"][3]
    assert boss["rank"] == 1 and boss["win_rate"] == 1.0 and np.isfinite(boss["elo"])
    assert boss["elo_low"] > max(p["elo_high"] for p in out["players"][:3])
    with pytest.raises(ValueError, match="maximum-likelihood strength is infinite"):
        fit_bradley_terry(g.sum(0), prior=0.0)


def test_all_ties_rate_everyone_equal():
    s = np.zeros((3, 10, 2))
    out = rank(games_of_scores(s), ["x", "y", "z"], n_boot=20)
    for p in out["players"]:
        assert p["elo"] == pytest.approx(1000.0, abs=1e-6) and p["win_rate"] == 0.5


def test_bad_input():
    with pytest.raises(ValueError, match="square"):
        fit_bradley_terry(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="non-negative"):
        fit_bradley_terry(np.array([[0, -1.0], [1, 0]]))
    with pytest.raises(ValueError, match="games must be"):
        rank(np.zeros((3, 2, 2)), ["a", "b", "c"])
