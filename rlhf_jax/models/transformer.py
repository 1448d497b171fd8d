"""One Linen decoder for the GPT-2, Llama and Qwen2 families.

Pre-norm blocks: ``x += Attn(Norm(x)); x += MLP(Norm(x))``, then a final norm and the LM head
(tied to the token embedding or not). Attention is causal with a key padding mask; positions are
derived from the attention mask (``cumsum(mask) - 1``) so a left-padded prompt behaves exactly like
the unpadded one. The KV cache is a plain pytree (see ``kv_cache.py``) passed in and returned.

Parameter tree under ``params`` (the Hugging Face converter in ``checkpoint/hf.py`` relies on it)::

    embedding [V, D]                pos_embedding [L, D]          (learned positions only)
    layer_{i}/attn_norm/{scale, bias?}                            (bias: LayerNorm only)
    layer_{i}/attn/qkv_kernel [K, G+2, H, D]    qkv_bias [K, G+2, H]    (qkv_bias)
    layer_{i}/attn/o_kernel [D, N, H]           o_bias [D]              (out_bias)
    layer_{i}/mlp_norm/{scale, bias?}
    layer_{i}/mlp/{gate_kernel? [F, D], up_kernel [F, D], down_kernel [D, F]}, {up,down}_bias
    final_norm/{scale, bias?}       lm_head [V, D]                (untied only)

With ``cfg.scans_layers`` the blocks' weights are stored stacked instead: ``layers/attn/qkv_kernel
[L, K, G+2, H, D]`` and so on, one array per leaf with a leading layer axis (logical axis
``'layers'``); ``models.layout.to_layout`` converts between the two layouts.

Every kernel is stored output-major, ``[out, in]`` (torch ``Linear``'s layout, and the embedding's):
a decode step multiplies a handful of rows by each weight, and XLA:CPU streams an ``[out, in]``
weight ≈1.3x faster than an ``[in, out]`` one in that regime (``experiments/bench_generate.py``).
Queries, keys and values are one kernel, grouped by KV head: for KV head ``k``, rows ``0..G-1`` are
its ``G`` query heads (query head ``n = k*G + g``), row ``G`` its key and row ``G+1`` its value. One
matmul instead of three (each call has a fixed cost that dominates small decode matmuls), and the
``kv_heads`` axis still shards q, k and v consistently. Attention is ``attention.attention``
(``jax.nn.dot_product_attention`` for several query positions: cuDNN flash attention on a GPU
where it applies; ``cfg.attention`` picks another implementation). Every weight matmul goes
through ``cpu_kernels.linear``: plain JAX, except for float32 decode steps when the backend is an
x86-64 CPU, which take the optional native kernels (matmuls ≈1.5x and decode attention ≈2x
XLA:CPU's there; ``experiments/bench_cpu_linear.py``).

``cfg.remat`` rematerialises each block in the backward pass (``jax.checkpoint`` with the chosen
policy: activation memory for recomputation); ``cfg.scans_layers`` runs the blocks of an uncached
forward, and a cached call on the stacked weights (a prefill), as one ``nn.scan`` over them
(compile time flat in depth); a decode step runs the layers one by one on per-layer weights.

Einsum letters: B batch, T query positions, S key positions, D model, N query heads, K kv heads,
G query heads per kv head, H head dim, F mlp, V vocab.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from rlhf_jax.models.attention import attention
from rlhf_jax.models.config import REMAT_POLICIES, TransformerConfig
from rlhf_jax.models.cpu_kernels import linear
from rlhf_jax.models.layout import check_layout
from rlhf_jax.models.lora import adapter_delta

Array = jax.Array


def _param(module, name, init, shape, axes, dtype):
    return module.param(name, nn.with_logical_partitioning(init, axes), shape, dtype)


def _with_lora(module, name: str, x, y):
    """``y = x·Wᵀ`` plus ``scale · drop(x)·Aᵀ·Bᵀ``, the LoRA adapter on kernel ``name``, when the
    variables carry a ``'lora'`` collection for it (``models.lora.lora_variables``: the unmerged
    form training uses); else ``y`` as it is. With a rate: inverted dropout on the adapter's input."""
    if not module.has_variable("lora", name):
        return y
    ad = module.get_variable("lora", name)
    xf = x.astype(jnp.float32)
    if "rate" in ad:
        keep = 1.0 - ad["rate"]
        xf = jnp.where(jax.random.bernoulli(ad["key"], keep, x.shape), xf / keep, 0.0)
    return y + adapter_delta(xf, ad["a"], ad["b"], ad["scale"]).astype(y.dtype)


class Norm(nn.Module):
    cfg: TransformerConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        d = x.shape[-1]
        xf = x.astype(jnp.float32)
        scale = _param(self, "scale", nn.initializers.ones, (d,), ("norm",), cfg.jnp_param_dtype)
        if cfg.norm == "layernorm":
            bias = _param(self, "bias", nn.initializers.zeros, (d,), ("norm",), cfg.jnp_param_dtype)
            mean = xf.mean(-1, keepdims=True)
            var = jnp.square(xf - mean).mean(-1, keepdims=True)
            y = (xf - mean) * jax.lax.rsqrt(var + cfg.norm_eps) * scale + bias
        else:
            y = xf * jax.lax.rsqrt(jnp.square(xf).mean(-1, keepdims=True) + cfg.norm_eps)
            y = y.astype(x.dtype).astype(jnp.float32) * scale
        return y.astype(cfg.jnp_dtype)


def rope(x: Array, positions: Array, theta: float) -> Array:
    """Rotary embedding (Su et al. 2021), HF "rotate_half" layout. x: [B, T, N, H]; positions: [B, T]."""
    h = x.shape[-1]
    inv_freq = 1.0 / (theta ** (jnp.arange(0, h, 2, dtype=jnp.float32) / h))
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, H/2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(emb), jnp.sin(emb)
    xf = x.astype(jnp.float32)
    x1, x2 = xf[..., : h // 2], xf[..., h // 2:]
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return (xf * cos + rotated * sin).astype(x.dtype)


class Attention(nn.Module):
    cfg: TransformerConfig

    @nn.compact
    def __call__(self, x, positions, key_mask, q_offset, layer_cache):
        """x [B,T,D]; key_mask [B,S]; q_offset: index of x's first position among the S keys (with a
        cache, S is the cache length)."""
        cfg = self.cfg
        D, N, K, H = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        pdt, dt = cfg.jnp_param_dtype, cfg.jnp_dtype
        init = nn.initializers.normal(0.02)

        B, T = x.shape[:2]
        G = N // K
        axes = ("kv_heads", None, "head_dim")
        w = _param(self, "qkv_kernel", init, (K, G + 2, H, D), axes + ("embed",), pdt)
        # One plain matmul against the [(N+2K)·H, D] view (a free reshape): no relayout per step.
        qkv = _with_lora(self, "qkv_kernel", x, linear(x, w.reshape(K * (G + 2) * H, D).astype(dt)))
        qkv = qkv.reshape(B, T, K, G + 2, H)
        if cfg.qkv_bias:
            qkv = qkv + _param(self, "qkv_bias", nn.initializers.zeros, (K, G + 2, H), axes, pdt).astype(dt)
        q = qkv[:, :, :, :G].reshape(B, T, N, H)
        k, v = qkv[:, :, :, G], qkv[:, :, :, G + 1]  # [B, T, K, H]
        if cfg.positions == "rope":
            q = rope(q, positions, cfg.rope_theta)
            k = rope(k, positions, cfg.rope_theta)

        # Keys/values live as [B, K, S, H] (the cache layout) so decoding never transposes the cache.
        k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
        new_cache = None
        if layer_cache is not None:
            idx = (0, 0, q_offset, 0)
            k = jax.lax.dynamic_update_slice(layer_cache["k"], k.astype(layer_cache["k"].dtype), idx)
            v = jax.lax.dynamic_update_slice(layer_cache["v"], v.astype(layer_cache["v"].dtype), idx)
            new_cache = {"k": k, "v": v}
            k, v = k.astype(dt), v.astype(dt)

        S = k.shape[2]
        qg = q.reshape(B, T, K, G, H)
        q_pos = q_offset + jnp.arange(T)
        causal = jnp.arange(S)[None, :] <= q_pos[:, None]  # [T, S]
        allowed = causal[None, :, :] & (key_mask[:, None, :] > 0)  # [B, T, S]
        out = attention(qg, k, v, allowed, cfg.attention).reshape(B, T, N, H)
        wo = _param(self, "o_kernel", init, (D, N, H), ("embed", "heads", "head_dim"), pdt)
        out = out.reshape(B, T, N * H)
        y = _with_lora(self, "o_kernel", out, linear(out, wo.reshape(D, N * H).astype(dt)))
        if cfg.out_bias:
            y = y + _param(self, "o_bias", nn.initializers.zeros, (D,), ("embed",), pdt).astype(dt)
        return y, new_cache


class MLP(nn.Module):
    cfg: TransformerConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        D, F = cfg.d_model, cfg.d_ff
        pdt, dt = cfg.jnp_param_dtype, cfg.jnp_dtype
        init = nn.initializers.normal(0.02)

        def dense(name, n_out, n_in, axes, inp):  # kernel [out, in]
            w = _param(self, f"{name}_kernel", init, (n_out, n_in), axes, pdt)
            y = _with_lora(self, f"{name}_kernel", inp, linear(inp, w.astype(dt)))
            if cfg.mlp_bias:
                y = y + _param(self, f"{name}_bias", nn.initializers.zeros, (n_out,), axes[:1], pdt).astype(dt)
            return y

        up = dense("up", F, D, ("mlp", "embed"), x)
        if cfg.activation == "silu_glu":
            h = jax.nn.silu(dense("gate", F, D, ("mlp", "embed"), x)) * up
        else:
            h = jax.nn.gelu(up, approximate=True)
        return dense("down", D, F, ("embed", "mlp"), h)


class Block(nn.Module):
    cfg: TransformerConfig

    @nn.compact
    def __call__(self, x, positions, key_mask, q_offset, layer_cache):
        h, new_cache = Attention(self.cfg, name="attn")(
            Norm(self.cfg, name="attn_norm")(x), positions, key_mask, q_offset, layer_cache)
        x = x + h
        x = x + MLP(self.cfg, name="mlp")(Norm(self.cfg, name="mlp_norm")(x))
        return x, new_cache


def positions_from_mask(mask: Array) -> Array:
    """Position ids for (left-)padded rows: ``cumsum(mask) - 1`` clipped at 0."""
    return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)


class Transformer(nn.Module):
    """Decoder LM. ``__call__`` returns ``(logits f32 [B,T,V], hidden [B,T,D], new_cache)``.

    ``last_only``: logits of the last position only (``[B, 1, V]``; prefill needs no more).
    ``logits_range``: ``(start, stop)``, logits of those positions only (the LM head is the largest
    matmul of a forward at a real vocabulary; RL needs it at the response positions alone).
    """

    cfg: TransformerConfig

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, cache=None, last_only=False, logits_range=None):
        cfg = self.cfg
        B, T = input_ids.shape
        if attention_mask is None:
            attention_mask = jnp.ones((B, T), jnp.int32)
        attention_mask = attention_mask.astype(jnp.int32)
        if cache is None:
            q_offset = 0
            key_mask = attention_mask
            positions = positions_from_mask(attention_mask)
        else:
            q_offset = cache["index"]
            key_mask = jax.lax.dynamic_update_slice(cache["mask"], attention_mask, (0, q_offset))
            # Real tokens already in the cache, plus the running count over the new ones. (Not a
            # cumsum over the whole cache: XLA:CPU lowers cumsum as multi-pass reduce-windows, which
            # made each decode step's cost grow with the cache length.)
            before = jnp.sum(jnp.where(jnp.arange(key_mask.shape[1]) < q_offset, key_mask, 0), axis=-1)
            positions = jnp.maximum(before[:, None] + jnp.cumsum(attention_mask, axis=-1) - 1, 0)

        embed = _param(self, "embedding", nn.initializers.normal(0.02), (cfg.vocab_size, cfg.d_model),
                       ("vocab", "embed"), cfg.jnp_param_dtype)
        # On a mesh the table's width is split over fsdp while the tokens are split by batch: the
        # lookup reads a table gathered over fsdp (as every FSDP weight is, per use), so XLA need not
        # reshard the looked-up rows (no-op without the mesh's rules: sharding.jit).
        x = nn.with_logical_constraint(embed, ("vocab", None)).astype(cfg.jnp_dtype)[input_ids]
        if cfg.positions == "learned":
            pos_table = _param(self, "pos_embedding", nn.initializers.normal(0.01),
                               (cfg.max_len, cfg.d_model), (None, "embed"), cfg.jnp_param_dtype)
            x = x + pos_table.astype(cfg.jnp_dtype)[positions]

        new_layers = {}
        policy = REMAT_POLICIES[cfg.remat]
        remat = cfg.remat != "none" and cache is None and not self.is_initializing()
        names = self.variables.get("params", {})
        if cfg.scans_layers and (cache is None or "layer_0" not in names):
            # One compiled block for every layer, scanned over the stacked weights (models.layout).
            # A cached call (a prefill) scans each layer's cache entry with it: the entries are
            # stacked for the scan and handed back per layer, as decoding reads them.
            block_cls = nn.remat(Block, policy=policy, prevent_cse=False) if remat else Block
            stacked_cache = None if cache is None else jax.tree.map(
                lambda *c: jnp.stack(c), *(cache["layers"][f"layer_{i}"] for i in range(cfg.n_layers)))
            blocks = nn.scan(block_cls, variable_axes={"params": 0, "lora": 0}, split_rngs={"params": True},
                             in_axes=(nn.broadcast,) * 3 + (nn.broadcast if cache is None else 0,),
                             length=cfg.n_layers, metadata_params={nn.PARTITION_NAME: "layers"})
            x, out_cache = blocks(cfg, name="layers")(x, positions, key_mask, q_offset, stacked_cache)
            if cache is not None:
                new_layers = {f"layer_{i}": jax.tree.map(lambda c, i=i: c[i], out_cache)
                              for i in range(cfg.n_layers)}
        else:
            # Unrolled, one block per layer: a config that does not scan, or a cached call of one
            # that does on ``layout.for_decoding``'s per-layer weights (a sampler makes them once
            # before its decode loop).
            block_cls = nn.remat(Block, policy=policy) if remat else Block
            for i in range(cfg.n_layers):
                layer_cache = None if cache is None else cache["layers"][f"layer_{i}"]
                x, lc = block_cls(cfg, name=f"layer_{i}")(x, positions, key_mask, q_offset, layer_cache)
                new_layers[f"layer_{i}"] = lc
        hidden = Norm(cfg, name="final_norm")(x)
        out_hidden = hidden[:, -1:] if last_only else hidden
        if logits_range is not None:
            out_hidden = out_hidden[:, logits_range[0]:logits_range[1]]

        if cfg.tie_embeddings:
            logits = linear(out_hidden, embed.astype(cfg.jnp_dtype))
        else:
            head = _param(self, "lm_head", nn.initializers.normal(0.02), (cfg.vocab_size, cfg.d_model),
                          ("vocab", "embed"), cfg.jnp_param_dtype)
            logits = linear(out_hidden, head.astype(cfg.jnp_dtype))

        new_cache = None
        if cache is not None:
            new_cache = {"layers": new_layers, "mask": key_mask, "index": cache["index"] + T}
        return logits.astype(jnp.float32), hidden, new_cache


def init_params(cfg: TransformerConfig, rng: Array) -> dict[str, Any]:
    """Fresh parameters ``{'params': ...}`` (plain arrays; logical axes via ``param_logical_axes``)."""
    dummy = jnp.zeros((1, 2), jnp.int32)
    return nn.meta.unbox(Transformer(cfg).init(rng, dummy))


def param_logical_axes(cfg: TransformerConfig):
    """A pytree like the params whose leaves are ``PartitionSpec``s of logical axis names."""
    dummy = jnp.zeros((1, 2), jnp.int32)
    boxed = jax.eval_shape(lambda r: Transformer(cfg).init(r, dummy), jax.random.PRNGKey(0))
    return nn.get_partition_spec(boxed)


def forward(cfg: TransformerConfig, params, input_ids, attention_mask=None, cache=None, *,
            last_only: bool = False, logits_range: tuple[int, int] | None = None):
    """``(logits f32 [B,T,V], hidden [B,T,D], new_cache)``; pure, jit it with cfg static."""
    check_layout(cfg, params, cached=cache is not None)
    return Transformer(cfg).apply(params, input_ids, attention_mask, cache, last_only, logits_range)


def logits(cfg: TransformerConfig, params, input_ids, attention_mask=None) -> Array:
    """Float32 logits [B, T, V] of a full (uncached) forward pass."""
    return forward(cfg, params, input_ids, attention_mask)[0]
