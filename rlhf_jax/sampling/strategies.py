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


def _sort_keys(x):
    """int32 keys ordered like the float32 values of ``x`` (-inf lowest; NaN not supported)."""
    b = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.int32)
    return jnp.where(b < 0, b ^ jnp.int32(0x7FFFFFFF), b)


def _bisect_keys(keys, pred, find_max: bool):
    """Per row of ``keys [B, V]``, the largest (``find_max``) or smallest key value ``t`` with
    ``pred(t)`` true, for a predicate monotone in ``t`` that holds at the row's min key (find_max) or
    max key (not find_max). Exact over int32: 32 halvings, each an O(V) pass.

    XLA:CPU sorts a [8, 50257] row block in ~90 ms and ``lax.top_k`` takes ~80 ms, more than a whole
    GPT-2-small decode step; this search over the values' bit patterns takes a few ms.
    """
    lo, hi = keys.min(-1), keys.max(-1)  # [B]

    def step(_, bounds):
        lo, hi = bounds
        diff = hi.astype(jnp.uint32) - lo.astype(jnp.uint32)  # hi >= lo: exact, no overflow
        if find_max:  # invariant: pred(lo); answer in [lo, hi]
            mid = (lo.astype(jnp.uint32) + diff // 2 + (diff & 1)).astype(jnp.int32)  # ceil
            ok = pred(mid)
            return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid - 1)
        mid = (lo.astype(jnp.uint32) + diff // 2).astype(jnp.int32)  # floor; invariant: pred(hi)
        ok = pred(mid)
        return jnp.where(ok, lo, mid + 1), jnp.where(ok, mid, hi)

    lo, hi = jax.lax.fori_loop(0, 32, step, (lo, hi))
    return lo if find_max else hi


def top_k_filter(logits, k: int):
    """Keep the k largest logits of each row, ties at the k-th value included (k static; 0 keeps
    all)."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    keys = _sort_keys(logits)
    # The k-th largest value is the largest t with at least k logits >= t.
    kth = _bisect_keys(keys, lambda t: (keys >= t[:, None]).sum(-1) >= k, find_max=True)
    return jnp.where(keys >= kth[:, None], logits, -jnp.inf)


def top_p_filter(logits, p):
    """Keep the smallest set of most likely tokens whose probability reaches p (p may be traced):
    token i stays iff the probability mass of tokens strictly more likely than i is below p, so
    the most likely token always stays and ties at the boundary stay together. ``p >= 1`` keeps all
    (and skips the search)."""
    p = jnp.asarray(p, jnp.float32)

    def nucleus(logits):
        probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
        keys = _sort_keys(logits)
        # The smallest t whose strictly-higher mass is < p; the mass falls as t rises.
        cut = _bisect_keys(keys, lambda t: jnp.where(keys > t[:, None], probs, 0.0).sum(-1) < p,
                           find_max=False)
        return jnp.where(keys >= cut[:, None], logits, -jnp.inf)

    return jax.lax.cond(jnp.all(p >= 1.0), lambda x: x, nucleus, logits)


MASKED_LOGIT = -1e9
"""The logit of a token outside an action mask: finite (so p·log p stays 0, not NaN), and its
probability underflows to exactly 0 at any temperature the config allows."""


def nucleus_mask(logits, p, temperature=1.0):
    """Boolean ``[..., V]``: the top-p set of ``softmax(logits / temperature)`` (as
    :func:`top_p_filter` keeps it), for logits of any leading shape."""
    flat = scale_temperature(logits, temperature).reshape(-1, logits.shape[-1])
    return (top_p_filter(flat, p) > -jnp.inf).reshape(logits.shape)


def apply_action_mask(logits, keep):
    """Logits with the tokens outside ``keep`` set to :data:`MASKED_LOGIT`."""
    return jnp.where(keep, logits, jnp.asarray(MASKED_LOGIT, logits.dtype))


def first_argmax(x):
    """``argmax`` over the last axis (first index on ties) as a max and a min reduction, which
    XLA:CPU runs ≈2x faster than its variadic argmax reduce (0.4 vs 0.8 ms on [8, 50257])."""
    n = x.shape[-1]
    hit = x == jnp.max(x, axis=-1, keepdims=True)
    return jnp.minimum(jnp.min(jnp.where(hit, jnp.arange(n, dtype=jnp.int32), n), axis=-1), n - 1)


def greedy(rng, logits, temperature=1.0, top_k: int = 0, top_p=1.0):
    del rng, temperature, top_k, top_p
    return first_argmax(logits)


def sample(rng, logits, temperature=1.0, top_k: int = 0, top_p=1.0):
    """Draw from softmax(filter(logits / temperature)) by the Gumbel-max trick (the draws
    ``jax.random.categorical`` makes, with a faster argmax)."""
    scaled = scale_temperature(logits, temperature)
    scaled = top_p_filter(top_k_filter(scaled, top_k), top_p)
    return first_argmax(scaled + jax.random.gumbel(rng, scaled.shape, scaled.dtype))
