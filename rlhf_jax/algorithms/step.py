"""The one place that compiles a gradient step (MaxText style).

``make_train_step(loss_fn, tx)`` returns ``step(state, batch, hparams) -> (state, metrics)``,
jitted once, with the state donated (updated in place) and optional shardings for meshes.
``loss_fn(params, batch, hparams) -> (loss, metrics)`` is the house loss signature.
``run_epochs`` is the on-policy update written once: ``epochs × minibatches`` gradient steps over a
rollout batch as nested ``lax.scan`` (purejaxrl style), a fresh permutation per epoch.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from rlhf_jax.algorithms.train_state import TrainState, apply_gradients


def gradient_step(loss_fn: Callable, tx: optax.GradientTransformation, state: TrainState, batch,
                  hparams):
    """Un-jitted step body (usable inside a larger jitted function, e.g. a PPO epoch scan)."""
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, hparams)
    metrics = dict(metrics, **{"optim/grad_norm": optax.global_norm(grads), "optim/loss": loss})
    return apply_gradients(state, grads, tx), metrics


def make_train_step(loss_fn: Callable, tx: optax.GradientTransformation, *, donate: bool = True,
                    in_shardings=None, out_shardings=None):
    def step(state, batch, hparams):
        return gradient_step(loss_fn, tx, state, batch, hparams)

    kw = {}
    if in_shardings is not None:
        kw["in_shardings"] = in_shardings
    if out_shardings is not None:
        kw["out_shardings"] = out_shardings
    return jax.jit(step, donate_argnums=(0,) if donate else (), **kw)


def run_epochs(loss_fn: Callable, tx: optax.GradientTransformation, state: TrainState, data, hparams,
               rng, *, epochs: int, minibatches: int):
    """``epochs`` passes over ``data`` (a dict of ``[B, ...]`` arrays), each a random permutation cut
    into ``minibatches`` equal minibatches (``B % minibatches`` trailing rows of a permutation are
    left out of that pass). Returns ``(state, metrics)`` with every metric averaged over all steps."""
    B = jax.tree_util.tree_leaves(data)[0].shape[0]
    mb_size = B // minibatches

    def epoch(state, key):
        perm = jax.random.permutation(key, B)[: minibatches * mb_size].reshape(minibatches, mb_size)

        def minibatch(state, idx):
            return gradient_step(loss_fn, tx, state, jax.tree_util.tree_map(lambda x: x[idx], data), hparams)

        return jax.lax.scan(minibatch, state, perm)

    state, metrics = jax.lax.scan(epoch, state, jax.random.split(rng, epochs))
    return state, jax.tree_util.tree_map(jnp.mean, metrics)
