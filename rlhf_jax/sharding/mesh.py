"""The device mesh, the one table of logical-axis rules, and the shardings of any pytree.

Mesh axes are ``(data, fsdp, tensor)``. Batches shard their leading axis over ``(data, fsdp)``;
parameters carry logical axis names (``nn.with_logical_partitioning`` in ``models/transformer.py``)
that :data:`RULES` maps to mesh axes: embeddings and every kernel's model-width axis over
``fsdp`` (ZeRO-3 style: each device holds a slice, gathered per layer by XLA), heads, MLP width
and vocabulary over ``tensor`` (Megatron style). Layers never name a mesh axis: the stacked
layout of a model that scans over layers (``models.layout``) keeps its leading ``layers`` axis
whole on every device.

A pytree's shardings are found by the names on its leaves' paths, not by its type: a leaf whose
path ends like a model parameter's (``.../attn/qkv_kernel``) gets that parameter's sharding, so the
policy, the reference, the reward model's backbone, the critic and Adam's moments of any of them
(which repeat the parameter paths under ``opt_state``) are all sharded alike; everything else
(value heads, step counters, the KL coefficient, RNG keys) is replicated. A mesh axis is dropped
from a dimension it does not divide, so any model runs on any mesh (replicated where it must).
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

RULES: tuple[tuple[str, Any], ...] = (
    ("batch", BATCH_AXES),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("norm", None),
    ("layers", None),
)
"""Logical axis -> mesh axis (or axes, or None: not sharded): the only place that says so."""


@contextlib.contextmanager
def mesh_rules(mesh):
    """``mesh`` as JAX's current mesh and :data:`RULES` as Flax's logical-axis rules, so the
    model's ``nn.with_logical_constraint`` calls become sharding constraints while a step is
    traced (outside, and with no mesh, they are no-ops)."""
    import flax.linen as nn

    if mesh is None:
        yield
        return
    with jax.set_mesh(mesh), nn.logical_axis_rules(RULES):
        yield


def resolve_shape(data: int, fsdp: int, tensor: int, n_devices: int) -> tuple[int, int, int]:
    """The mesh shape for ``mesh.data/fsdp/tensor`` (one of them may be -1: the rest of the
    devices); ValueError naming the keys when the product is not the device count."""
    sizes = {"data": data, "fsdp": fsdp, "tensor": tensor}
    free = [k for k, v in sizes.items() if v == -1]
    bad = [f"mesh.{k}={v}" for k, v in sizes.items() if v == 0 or v < -1]
    if bad:
        raise ValueError(f"{', '.join(bad)}: a mesh axis is a positive size or -1 (the rest)")
    if len(free) > 1:
        raise ValueError(f"only one mesh axis may be -1, not {', '.join('mesh.' + k for k in free)}")
    fixed = math.prod(v for v in sizes.values() if v != -1)
    if free:
        if n_devices % fixed:
            raise ValueError(f"mesh.{free[0]}=-1: the other axes ({fixed} devices) do not divide the "
                             f"{n_devices} devices")
        sizes[free[0]] = n_devices // fixed
    elif fixed != n_devices:
        raise ValueError(f"mesh.data × mesh.fsdp × mesh.tensor = {data} × {fsdp} × {tensor} = {fixed}, "
                         f"but there {'is 1 device' if n_devices == 1 else f'are {n_devices} devices'}")
    return sizes["data"], sizes["fsdp"], sizes["tensor"]


def make_mesh(shape: Sequence[int], devices=None) -> Mesh:
    """A ``(data, fsdp, tensor)`` mesh over ``devices`` (default: all of them, every process's)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(mesh_utils.create_device_mesh(tuple(shape), devices), AXES)


def device_mesh(data: int, fsdp: int, tensor: int) -> Mesh | None:
    """The mesh of ``mesh.data/fsdp/tensor`` over every device of every process, or None when
    there is one device (nothing to shard); ValueError as ``resolve_shape``."""
    n = jax.device_count()
    shape = resolve_shape(data, fsdp, tensor, n)
    return None if n == 1 else make_mesh(shape)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def _rule(name):
    for logical, physical in RULES:
        if logical == name:
            return physical
    raise KeyError(f"no sharding rule for the logical axis {name!r}")


def mesh_spec(logical: Sequence[Any], shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
    """The mesh ``PartitionSpec`` of an array of ``shape`` whose axes have the ``logical`` names:
    the rule's mesh axes, minus those that do not divide the dimension or are already used."""
    used: set[str] = set()
    out = []
    for name, dim in zip(logical, shape):
        phys = None if name is None else _rule(name)
        axes = [] if phys is None else list(phys if isinstance(phys, tuple) else (phys,))
        axes = [a for a in axes if a not in used and mesh.shape[a] > 1]
        while axes and dim % math.prod(mesh.shape[a] for a in axes):
            axes.pop()  # the innermost axis first: (data, fsdp) falls back to data
        used.update(axes)
        out.append(None if not axes else axes[0] if len(axes) == 1 else tuple(axes))
    return PartitionSpec(*out)


def logical_table(*model_cfgs) -> dict[tuple[str, str], tuple]:
    """``{(module, leaf): logical axes}`` of the transformer parameters of the given configs
    (e.g. ``('attn', 'qkv_kernel') -> ('kv_heads', None, 'head_dim', 'embed')``)."""
    from rlhf_jax.models import param_logical_axes

    table = {}
    for cfg in filter(None, model_cfgs):
        specs = param_logical_axes(cfg)
        for path, spec in jax.tree_util.tree_flatten_with_path(
                specs, is_leaf=lambda x: isinstance(x, PartitionSpec))[0]:
            names = path_names(path)
            axes = tuple(spec)
            # one entry per (module, leaf), whatever the layout: tree_shardings restores the
            # stacked layout's leading 'layers' axis
            table[(names[-2], names[-1])] = axes[1:] if axes[:1] == ("layers",) else axes
    return table


def path_names(path) -> list[str]:
    """The names along a pytree key path (``['params', 'layer_0', 'attn', 'qkv_kernel']``)."""
    return jax.tree_util.keystr(path, simple=True, separator="/").split("/")


def tree_shardings(tree, mesh: Mesh, table: dict) -> Any:
    """A ``NamedSharding`` per array leaf of ``tree`` (same structure; see the module docstring)."""
    rep = replicated(mesh)

    def one(path, leaf):
        shape = np.shape(leaf)
        names = path_names(path)
        logical = table.get(tuple(names[-2:])) if len(names) >= 2 else None
        if logical is not None and "layers" in names[:-2] and len(shape) == len(logical) + 1:
            logical = ("layers",) + logical  # the stacked layout (models.layout)
        if logical is None or len(logical) != len(shape):
            return rep
        return NamedSharding(mesh, mesh_spec(logical, shape, mesh))

    return jax.tree_util.tree_map_with_path(one, tree)


def batch_shardings(tree, mesh: Mesh) -> Any:
    """Leading axis of every array leaf over ``(data, fsdp)`` (where it divides), rest replicated."""
    def one(leaf):
        shape = np.shape(leaf)
        if not shape:
            return replicated(mesh)
        return NamedSharding(mesh, mesh_spec(("batch",) + (None,) * (len(shape) - 1), shape, mesh))

    return jax.tree_util.tree_map(one, tree)


def place(tree, shardings):
    """``tree`` put onto the mesh with ``shardings``. A leaf every process holds whole (a host
    array, or an array on this process's devices) becomes a global array of which each process
    transfers only the shards its own devices hold (``jax.make_array_from_callback``): with
    several hosts, each feeds only its share of a batch. A global array is resharded on device."""
    def one(x, s):
        if isinstance(x, jax.Array) and (x.sharding == s or not x.is_fully_addressable):
            return x if x.sharding == s else jax.device_put(x, s)
        if isinstance(x, jax.Array) and jax.process_count() == 1:
            return jax.device_put(x, s)
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, s, lambda index: host[index])

    return jax.tree_util.tree_map(one, tree, shardings)


def shard_shapes(tree) -> Any:
    """The per-device shard shape of every array leaf (what a test checks to see a real split)."""
    return jax.tree_util.tree_map(lambda x: x.sharding.shard_shape(x.shape), tree)
