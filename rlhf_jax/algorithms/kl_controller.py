"""KL coefficient controllers for the reward r = r_φ − β·KL (Ziegler et al. 2019, §2.2).

β is carried as an array in ``KLState`` and passed into the jitted update, so changing it never
recompiles. Every argument may be a traced scalar.

Adaptive:  e = clip(KL / target − 1, −0.2, 0.2);  β ← β·(1 + e·n_steps / horizon)
(typical target 6 nats, horizon 10 000; n_steps = samples/episodes since the last update).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from rlhf_jax.losses.registry import Registry

Array = jax.Array

KL_CONTROLLERS: Registry = Registry("kl controller")


@struct.dataclass
class KLState:
    """Current KL coefficient β (a float32 scalar array)."""

    beta: Array


def init_kl_state(beta0) -> KLState:
    return KLState(beta=jnp.asarray(beta0, jnp.float32))


@KL_CONTROLLERS.register("fixed")
def fixed_kl_update(state: KLState, kl=None, n_steps=None, target=None, horizon=None) -> KLState:
    """Constant β: returns ``state`` unchanged (same signature as the adaptive update)."""
    return state


@KL_CONTROLLERS.register("adaptive")
def adaptive_kl_update(state: KLState, kl, n_steps, target, horizon) -> KLState:
    """Proportional controller driving the measured KL toward ``target``:
    e = clip(kl/target − 1, −0.2, 0.2), β ← β·(1 + e·n_steps/horizon).
    """
    kl = jnp.asarray(kl, jnp.float32)
    e = jnp.clip(kl / jnp.asarray(target, jnp.float32) - 1.0, -0.2, 0.2)
    mult = 1.0 + e * jnp.asarray(n_steps, jnp.float32) / jnp.asarray(horizon, jnp.float32)
    return state.replace(beta=state.beta * mult)
