"""LoRA (Hu et al. 2021) as a pytree transform over the model's parameters.

Adapters are a separate tree ``{path: {'a': [r, in], 'b': [out, r]}}`` for the chosen kernels (with
a leading layer axis, ``[L, r, in]`` and ``[L, out, r]``, on the stacked layers of a model that
scans over them); the model never changes. ``apply_lora(params, adapters, scale)`` returns the parameters with
``W + scale · B·A`` on every adapted kernel (``scale = alpha / rank``), viewing each kernel as its
``[out, in]`` matrix (the model stores kernels output-major): ``qkv_kernel [K, G+2, H, D]`` as
``[K·(G+2)·H, D]``, ``o_kernel [D, N, H]`` as ``[D, N·H]``, the MLP kernels as they are. Training
differentiates a loss of ``apply_lora(base, adapters)`` with respect to ``adapters`` alone, so the
optimizer holds only the adapters; the base (the reference policy) is one copy, shared. ``B`` starts
at zero, so the adapted model starts as the base. The merged parameters are ordinary parameters:
``save_pretrained`` writes them as a Hugging Face directory.

Training uses the unmerged form instead: ``lora_variables`` gives the base with the adapters as a
separate ``'lora'`` variable collection (each kernel's ``a``, ``b``, scale, and with dropout its
rate and key), which the model's projections apply beside the base kernel
(``y = W·x + scale · B·A·drop(x)``, ``transformer._with_lora``). Its gradient reaches the adapters
without the base's weight gradients ``∂L/∂W`` (which the merged form computes in full, then projects),
so a step costs about 4·N FLOPs per token instead of 6·N, and dropout on the adapter input, which
no merged weight can express, is possible. Sampling and evaluation use the merged weights.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

TARGETS = ("qkv_kernel", "o_kernel", "up_kernel", "gate_kernel", "down_kernel")


def _matrix_shape(name: str, shape) -> tuple[int, int]:
    """``(out, in)`` of a kernel viewed as a matrix."""
    if name == "qkv_kernel":
        return math.prod(shape[:-1]), shape[-1]
    return shape[0], math.prod(shape[1:])


def _layer_axis(path, w) -> tuple[int, ...]:
    """``(L,)`` when the kernel at ``path`` is a stack of L layers' kernels (under ``layers``)."""
    stacked = any(isinstance(k, jax.tree_util.DictKey) and k.key == "layers" for k in path)
    return (w.shape[0],) if stacked else ()


def init_lora(params, rng, *, rank: int, targets=TARGETS) -> dict:
    """Adapters for every kernel named in ``targets``: ``a`` Kaiming-uniform-like (std 1/√in),
    ``b`` zero. Keys are the kernels' paths (``jax.tree_util.keystr``)."""
    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, not {rank}")
    adapters = {}
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    keys = jax.random.split(rng, max(len(leaves), 1))
    for (path, w), key in zip(leaves, keys):
        name = jax.tree_util.keystr(path[-1:], simple=True)
        if name not in targets:
            continue
        lead = _layer_axis(path, w)  # (L,) for stacked layers (models.layout), else ()
        out, inp = _matrix_shape(name, w.shape[len(lead):])
        adapters[jax.tree_util.keystr(path)] = {
            "a": jax.random.normal(key, lead + (rank, inp), jnp.float32) / math.sqrt(inp),
            "b": jnp.zeros(lead + (out, rank), jnp.float32)}
    if not adapters:
        raise ValueError(f"no parameter is named like a LoRA target ({', '.join(targets)})")
    return adapters


def apply_lora(params, adapters: dict, scale: float):
    """``params`` with ``W + scale · B·A`` on every adapted kernel (the others as they are)."""
    def one(path, w):
        ad = adapters.get(jax.tree_util.keystr(path))
        if ad is None:
            return w
        delta = (ad["b"] @ ad["a"]).astype(jnp.float32) * scale
        return (w.astype(jnp.float32) + delta.reshape(w.shape)).astype(w.dtype)

    return jax.tree_util.tree_map_with_path(one, params)


@jax.custom_vjp
def adapter_delta(x, a, b, scale):
    """``scale · (x·Aᵀ)·Bᵀ`` (x ``[..., in]``, a ``[r, in]``, b ``[out, r]``), with a backward that
    contracts over the tokens through the rank-r factors: ``∂A = (∂u)ᵀ·x``, ``∂B = ((u)ᵀ·∂y)ᵀ``,
    where XLA left to itself transposes the ``[tokens, in]`` activations (measured on GPT-2-small,
    T=512, B=2: the LoRA gradient 4.3 s against 5.9 s, same values). ``scale`` gets no gradient."""
    return ((x @ a.T) @ b.T) * scale


def _delta_fwd(x, a, b, scale):
    u = x @ a.T
    return (u @ b.T) * scale, (x, a, b, scale, u)


def _delta_bwd(res, g):
    x, a, b, scale, u = res
    gs = g * scale
    du = gs @ b  # [..., r]
    x2, du2, u2, g2 = (t.reshape(-1, t.shape[-1]) for t in (x, du, u, gs))
    return du @ a, du2.T @ x2, (u2.T @ g2).T, jnp.zeros_like(scale)


adapter_delta.defvjp(_delta_fwd, _delta_bwd)


def lora_variables(params, adapters: dict, scale: float, rate: float = 0.0, rng=None):
    """``params`` (a model's ``{'params': ...}``) plus a ``'lora'`` collection laid out like the
    parameters: for each adapted kernel ``{'a', 'b', 'scale'}``, with ``rate > 0`` also ``'rate'`` and
    ``'key'`` (its own dropout key, folded from ``rng``). The model applies ``scale · B·A·drop(x)``
    beside the base kernel."""
    lora: dict = {}
    for i, (path, w) in enumerate(jax.tree_util.tree_flatten_with_path(params["params"])[0]):
        ad = adapters.get(jax.tree_util.keystr((jax.tree_util.DictKey("params"),) + tuple(path)))
        if ad is None:
            continue
        node = lora
        for k in path[:-1]:
            node = node.setdefault(k.key, {})
        lead = _layer_axis(path, w)  # the model scans stacked layers: every leaf gets the layer axis
        node[path[-1].key] = {"a": ad["a"], "b": ad["b"], "scale": jnp.full(lead, scale, jnp.float32)}
        if rate:
            key = jax.random.fold_in(rng, i)
            node[path[-1].key].update(rate=jnp.full(lead, rate, jnp.float32),
                                      key=jax.random.split(key, lead[0]) if lead else key)
    return {**params, "lora": lora}


def lora_loss(loss_fn, base, scale: float):
    """``loss_fn(params, batch, hp)`` as a loss of the adapters alone (``base`` held fixed)."""
    def loss(adapters, batch, hp):
        return loss_fn(lora_variables(jax.lax.stop_gradient(base), adapters, scale), batch, hp)

    return loss


def count(adapters: dict) -> int:
    return sum(x.size for x in jax.tree_util.tree_leaves(adapters))
