"""TRPO's pieces on a small softmax policy whose Fisher matrix can be built explicitly: the
Fisher-vector product, the conjugate-gradient solve (= a direct solve), the step scaled to the
trust region, and the line search (which rejects a step that breaks the KL constraint)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from rlhf_jax.losses.trpo import (backtracking_line_search, conjugate_gradient, fisher_vector_product,
                                  natural_step)

X = jnp.asarray(np.random.default_rng(0).normal(size=(5, 3)), jnp.float32)
THETA = {"W": jnp.asarray(np.random.default_rng(1).normal(size=(3, 4)), jnp.float32),
         "b": jnp.asarray([0.1, -0.2, 0.3, 0.0], jnp.float32)}


def _logq(theta):
    return jax.nn.log_softmax(X @ theta["W"] + theta["b"], -1)


def mean_kl(theta):
    """Mean over the 5 states of KL(π_θ0 ‖ π_θ)."""
    old = jax.lax.stop_gradient(_logq(THETA))
    return jnp.mean(jnp.sum(jnp.exp(old) * (old - _logq(theta)), -1))


def _explicit_fisher(damping):
    flat, unravel = ravel_pytree(THETA)
    H = jax.hessian(lambda f: mean_kl(unravel(f)))(flat)
    return np.asarray(H, np.float64) + damping * np.eye(len(flat)), unravel


def test_fisher_vector_product_is_the_kl_hessian_times_v():
    F, unravel = _explicit_fisher(0.1)
    v = np.random.default_rng(2).normal(size=F.shape[0]).astype(np.float32)
    got = ravel_pytree(fisher_vector_product(mean_kl, THETA, 0.1)(unravel(jnp.asarray(v))))[0]
    np.testing.assert_allclose(np.asarray(got), F @ v, rtol=1e-4, atol=1e-5)


def test_conjugate_gradient_equals_a_direct_solve():
    F, unravel = _explicit_fisher(0.1)
    g = np.random.default_rng(3).normal(size=F.shape[0])
    want = np.linalg.solve(F, g)
    fvp = fisher_vector_product(mean_kl, THETA, 0.1)
    x, residual = conjugate_gradient(fvp, unravel(jnp.asarray(g, jnp.float32)), iters=F.shape[0])
    np.testing.assert_allclose(np.asarray(ravel_pytree(x)[0]), want, rtol=2e-3, atol=2e-3)
    assert float(residual) < 1e-6
    # fewer steps than dimensions: an approximation that already beats the plain gradient direction
    x3, _ = conjugate_gradient(fvp, unravel(jnp.asarray(g, jnp.float32)), iters=3)
    err = lambda y: np.linalg.norm(F @ y - g)  # noqa: E731
    assert err(np.asarray(ravel_pytree(x3)[0])) < err(g * (g @ g) / (g @ F @ g))


def test_natural_step_fills_the_quadratic_trust_region():
    F, unravel = _explicit_fisher(0.1)
    fvp = fisher_vector_product(mean_kl, THETA, 0.1)
    g = unravel(jnp.asarray(np.random.default_rng(4).normal(size=F.shape[0]), jnp.float32))
    x, _ = conjugate_gradient(fvp, g, iters=F.shape[0])
    step, expected = natural_step(g, x, fvp, 0.01)
    s = np.asarray(ravel_pytree(step)[0], np.float64)
    assert 0.5 * s @ F @ s == pytest.approx(0.01, rel=1e-3)  # ½ sᵀFs = δ
    assert float(expected) == pytest.approx(float(ravel_pytree(g)[0] @ s), rel=1e-5)


def _quadratic(theta):
    """Surrogate θ·1 (improves along +1), KL |θ|² (a trust region around 0)."""
    return jnp.sum(theta["v"]), jnp.sum(jnp.square(theta["v"]))


def test_line_search_backtracks_into_the_trust_region():
    theta = {"v": jnp.zeros(4)}
    step = {"v": jnp.full(4, 0.09)}                     # KL at the full step 0.0324 > δ; 0.0081 at ½
    new, m = backtracking_line_search(_quadratic, theta, step, 0.01, iters=10, coef=0.5)
    assert float(m["trpo/accepted"]) == 1.0 and float(m["trpo/step_fraction"]) == 0.5
    assert float(m["trpo/backtracks"]) == 1.0
    assert float(m["trpo/kl"]) == pytest.approx(0.0081, rel=1e-5) and float(_quadratic(new)[1]) <= 0.01
    assert float(m["trpo/surrogate_gain"]) == pytest.approx(0.18, rel=1e-5)
    np.testing.assert_allclose(np.asarray(new["v"]), 0.045, rtol=1e-6)


def test_line_search_rejects_a_step_that_breaks_the_kl_constraint():
    theta = {"v": jnp.zeros(4)}
    step = {"v": jnp.full(4, 1.0)}                      # KL 4 at the full step; 4/16 after 2 halvings
    new, m = backtracking_line_search(_quadratic, theta, step, 0.01, iters=3, coef=0.5)
    assert float(m["trpo/accepted"]) == 0.0 and float(m["trpo/step_fraction"]) == 0.0
    np.testing.assert_array_equal(np.asarray(new["v"]), 0.0)  # θ unchanged


def test_line_search_rejects_a_step_that_does_not_improve_the_surrogate():
    theta = {"v": jnp.zeros(4)}
    new, m = backtracking_line_search(_quadratic, theta, {"v": jnp.full(4, -0.01)}, 0.01, iters=10, coef=0.5)
    assert float(m["trpo/accepted"]) == 0.0
    np.testing.assert_array_equal(np.asarray(new["v"]), 0.0)
