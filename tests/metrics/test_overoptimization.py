"""The over-optimisation maths: best-of-n KL and its unbiased estimator, against values worked by
hand and brute-force enumeration; the Gao et al. forms fitted back from planted coefficients."""

import itertools
import math

import numpy as np
import pytest

from rlhf_jax.metrics import overoptimization as oo


def test_bon_kl_by_hand():
    np.testing.assert_allclose(oo.bon_kl([1, 2, 4, 256]),
                               [0.0, math.log(2) - 0.5, math.log(4) - 0.75, math.log(256) - 255 / 256])


def test_bon_weights_by_hand():
    # 2-subsets of 3 ranked samples: {1,2} {1,3} {2,3} -> best is rank 2 once, rank 3 twice
    np.testing.assert_allclose(oo.bon_weights(2, 3), [0.0, 1 / 3, 2 / 3])
    np.testing.assert_allclose(oo.bon_weights(1, 4), [0.25] * 4)
    np.testing.assert_allclose(oo.bon_weights(4, 4), [0, 0, 0, 1])
    # 3-subsets of 5: C(i-1, 2) / C(5, 3) = [0, 0, 1, 3, 6] / 10
    np.testing.assert_allclose(oo.bon_weights(3, 5), [0, 0, 0.1, 0.3, 0.6])
    np.testing.assert_allclose(oo.bon_weights(17, 256).sum(), 1.0)
    with pytest.raises(ValueError, match="best-of-5"):
        oo.bon_weights(5, 4)


def test_best_of_n_equals_enumerating_every_subset():
    rng = np.random.default_rng(0)
    P, N = 3, 6
    proxy, gold = rng.normal(size=(P, N)), rng.normal(size=(P, N))
    ns = list(range(1, N + 1))
    want = []
    for n in ns:
        per_prompt = []
        for p in range(P):
            best = [gold[p, max(sub, key=lambda i: proxy[p, i])] for sub in itertools.combinations(range(N), n)]
            per_prompt.append(np.mean(best))
        want.append(np.mean(per_prompt))
    np.testing.assert_allclose(oo.best_of_n(proxy, gold, ns), want, rtol=1e-12)
    # of the proxy itself: non-decreasing in n, from the mean to the max
    own = oo.best_of_n(proxy, proxy, ns)
    assert np.all(np.diff(own) > 0)
    np.testing.assert_allclose([own[0], own[-1]], [proxy.mean(), proxy.max(1).mean()])


@pytest.mark.parametrize("form", ["bon", "rl"])
def test_fit_recovers_planted_coefficients(form):
    d = np.linspace(0.0, 3.0, 13)
    alpha, beta = 0.8, 0.3
    gain = oo.predict(form, d, alpha, beta)
    fit = oo.fit_form(form, d, gain)
    assert fit["alpha"] == pytest.approx(alpha, abs=1e-10)
    assert fit["beta"] == pytest.approx(beta, abs=1e-10)
    assert fit["r2"] == pytest.approx(1.0, abs=1e-12)
    # the peak is where the form's derivative is zero
    dp = fit["d_peak"]
    eps = 1e-6
    assert (oo.predict(form, dp + eps, alpha, beta) - oo.predict(form, dp - eps, alpha, beta)) / (2 * eps) == \
        pytest.approx(0.0, abs=1e-6)
    assert dp == pytest.approx(alpha / (2 * beta) if form == "bon" else math.exp(alpha / beta - 1))
    # noise lowers R² below 1; the other form fits the planted curve worse
    noisy = gain + np.random.default_rng(1).normal(0, 0.05, d.shape)
    assert 0.5 < oo.fit_form(form, d, noisy)["r2"] < 1.0
    other = "rl" if form == "bon" else "bon"
    assert oo.fit_form(other, d, gain)["r2"] < 0.999


def test_rl_form_by_hand():
    # d(α − β log d) at d = 0, 1, e: 0, α, e(α − β)
    np.testing.assert_allclose(oo.predict("rl", [0.0, 1.0, math.e], 2.0, 0.5), [0.0, 2.0, math.e * 1.5])
    np.testing.assert_allclose(oo.predict("bon", [0.0, 1.0, 2.0], 2.0, 0.5), [0.0, 1.5, 2.0])


def test_fit_rejects_bad_input():
    with pytest.raises(ValueError, match="non-negative"):
        oo.fit_form("bon", [-1.0, 1.0, 2.0], [0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="at least 3"):
        oo.fit_form("rl", [0.0, 1.0], [0.0, 1.0])
    with pytest.raises(ValueError, match="form 'x'"):
        oo.fit_form("x", [0.0, 1.0, 2.0], [0.0, 1.0, 2.0])
    # a curve that never turns down has no peak
    assert oo.fit_form("bon", [0.0, 1.0, 2.0, 3.0], [0.0, 1.0, 2.5, 4.5])["d_peak"] is None
