"""Next-token strategies as pure functions of a logits row ``[B, V]``.

Filtering returns logits with disallowed tokens set to ``-inf``; the token is then drawn from the
filtered, temperature-scaled distribution (Holtzman et al. 2020 for top-p). The logprob that PPO
needs is the one of the *temperature-scaled, unfiltered* distribution (see ``generate``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def scale_temperature(logits, temperature):
    return logits / jnp.maximum(jnp.asarray(temperature, jnp.float32), 1e-6)


def top_k_filter(logits, k: int):
    """Keep the k largest logits of each row (k static; 0 keeps all)."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = jax.lax.top_k(logits, k)[0][..., -1:]
    return jnp.where(logits >= kth, logits, -jnp.inf)


def top_p_filter(logits, p):
    """Keep the smallest set of most likely tokens whose probability reaches p (p may be traced)."""
    sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly above each sorted token
    keep_sorted = before < p
    keep_sorted = keep_sorted.at[..., 0].set(True)
    threshold = jnp.min(jnp.where(keep_sorted, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits >= threshold, logits, -jnp.inf)


def greedy(rng, logits, temperature=1.0, top_k: int = 0, top_p=1.0):
    del rng, temperature, top_k, top_p
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)


def sample(rng, logits, temperature=1.0, top_k: int = 0, top_p=1.0):
    """Draw from softmax(filter(logits / temperature))."""
    scaled = scale_temperature(logits, temperature)
    scaled = top_p_filter(top_k_filter(scaled, top_k), top_p)
    return jax.random.categorical(rng, scaled, axis=-1).astype(jnp.int32)
