"""Training state as a plain pytree, and the optimizer factory.

The learning rate lives inside the optimizer state (``optax.inject_hyperparams``), so it is an
array: a sweep can vmap over it and changing it never recompiles.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any


def make_optimizer(lr: float, *, warmup: int = 0, total_steps: int | None = None,
                   weight_decay: float = 0.0, eps: float = 1e-5, b1: float = 0.9, b2: float = 0.95,
                   max_grad_norm: float = 1.0) -> optax.GradientTransformation:
    """AdamW (eps 1e-5 as in the JAX RLHF reproduction) with global-norm clipping.

    The schedule is a linear warmup then cosine decay to 10% over ``total_steps`` (constant after
    warmup when ``total_steps`` is None); the peak rate is an injected hyperparameter array.
    ``max_grad_norm = 0`` turns clipping off.
    """

    def schedule_factor(count):
        w = jnp.minimum(1.0, (count + 1) / max(warmup, 1)) if warmup else 1.0
        if total_steps:
            frac = jnp.clip(count / total_steps, 0.0, 1.0)
            w = w * (0.1 + 0.9 * 0.5 * (1 + jnp.cos(jnp.pi * frac)))
        return w

    @optax.inject_hyperparams
    def opt(learning_rate):
        return optax.chain(
            optax.clip_by_global_norm(max_grad_norm) if max_grad_norm > 0 else optax.identity(),
            optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
            optax.add_decayed_weights(weight_decay),
            optax.scale_by_schedule(schedule_factor),
            optax.scale(-learning_rate),
        )

    return opt(learning_rate=lr)


def create_state(params, tx: optax.GradientTransformation) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def apply_gradients(state: TrainState, grads, tx: optax.GradientTransformation) -> TrainState:
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    return TrainState(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                      opt_state=opt_state)
