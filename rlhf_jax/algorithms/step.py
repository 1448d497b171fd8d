"""The one place that compiles a gradient step (MaxText style).

``make_train_step(loss_fn, tx)`` returns ``step(state, batch, hparams) -> (state, metrics)``,
jitted once, with the state donated (updated in place) and, on a device mesh, explicit
shardings (``sharding/jit.py``).
``loss_fn(params, batch, hparams) -> (loss, metrics)`` is the house loss signature.
``run_epochs`` is the on-policy update written once: ``epochs × minibatches`` gradient steps over a
rollout batch as nested ``lax.scan`` (purejaxrl style), a fresh permutation per epoch.

Non-finite guard: every jitted step also returns ``metrics[GUARD_KEY]``, an int32 computed on the
device (0: every guarded metric finite; i + 1: ``guarded_names(keys)[i]`` is the first NaN/Inf one).
The host reads it with the metrics it fetches anyway, and :class:`NonFiniteError` stops the run
before a non-finite state is ever checkpointed.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from rlhf_jax.algorithms.train_state import TrainState, apply_gradients
from rlhf_jax.sharding.jit import jit_step


GUARD_KEY = "guard/nonfinite"
SUPERVISED_GUARDED = ("optim/",)
"""Guarded metrics (a name, or a prefix ending in '/'): loss and gradient norm of a gradient step."""


class TrainingError(RuntimeError):
    """Training went wrong in a way the config or data can fix (CLI exit status 3); ``stage``,
    ``step`` and ``metric`` say where."""

    def __init__(self, message: str, stage: str, step: int, metric: str):
        self.stage, self.step, self.metric = stage, step, metric
        super().__init__(message)


class DegenerateError(TrainingError):
    """A stage finished with a useless result (e.g. a reward model that scores everything alike)."""


class NonFiniteError(TrainingError):
    """A training stage produced a NaN or Inf; the run stops there."""

    def __init__(self, stage: str, step: int, metric: str, last_good: int | None = None):
        self.last_good = last_good
        kept = (f"its newest good checkpoint, {stage} step {last_good}, is kept" if last_good
                else f"no {stage} checkpoint was written yet (the stages before it are kept)")
        super().__init__(f"{stage} step {step}: {metric} is not finite (NaN or Inf), so the run stopped; "
                         f"{kept}: fix the config (e.g. a smaller learning rate) and rerun to resume",
                         stage, step, metric)


def guarded_names(keys, guarded) -> list[str]:
    """The metric names among ``keys`` that the guard checks, in a fixed order."""
    return sorted(k for k in keys if k != GUARD_KEY
                  and any(k == g or (g.endswith("/") and k.startswith(g)) for g in guarded))


def nonfinite_code(metrics: dict, guarded) -> jax.Array:
    """0 when every guarded metric is finite, else 1 + the index of the first that is not."""
    names = guarded_names(metrics, guarded)
    if not names:
        return jnp.int32(0)
    bad = jnp.stack([~jnp.all(jnp.isfinite(metrics[k])) for k in names])
    return jnp.where(bad.any(), jnp.argmax(bad) + 1, 0).astype(jnp.int32)


def nonfinite_metric(code, keys, guarded) -> str | None:
    """The host side of :func:`nonfinite_code`: the metric name a code points at (None for 0)."""
    code = int(code)
    return guarded_names(keys, guarded)[code - 1] if code else None


def accumulated_grads(loss_fn: Callable, params, batch, hparams, micro_batches: int = 1,
                      weight: Callable | None = None):
    """``((loss, metrics), grads)`` of ``loss_fn`` over ``batch``, computed on ``micro_batches``
    equal slices of its leading axis one after another (``lax.scan``: activation memory of one
    slice). The slices' means are combined exactly as (Σ weight·mean) / Σ weight, where
    ``weight(slice)`` is the denominator of the loss's mean on that slice (e.g. its target-token
    count for a token mean; None: equal weights, exact for means over rows)."""
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if micro_batches == 1:
        return grad_fn(params, batch, hparams)
    slices = jax.tree_util.tree_map(
        lambda x: x.reshape(micro_batches, x.shape[0] // micro_batches, *x.shape[1:]), batch)

    def body(acc, mb):
        out = grad_fn(params, mb, hparams)
        w = jnp.float32(1.0) if weight is None else jnp.asarray(weight(mb), jnp.float32)
        total, sums = acc
        return (total + w, jax.tree_util.tree_map(lambda a, b: a + w * b, sums, out)), None

    zeros = jax.tree_util.tree_map(jnp.zeros_like, jax.eval_shape(grad_fn, params,
                                                                    jax.tree_util.tree_map(lambda x: x[0], slices),
                                                                    hparams))
    (total, sums), _ = jax.lax.scan(body, (jnp.float32(0.0), zeros), slices)
    return jax.tree_util.tree_map(lambda x: (x / jnp.maximum(total, 1e-12)).astype(x.dtype), sums)


def gradient_step(loss_fn: Callable, tx: optax.GradientTransformation, state: TrainState, batch,
                  hparams, micro_batches: int = 1, weight: Callable | None = None):
    """Un-jitted step body (usable inside a larger jitted function, e.g. a PPO epoch scan)."""
    (loss, metrics), grads = accumulated_grads(loss_fn, state.params, batch, hparams, micro_batches, weight)
    metrics = dict(metrics, **{"optim/grad_norm": optax.global_norm(grads), "optim/loss": loss})
    return apply_gradients(state, grads, tx), metrics


def make_train_step(loss_fn: Callable, tx: optax.GradientTransformation, *, donate: bool = True,
                    mesh=None, table: dict | None = None, micro_batches: int = 1,
                    weight: Callable | None = None):
    """The jitted ``step(state, batch, hparams)``; on a ``mesh`` with explicit shardings (the state
    by the parameter rules of ``table`` (``sharding.logical_table``), the batch over data × fsdp);
    gradients accumulated over ``micro_batches`` slices of the batch (``accumulated_grads``)."""
    def step(state, batch, hparams):
        state, metrics = gradient_step(loss_fn, tx, state, batch, hparams, micro_batches, weight)
        return state, dict(metrics, **{GUARD_KEY: nonfinite_code(metrics, SUPERVISED_GUARDED)})

    return jit_step(step, mesh, table, batch_argnums=(1,), donate_argnums=(0,) if donate else ())


def run_epochs(loss_fn: Callable, tx: optax.GradientTransformation, state: TrainState, data, hparams,
               rng, *, epochs: int, minibatches: int):
    """``epochs`` passes over ``data`` (a dict of ``[B, ...]`` arrays), each a random permutation cut
    into ``minibatches`` equal minibatches (``B % minibatches`` trailing rows of a permutation are
    left out of that pass). Returns ``(state, metrics)`` with every metric averaged over all steps.
    Each step's ``hparams`` carry its own ``dropout_rng`` (LoRA dropout in the loss)."""
    B = jax.tree_util.tree_leaves(data)[0].shape[0]
    mb_size = B // minibatches

    def epoch(state, key):
        perm = jax.random.permutation(key, B)[: minibatches * mb_size].reshape(minibatches, mb_size)

        def minibatch(state, xs):
            idx, k = xs
            return gradient_step(loss_fn, tx, state, jax.tree_util.tree_map(lambda x: x[idx], data),
                                 dict(hparams, dropout_rng=k))

        return jax.lax.scan(minibatch, state, (perm, jax.random.split(jax.random.fold_in(key, 7), minibatches)))

    state, metrics = jax.lax.scan(epoch, state, jax.random.split(rng, epochs))
    return state, jax.tree_util.tree_map(jnp.mean, metrics)
