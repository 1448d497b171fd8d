"""The KV cache: a plain pytree ``{'layers': {layer_i: {'k', 'v'}}, 'mask', 'index'}``.

``k``/``v`` are preallocated ``[B, K, S, H]`` buffers (the layout attention reads, so decoding
never transposes them) written with ``dynamic_update_slice`` at
``index``; ``mask [B, S]`` marks which slots hold real tokens (left padding of prompts stays 0);
``index`` is the next slot to write (a scalar shared by the batch, since prompts are left-padded).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rlhf_jax.models.config import TransformerConfig


def init_cache(cfg: TransformerConfig, batch_size: int, max_len: int, dtype=None) -> dict:
    dtype = dtype or cfg.jnp_dtype
    shape = (batch_size, cfg.n_kv_heads, max_len, cfg.head_dim)
    layers = {f"layer_{i}": {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}
              for i in range(cfg.n_layers)}
    return {"layers": layers, "mask": jnp.zeros((batch_size, max_len), jnp.int32),
            "index": jnp.zeros((), jnp.int32)}


def grow_cache(cache: dict, max_len: int) -> dict:
    """The same cache with room for ``max_len`` slots (new slots empty; one copy of the buffers).

    A sampler can start with a short cache and grow it in a few steps, so each decode step's
    attention reads a buffer not much longer than the tokens so far."""
    def pad(x):  # k, v [B, K, S, H]; mask [B, S]
        axis = 2 if x.ndim == 4 else 1
        if max_len < x.shape[axis]:
            raise ValueError(f"cannot shrink a cache of length {x.shape[axis]} to {max_len}")
        widths = [(0, 0)] * x.ndim
        widths[axis] = (0, max_len - x.shape[axis])
        return jnp.pad(x, widths)

    return {"layers": jax.tree.map(pad, cache["layers"]), "mask": pad(cache["mask"]),
            "index": cache["index"]}
