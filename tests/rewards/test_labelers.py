"""Simulated labelers: Bradley–Terry pairwise labels with ties, Plackett–Luce rankings, ceiling."""

import numpy as np
import pytest

from rlhf_jax.rewards import label_ceiling, pairwise_labels, preference_prob, ranking_labels


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def test_ties_are_half_when_gap_below_eps():
    g_a = np.array([0.0, 0.5, 1.0, -0.2])
    g_b = np.array([0.01, 0.5, 0.0, -0.26])
    mu = pairwise_labels(g_a, g_b, tau=1e-6, tie_eps=0.05, rng=np.random.default_rng(0))
    assert mu.dtype == np.float32
    np.testing.assert_array_equal(mu, [0.5, 0.5, 1.0, 1.0])


def test_empirical_preference_matches_sigmoid():
    n = 20000
    g_a = np.full(n, 0.3)
    g_b = np.zeros(n)
    g_b[n // 2:] = 0.7  # second half: gap -0.4
    mu = pairwise_labels(g_a, g_b, tau=0.5, tie_eps=0.05, rng=np.random.default_rng(1))
    assert set(np.unique(mu)) <= {0.0, 1.0}
    assert mu[: n // 2].mean() == pytest.approx(sigmoid(0.6), abs=0.02)   # 0.6457
    assert mu[n // 2:].mean() == pytest.approx(sigmoid(-0.8), abs=0.02)   # 0.3100


def test_tiny_tau_is_noiseless_and_labels_are_deterministic_given_rng():
    rng = np.random.default_rng(2)
    g_a, g_b = rng.normal(size=500), rng.normal(size=500)
    for tau in (1e-6, 0.0):
        mu1 = pairwise_labels(g_a, g_b, tau=tau, tie_eps=0.05, rng=np.random.default_rng(3))
        mu2 = pairwise_labels(g_a, g_b, tau=tau, tie_eps=0.05, rng=np.random.default_rng(4))
        np.testing.assert_array_equal(mu1, mu2)
        ties = np.abs(g_a - g_b) < 0.05
        np.testing.assert_array_equal(mu1[~ties], (g_a > g_b)[~ties].astype(np.float32))
        assert np.all(mu1[ties] == 0.5)
    noisy = [pairwise_labels(g_a, g_b, tau=0.3, tie_eps=0.0, rng=np.random.default_rng(s))
             for s in (5, 5, 6)]
    np.testing.assert_array_equal(noisy[0], noisy[1])
    assert not np.array_equal(noisy[0], noisy[2])
    with pytest.raises(ValueError):
        pairwise_labels(g_a, g_b, tau=-1.0, tie_eps=0.0, rng=np.random.default_rng(0))


def test_preference_prob_is_stable_at_extremes():
    p = preference_prob(np.array([1.0, -1.0, 0.0]), np.zeros(3), tau=1e-9)
    np.testing.assert_array_equal(p, [1.0, 0.0, 0.5])
    assert preference_prob(0.2, 0.0, tau=0.1) == pytest.approx(sigmoid(2.0))


def test_ranking_pairwise_marginals_match_sigmoid():
    n, tau = 20000, 0.5
    g = np.tile([0.0, 0.4, -0.3], (n, 1))
    order = ranking_labels(g, tau=tau, rng=np.random.default_rng(7))
    assert order.shape == (n, 3)
    np.testing.assert_array_equal(np.sort(order, axis=1), np.tile([0, 1, 2], (n, 1)))
    rank = np.argsort(order, axis=1)  # rank[i, k] = position of item k (0 = best)
    for a, b in [(0, 1), (1, 2), (0, 2)]:
        emp = np.mean(rank[:, a] < rank[:, b])
        assert emp == pytest.approx(sigmoid((g[0, a] - g[0, b]) / tau), abs=0.02), (a, b)
    # best-first frequencies follow the softmax of g/tau (Plackett-Luce first choice)
    first = np.bincount(order[:, 0], minlength=3) / n
    soft = np.exp(g[0] / tau) / np.exp(g[0] / tau).sum()
    np.testing.assert_allclose(first, soft, atol=0.02)


def test_ranking_noiseless_and_deterministic():
    g = np.array([[0.1, 0.9, -0.5, 0.3], [2.0, 1.0, 0.0, -1.0]])
    np.testing.assert_array_equal(ranking_labels(g, tau=0.0, rng=np.random.default_rng(0)),
                                  [[1, 3, 0, 2], [0, 1, 2, 3]])
    np.testing.assert_array_equal(ranking_labels(g, tau=1e-6, rng=np.random.default_rng(9)),
                                  [[1, 3, 0, 2], [0, 1, 2, 3]])
    g2 = np.random.default_rng(0).normal(size=(50, 4))
    a = ranking_labels(g2, tau=1.0, rng=np.random.default_rng(1))
    np.testing.assert_array_equal(a, ranking_labels(g2, tau=1.0, rng=np.random.default_rng(1)))
    with pytest.raises(ValueError):
        ranking_labels(np.zeros(4), tau=1.0, rng=np.random.default_rng(0))


def test_label_ceiling_hand_example():
    g_a = [1.0, 0.0, 0.5, 0.2, 0.3]
    g_b = [0.0, 1.0, 0.4, 0.9, 0.3]
    mu = [1.0, 1.0, 0.5, 0.0, 0.0]
    # non-ties: pairs 0, 1, 3, 4; gold says a>b: T, F, F, F; label says a: T, T, F, F -> 3/4
    assert label_ceiling(g_a, g_b, mu) == pytest.approx(0.75)
    assert np.isnan(label_ceiling([0.0], [1.0], [0.5]))


def test_label_ceiling_of_noisy_labeler_equals_label_agreement():
    n = 20000
    g_a, g_b = np.full(n, 0.3), np.zeros(n)
    mu = pairwise_labels(g_a, g_b, tau=0.5, tie_eps=0.05, rng=np.random.default_rng(11))
    assert label_ceiling(g_a, g_b, mu) == pytest.approx(sigmoid(0.6), abs=0.02)
