"""The two layouts of the layer weights, and the conversion between them.

A config that scans over layers (``cfg.scans_layers``) holds its blocks' weights stacked, one
array per leaf with a leading layer axis, under ``layers`` (``layers/attn/qkv_kernel [L, K, G+2,
H, D]``, logical axes ``('layers', ...)``); the others hold them per layer, ``layer_0`` ...
``layer_{L-1}``. The stacked layout is what makes a scanned step cheap to compile: the gradient,
the gradient norm and the optimizer update see a dozen leaves instead of a dozen per layer (a
GPT-2-small SFT step: 321 instead of 1217 XLA fusions), and the forward scans the stored arrays
directly instead of stacking them on every call.

Hugging Face checkpoints are per layer; ``to_layout`` converts either layout into the one a config
uses (host numpy arrays stay host arrays), and ``save_pretrained`` accepts both.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

STACKED = "layers"


def _layer_names(node: Mapping) -> list[str]:
    names = [k for k in node if isinstance(k, str) and k.startswith("layer_") and k[6:].isdigit()]
    return sorted(names, key=lambda k: int(k[6:]))


def is_stacked(tree: Mapping) -> bool:
    """Whether a model's variables (``{'params': ...}``, or the inner dict) hold stacked layers."""
    inner = tree.get("params", tree)
    return isinstance(inner, Mapping) and STACKED in inner


def _stack(*ws):
    if all(isinstance(w, np.ndarray) for w in ws):
        return np.stack(ws)
    return jnp.stack(ws)


def stack_layers(node: Mapping) -> dict:
    """``node`` with its ``layer_i`` subtrees replaced by one stacked ``layers`` subtree."""
    names = _layer_names(node)
    if not names:
        return dict(node)
    if names != [f"layer_{i}" for i in range(len(names))]:
        raise ValueError(f"layer subtrees are not numbered 0..{len(names) - 1}: {names}")
    out = {k: v for k, v in node.items() if k not in names}
    out[STACKED] = jax.tree.map(_stack, *(node[n] for n in names))
    return out


def unstack_layers(node: Mapping, n_layers: int | None = None) -> dict:
    """``node`` with its stacked ``layers`` subtree replaced by ``layer_0`` ... ``layer_{L-1}``
    (``n_layers`` says L for a subtree without arrays: an optimizer's masked copy)."""
    if STACKED not in node:
        return dict(node)
    stacked = node[STACKED]
    sizes = {np.shape(w)[0] for w in jax.tree.leaves(stacked)} or ({n_layers} if n_layers else set())
    if len(sizes) != 1:
        raise ValueError(f"stacked layer weights disagree on the number of layers: {sorted(sizes)}")
    (n,) = sizes
    out = {k: v for k, v in node.items() if k != STACKED}
    for i in range(n):
        out[f"layer_{i}"] = jax.tree.map(lambda w, i=i: _slice(w, i), stacked)
    return out


def _slice(w, i: int):
    if isinstance(w, jax.ShapeDtypeStruct):  # an abstract leaf (a restore target)
        sharding = w.sharding
        if isinstance(sharding, jax.sharding.NamedSharding):
            sharding = jax.sharding.NamedSharding(sharding.mesh,
                                                  jax.sharding.PartitionSpec(*sharding.spec[1:]))
        return jax.ShapeDtypeStruct(w.shape[1:], w.dtype, sharding=sharding)
    return w[i]


def _blocks(x) -> bool:
    """A dict holding stacked blocks, with arrays or without (an optimizer's masked copy)."""
    return isinstance(x, Mapping) and isinstance(x.get(STACKED), Mapping) and "attn" in x[STACKED]


def _holds_stacked(x) -> bool:
    """A dict of a model's variables with stacked blocks that hold arrays (not an optimizer's
    masked copy of the tree, whose leaves are empty ``MaskedNode``s)."""
    return _blocks(x) and bool(jax.tree.leaves(x[STACKED]))


def unstack_all(tree: Any) -> tuple[Any, bool]:
    """``tree`` (any pytree: a training state with its optimizer moments) with every stacked
    ``layers`` subtree of blocks unstacked (abstract leaves too), and whether there was one."""
    nodes = [x for x in jax.tree_util.tree_leaves(tree, is_leaf=_blocks) if _blocks(x)]
    sizes = {np.shape(w)[0] for x in nodes for w in jax.tree.leaves(x[STACKED])}
    n = sizes.pop() if len(sizes) == 1 else None  # the masked copies' depth, when unambiguous
    out = jax.tree_util.tree_map(lambda x: unstack_layers(x, n) if _blocks(x) else x, tree, is_leaf=_blocks)
    return out, any(_holds_stacked(x) for x in nodes)


def stack_like(tree: Any, target: Any) -> Any:
    """``tree`` (``unstack_all(target)``'s structure) with its layers stacked again wherever
    ``target`` holds them stacked."""
    def back(t, x):
        if not _blocks(t):
            return x
        return stack_layers(x) if _holds_stacked(t) else t  # a masked copy: as the target's

    return jax.tree_util.tree_map(back, target, tree, is_leaf=_blocks)


def to_layout(cfg, variables: Mapping) -> Any:
    """``variables`` (a model's ``{'params': ..., 'lora'?: ...}``, or the inner params dict) in the
    layout ``cfg`` uses: stacked when it scans over layers, per layer otherwise."""
    convert = stack_layers if cfg.scans_layers else unstack_layers
    if "params" in variables and isinstance(variables["params"], Mapping):
        return {k: convert(v) if isinstance(v, Mapping) else v for k, v in variables.items()}
    return convert(variables)


def for_decoding(tree: Any) -> Any:
    """``tree`` with every model's stacked layers unstacked (in any dict holding a ``layers``
    subtree of blocks, at any depth; the rest as it is). A sampler calls it once, before its decode
    loop: a decode step that sliced a stacked kernel would copy it in every step, since a matmul
    reads a whole buffer. The small leaves (biases, norm scales) are unstacked too: each unrolled
    layer of a step then reads only its own arrays, so XLA compiles the layers' fusions once
    instead of once per layer with its slice offsets in them (GPT-2-small's PPO iteration: 461
    kernels instead of 491)."""
    if not isinstance(tree, Mapping):
        return tree
    node = {k: for_decoding(v) if k != STACKED else v for k, v in tree.items()}
    return unstack_layers(node) if _holds_stacked(node) else node


def check_layout(cfg, variables: Mapping, cached: bool = False) -> None:
    """A clear error when ``variables`` are laid out for the other value of ``cfg.scans_layers``
    (a cached call of a scanning config takes either layout: ``for_decoding``)."""
    inner = variables.get("params") if isinstance(variables, Mapping) else None
    if not isinstance(inner, Mapping) or ("embedding" not in inner):
        return
    stacked, per_layer = STACKED in inner, bool(_layer_names(inner))
    if cfg.scans_layers and per_layer and not cached:
        raise ValueError("the params hold their layers one by one (layer_0, ...), but the config scans "
                         "over layers and expects them stacked under 'layers': convert them with "
                         "rlhf_jax.models.to_layout(cfg, params)")
    if not cfg.scans_layers and stacked:
        raise ValueError("the params hold their layers stacked under 'layers', but the config does not "
                         "scan over layers (scan_layers=False or fewer than 4 layers): convert them "
                         "with rlhf_jax.models.to_layout(cfg, params)")
