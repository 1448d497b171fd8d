"""``jit`` with explicit in/out shardings on a mesh, for the house step signatures.

``step(state, ..., batch, ...) -> (state, metrics)``: the state (and every other non-batch
argument: frozen reference / reward-model params, hyperparameters) is sharded by the parameter
rules (``mesh.tree_shardings``), batch arguments over ``(data, fsdp)``; the new state comes back
with exactly the input state's shardings (so it is donated in place and the next call needs no
resharding) and the metrics replicated. Without a mesh this is ``jax.jit`` with the donation, and
the donated arguments placed on the default device first (:class:`CommittedStep`).
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax

from rlhf_jax.sharding.mesh import batch_shardings, mesh_rules, place, replicated, tree_shardings


class ShardedStep:
    """A jitted step whose shardings are fixed from its first call's arguments."""

    def __init__(self, fn: Callable, mesh, table: dict, *, batch_argnums: Sequence[int] = (),
                 donate_argnums: Sequence[int] = (0,)):
        self.fn, self.mesh, self.table = fn, mesh, table
        self.batch_argnums, self.donate_argnums = tuple(batch_argnums), tuple(donate_argnums)
        self._jitted = None
        self._in = None

    def shardings(self, args) -> tuple:
        return tuple(batch_shardings(a, self.mesh) if i in self.batch_argnums
                     else tree_shardings(a, self.mesh, self.table) for i, a in enumerate(args))

    def __call__(self, *args):
        if self._jitted is None:
            self._in = self.shardings(args)
            self._jitted = jax.jit(self.fn, in_shardings=self._in,
                                   out_shardings=(self._in[0], replicated(self.mesh)),
                                   donate_argnums=self.donate_argnums)
        with mesh_rules(self.mesh):  # the model's activation constraints, while it is traced
            return self._jitted(*(place(a, s) for a, s in zip(args, self._in)))


class CommittedStep:
    """``jax.jit(fn, donate_argnums)`` whose donated arguments are committed to the default device
    before each call. A fresh state mixes committed leaves (restored or copied parameters) with
    uncommitted ones (``jnp.zeros`` counters, optimizer moments); the step's outputs are all
    committed, and jit keys its compiled programs on commitment as well as on shapes, so without
    this the second call would compile the whole step again. Other attributes (``lower``,
    ``_cache_size``) are the jitted function's."""

    def __init__(self, fn: Callable, donate_argnums: Sequence[int]):
        self._jitted = jax.jit(fn, donate_argnums=tuple(donate_argnums))
        self.donate_argnums = tuple(donate_argnums)

    def __call__(self, *args):
        args = tuple(commit(a) if i in self.donate_argnums else a for i, a in enumerate(args))
        return self._jitted(*args)

    def __getattr__(self, name):
        return getattr(self._jitted, name)


def commit(tree):
    """``tree`` with every leaf a jax.Array committed to a device (uncommitted ones and host
    arrays put on the default device; committed ones as they are, no copy)."""
    def one(x):
        if isinstance(x, jax.core.Tracer):  # called inside a trace (a vmapped or nested step)
            return x
        if not isinstance(x, jax.Array):
            return jax.device_put(x, jax.local_devices()[0])
        return x if x.committed else jax.device_put(x, next(iter(x.devices())))  # no copy

    return jax.tree_util.tree_map(one, tree)


def jit_step(fn: Callable, mesh=None, table: dict | None = None, *, batch_argnums: Sequence[int] = (),
             donate_argnums: Sequence[int] = (0,)):
    """A :class:`CommittedStep` (``jax.jit`` with the donation) without a mesh, a
    :class:`ShardedStep` with one."""
    if mesh is None:
        return CommittedStep(fn, donate_argnums)
    return ShardedStep(fn, mesh, table or {}, batch_argnums=batch_argnums, donate_argnums=donate_argnums)


def sharded_init(fn: Callable, mesh, table: dict, *args):
    """``fn(*args)`` computed by ``jit`` with the rules' out-shardings, so the result (e.g. a train
    state: Adam's moments are twice the parameters) is created sharded, never whole on one device."""
    from rlhf_jax.sharding.mesh import tree_shardings

    with mesh_rules(mesh):
        shapes = jax.eval_shape(fn, *args)
        return jax.jit(fn, out_shardings=tree_shardings(shapes, mesh, table))(*args)
