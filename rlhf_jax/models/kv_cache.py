"""The KV cache: a plain pytree ``{'layers': {layer_i: {'k', 'v'}}, 'mask', 'index'}``.

``k``/``v`` are preallocated ``[B, K, S, H]`` buffers (the layout attention reads, so decoding
never transposes them) written with ``dynamic_update_slice`` at
``index``; ``mask [B, S]`` marks which slots hold real tokens (left padding of prompts stays 0);
``index`` is the next slot to write (a scalar shared by the batch, since prompts are left-padded).
"""

from __future__ import annotations

import jax.numpy as jnp

from rlhf_jax.models.config import TransformerConfig


def init_cache(cfg: TransformerConfig, batch_size: int, max_len: int, dtype=None) -> dict:
    dtype = dtype or cfg.jnp_dtype
    shape = (batch_size, cfg.n_kv_heads, max_len, cfg.head_dim)
    layers = {f"layer_{i}": {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}
              for i in range(cfg.n_layers)}
    return {"layers": layers, "mask": jnp.zeros((batch_size, max_len), jnp.int32),
            "index": jnp.zeros((), jnp.int32)}
