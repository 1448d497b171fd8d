"""Trust-region policy optimisation (Schulman et al. 2015) as pure functions over parameter pytrees.

Maximise the surrogate L(θ) = E[π_θ(a|s)/π_old(a|s)·A] subject to the mean KL(π_old‖π_θ) ≤ δ:

1. g = ∇L(θ_old); the Fisher matrix F is the Hessian of the mean KL at θ_old, used only through
   Fisher-vector products F·v = ∇(∇KL(θ)·v) (``jax.jvp`` of ``jax.grad``), plus damping·v;
2. x ≈ F⁻¹g by conjugate gradient (no matrix is ever formed);
3. the full step s = √(2δ / xᵀFx)·x, the largest along x that the quadratic model of the KL
   allows;
4. backtracking line search over θ_old + cʲ·s (j = 0, 1, ...): the first candidate whose mean KL
   is ≤ δ *and* whose surrogate improves on θ_old's is taken; if none is, θ stays θ_old.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

Array = jax.Array


def tree_dot(a, b) -> Array:
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def tree_axpy(alpha, x, y):
    """alpha·x + y over pytrees."""
    return jax.tree_util.tree_map(lambda a, b: alpha * a + b, x, y)


def fisher_vector_product(kl_fn: Callable, params, damping) -> Callable:
    """``v -> F·v + damping·v`` with F the Hessian of ``kl_fn`` at ``params`` (forward over reverse
    mode: one gradient's JVP, never the matrix)."""
    grad_kl = jax.grad(kl_fn)

    def fvp(v):
        return tree_axpy(damping, v, jax.jvp(grad_kl, (params,), (v,))[1])

    return fvp


def conjugate_gradient(matvec: Callable, b, iters: int, tol: float = 1e-10):
    """Approximate solution of A·x = b for symmetric positive-definite A given as ``matvec``
    (``iters`` CG steps from x = 0; a step whose residual is already below ``tol`` changes
    nothing). Returns ``(x, residual norm²)``."""
    zeros = jax.tree_util.tree_map(jnp.zeros_like, b)

    def step(_, carry):
        x, r, p, rr = carry
        ap = matvec(p)
        live = rr > tol
        alpha = jnp.where(live, rr / jnp.maximum(tree_dot(p, ap), 1e-30), 0.0)
        x = tree_axpy(alpha, p, x)
        r = tree_axpy(-alpha, ap, r)
        rr_new = tree_dot(r, r)
        beta = jnp.where(live, rr_new / jnp.maximum(rr, 1e-30), 0.0)
        p = jax.tree_util.tree_map(lambda ri, pi: jnp.where(live, ri + beta * pi, pi), r, p)
        return x, r, p, jnp.where(live, rr_new, rr)

    x, _, _, rr = jax.lax.fori_loop(0, iters, step, (zeros, b, b, tree_dot(b, b)))
    return x, rr


def natural_step(grad, x, fvp: Callable, max_kl):
    """The full TRPO step along direction ``x`` (≈ F⁻¹g): ``s = √(2δ / xᵀFx)·x``, and the
    surrogate gain the linear model expects from it, ``g·s``."""
    shs = tree_dot(x, fvp(x))
    scale = jnp.sqrt(2.0 * max_kl / jnp.maximum(shs, 1e-12))
    step = jax.tree_util.tree_map(lambda v: scale * v, x)
    return step, tree_dot(grad, step)


def backtracking_line_search(surrogate_and_kl: Callable, params, step, max_kl, *, iters: int, coef):
    """Try θ + cʲ·step for j = 0 … iters − 1 and take the first that keeps the mean KL ≤ δ and
    improves the surrogate over θ's; none: θ unchanged. ``surrogate_and_kl(θ) -> (L(θ), KL(θ))``.

    Returns ``(params, metrics)`` with ``trpo/accepted`` (0/1), ``trpo/step_fraction`` (cʲ, 0 when
    rejected), ``trpo/kl`` and ``trpo/surrogate_gain`` of the step taken, ``trpo/backtracks``.
    """
    surr0, _ = surrogate_and_kl(params)

    def candidate(j):
        frac = jnp.asarray(coef, jnp.float32) ** j
        new = tree_axpy(frac, step, params)
        surr, kl = surrogate_and_kl(new)
        ok = (kl <= max_kl) & (surr > surr0) & jnp.isfinite(surr) & jnp.isfinite(kl)
        return frac, surr, kl, ok

    def cond(c):
        j, ok, *_ = c
        return (j < iters) & ~ok

    def body(c):
        j = c[0]
        frac, surr, kl, ok = candidate(j)
        return j + 1, ok, frac, surr, kl

    zero = jnp.float32(0.0)
    j, ok, frac, surr, kl = jax.lax.while_loop(cond, body, (jnp.int32(0), jnp.bool_(False), zero, surr0, zero))
    frac = jnp.where(ok, frac, 0.0)
    new = tree_axpy(frac, step, params)
    metrics = {"trpo/accepted": ok.astype(jnp.float32), "trpo/step_fraction": frac,
               "trpo/kl": jnp.where(ok, kl, 0.0), "trpo/surrogate_gain": jnp.where(ok, surr - surr0, 0.0),
               "trpo/backtracks": (j - 1).astype(jnp.float32)}
    return new, metrics
