"""Scalar heads on the LM's final hidden states, kept as separate parameter subtrees.

* Reward head (Stiennon et al. 2020; Ziegler et al. 2019): ``r = h_last · w + b`` read at the last
  non-pad token of each row, ``w ~ N(0, 1/sqrt(d_model + 1))``.
* Value head: ``V_t = h_t · w + b`` per token, zero- or small-initialised (the critic).

A policy, critic and reward model can share one backbone (head on the policy params) or not.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def init_reward_head(rng, d_model: int) -> dict:
    w = jax.random.normal(rng, (d_model,), jnp.float32) / jnp.sqrt(d_model + 1.0)
    return {"kernel": w, "bias": jnp.zeros((), jnp.float32)}


def init_value_head(rng, d_model: int, scale: float = 0.0) -> dict:
    w = jax.random.normal(rng, (d_model,), jnp.float32) * scale
    return {"kernel": w, "bias": jnp.zeros((), jnp.float32)}


def last_token_index(mask):
    """Index of the last non-pad position of each row (works for left and right padding)."""
    T = mask.shape[-1]
    return T - 1 - jnp.argmax(jnp.flip(mask > 0, axis=-1), axis=-1)


def token_scalars(head: dict, hidden):
    """Per-token scalar ``[B, T]`` (value head)."""
    return hidden.astype(jnp.float32) @ head["kernel"] + head["bias"]


def last_token_scalar(head: dict, hidden, mask):
    """Scalar at the last non-pad token ``[B]`` (reward head)."""
    idx = last_token_index(mask)
    h = jnp.take_along_axis(hidden, idx[:, None, None], axis=1)[:, 0]
    return h.astype(jnp.float32) @ head["kernel"] + head["bias"]


def init_mlp_head(rng, d_in: int, d_out: int, hidden: int | None = None, out_scale: float = 0.01) -> dict:
    """A two-layer head ``relu(h·W1 + b1)·W2 + b2`` (ILQL's Q and V heads, as trlx builds them);
    the output layer starts small, so the head's values start near 0."""
    hidden = hidden or 2 * d_in
    k1, k2 = jax.random.split(rng)
    return {"w1": jax.random.normal(k1, (d_in, hidden), jnp.float32) / jnp.sqrt(d_in),
            "b1": jnp.zeros((hidden,), jnp.float32),
            "w2": jax.random.normal(k2, (hidden, d_out), jnp.float32) * out_scale / jnp.sqrt(hidden),
            "b2": jnp.zeros((d_out,), jnp.float32)}


def mlp_head(head: dict, hidden):
    """``[..., d_in] -> [..., d_out]`` float32."""
    h = jax.nn.relu(hidden.astype(jnp.float32) @ head["w1"] + head["b1"])
    return h @ head["w2"] + head["b2"]
