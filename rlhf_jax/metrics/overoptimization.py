"""Reward over-optimisation (Gao, Schulman & Hilton 2022): the gold reward a policy reaches as a
function of how far it moved from the initial policy, ``d = √KL(π‖π_ref)``, and the two
functional forms fitted to it (host-side numpy).

**Best-of-n.** Of ``n`` samples of the initial policy keep the one the proxy (the reward model)
scores highest. Its KL to the initial policy is exactly ``log n − (n − 1)/n`` (:func:`bon_kl`).
From ``N ≥ n`` samples per prompt, the expected gold (or proxy) reward of best-of-n is estimated
without bias (:func:`best_of_n`): sort a prompt's samples by proxy score, ascending; the one of
rank i (1-based) is the best of a uniformly drawn n-subset with probability
``C(i − 1, n − 1) / C(N, n)`` (it must be in the subset and the other n − 1 must rank below it).

**The forms.** With ``R(d)`` the gold reward gained over the initial policy (``R(0) = 0``):

    best-of-n:  R_bon(d) = d (α − β d)
    RL:         R_rl(d)  = d (α − β log d)

Both are linear in (α, β), so :func:`fit_form` is ordinary least squares without intercept
(features ``[d, −d²]`` or ``[d, −d log d]``, with ``d log d → 0`` at d = 0), and reports
R² = 1 − SS_res / SS_tot around the mean of the fitted values' targets. A form peaks at
``d* = α / (2β)`` (best-of-n) or ``d* = exp(α/β − 1)`` (RL) when β > 0.
"""

from __future__ import annotations

import math

import numpy as np

FORMS = ("bon", "rl")


def bon_kl(n) -> np.ndarray:
    """KL(best-of-n ‖ initial policy) = log n − (n − 1)/n (Gao et al. 2022; 0 at n = 1)."""
    n = np.asarray(n, np.float64)
    return np.log(n) - (n - 1.0) / n


def bon_weights(n: int, N: int) -> np.ndarray:
    """``[N]``: the probability that the sample of proxy rank i (ascending, 0-based index i − 1)
    is the proxy-best of a uniform n-subset of N samples: ``C(i − 1, n − 1) / C(N, n)``."""
    if not 1 <= n <= N:
        raise ValueError(f"best-of-{n} needs 1 <= n <= N samples per prompt (N = {N})")
    i = np.arange(1, N + 1)
    w = np.zeros(N)
    ok = i >= n
    lg = np.vectorize(math.lgamma)
    # log C(i-1, n-1) - log C(N, n)
    log_c = (lg(i[ok]) - lg(n) - lg(i[ok] - n + 1)) - (lg(N + 1) - lg(n + 1) - lg(N - n + 1))
    w[ok] = np.exp(log_c)
    return w / w.sum()  # exact up to rounding; the sum is 1 by the hockey-stick identity


def best_of_n(proxy: np.ndarray, values: np.ndarray, ns) -> np.ndarray:
    """The expected ``values`` (gold, or the proxy itself) of the proxy-best of n samples, for
    each n in ``ns``, from ``[prompts, N]`` samples: the unbiased estimate, averaged over prompts."""
    proxy, values = np.asarray(proxy, np.float64), np.asarray(values, np.float64)
    if proxy.shape != values.shape or proxy.ndim != 2:
        raise ValueError(f"proxy {proxy.shape} and values {values.shape} must both be [prompts, N]")
    order = np.argsort(proxy, axis=1, kind="stable")
    ranked = np.take_along_axis(values, order, axis=1)  # ascending proxy
    N = proxy.shape[1]
    return np.array([float((ranked @ bon_weights(int(n), N)).mean()) for n in ns])


def _features(form: str, d: np.ndarray) -> np.ndarray:
    if form == "bon":
        return np.stack([d, -d * d], axis=1)
    if form == "rl":
        safe = np.where(d > 0, d, 1.0)
        return np.stack([d, -np.where(d > 0, d * np.log(safe), 0.0)], axis=1)
    raise ValueError(f"form {form!r}: choose one of {', '.join(FORMS)}")


def predict(form: str, d, alpha: float, beta: float) -> np.ndarray:
    """R(d) of a fitted form."""
    d = np.asarray(d, np.float64)
    return (_features(form, d.reshape(-1)) @ np.array([alpha, beta])).reshape(d.shape)


def fit_form(form: str, d, gain) -> dict:
    """Least-squares α, β of ``form`` ('bon' or 'rl') to gold gains ``gain`` at distances ``d``;
    returns ``{alpha, beta, r2, d_peak, n}`` (``d_peak`` None when the form never turns down)."""
    d, gain = np.asarray(d, np.float64).reshape(-1), np.asarray(gain, np.float64).reshape(-1)
    if d.shape != gain.shape:
        raise ValueError(f"d {d.shape} and gain {gain.shape} differ in length")
    if (d < 0).any():
        raise ValueError("d = sqrt(KL) must be non-negative")
    if len(d) < 3:
        raise ValueError(f"fitting two coefficients needs at least 3 points, got {len(d)}")
    X = _features(form, d)
    (alpha, beta), *_ = np.linalg.lstsq(X, gain, rcond=None)
    resid = gain - X @ np.array([alpha, beta])
    ss_tot = float(np.sum((gain - gain.mean()) ** 2))
    r2 = 1.0 - float(np.sum(resid ** 2)) / ss_tot if ss_tot > 0 else float("nan")
    peak = None
    if beta > 0:
        peak = alpha / (2 * beta) if form == "bon" else math.exp(alpha / beta - 1.0)
    return {"alpha": float(alpha), "beta": float(beta), "r2": r2, "d_peak": peak, "n": int(len(d))}
