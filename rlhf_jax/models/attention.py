"""The model's attention: ``softmax(q·kᵀ/√H over the allowed keys) v``, per query head.

Layouts (the KV cache's, so decoding never transposes the cache): q ``[B, T, K, G, H]`` (``G``
query heads per KV head, query head ``n = k*G + g``), k and v ``[B, K, S, H]``, ``allowed [B, T, S]``
(bool: causal and key padding together) → ``[B, T, K, G, H]``. Scores and softmax are float32
whatever the compute dtype. A row with no allowed key (a left-padding query position) averages
all values instead of giving NaN, in every implementation.

``implementation`` (``model.attention`` in a config, ``TransformerConfig.attention``):

- ``"auto"`` (default): several query positions (training, scoring, prefill) go through
  ``jax.nn.dot_product_attention``, which picks cuDNN's fused flash attention on a GPU where it
  applies and XLA's implementation elsewhere; one query position (a decode step against the KV
  cache) is a matrix-vector product per head, done as two einsums on the cache's own layout (no
  transpose of the cache per step), or, on a CPU backend with the optional native kernels, one
  fused native call (``cpu_kernels.decode_attention``).
- ``"xla"`` / ``"cudnn"``: ``jax.nn.dot_product_attention`` with that implementation for every
  call (``"cudnn"`` needs a GPU and bf16/fp16 inputs).
- ``"reference"``: the plain einsum version below for every call (what the tests compare with).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rlhf_jax.models.config import ATTENTION

_NEG = -1e30  # finite "minus infinity": a row with no allowed key averages all values, never NaN


def attention_reference(q, k, v, allowed):
    """Plain-JAX attention in the layouts of the module docstring (the reference for the tests)."""
    h = q.shape[-1]
    scores = jnp.einsum("BTKGH,BKSH->BKGTS", q, k).astype(jnp.float32) / jnp.sqrt(h).astype(jnp.float32)
    scores = jnp.where(allowed[:, None, None], scores, _NEG)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("BKGTS,BKSH->BTKGH", probs, v)


def fused_attention(q, k, v, allowed, implementation: str | None = None):
    """The same through ``jax.nn.dot_product_attention`` (``implementation`` as there: None picks
    cuDNN on a GPU where it applies, else XLA)."""
    B, T, K, G, H = q.shape
    out = jax.nn.dot_product_attention(
        q.reshape(B, T, K * G, H), k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3),
        mask=allowed[:, None], implementation=implementation)
    return out.reshape(B, T, K, G, H)


def attention(q, k, v, allowed, implementation: str = "auto"):
    """Attention by ``implementation`` (see the module docstring)."""
    if implementation == "reference":
        return attention_reference(q, k, v, allowed)
    if implementation in ("xla", "cudnn"):
        return fused_attention(q, k, v, allowed, implementation)
    if implementation != "auto":
        raise ValueError(f"unknown attention implementation {implementation!r}; one of {ATTENTION}")
    if q.shape[1] != 1:
        return fused_attention(q, k, v, allowed)
    from rlhf_jax.models import cpu_kernels  # the optional CPU backend (imports this module)

    if cpu_kernels.decode_attention_applies(q, k, v):
        return cpu_kernels.decode_attention(q[:, 0], k, v, allowed[:, 0])[:, None]
    return attention_reference(q, k, v, allowed)
