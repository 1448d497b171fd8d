"""Several hosts as one mesh, on JAX's own runtime (``jax.distributed``).

``initialize()`` with no arguments lets JAX find the cluster itself (the ``JAX_COORDINATOR_ADDRESS``
/ ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID`` variables, SLURM, a Cloud TPU pod slice); explicit
arguments win. Call it once per process before anything touches a device (the ``run`` command does
so from the config's ``distributed`` section). After it, ``jax.devices()`` lists every process's
devices, a mesh over them spans the hosts, and ``sharding.mesh.place`` makes each host transfer
only its own shards of a batch that every host holds (``jax.make_array_from_callback``); on CPU the
collectives go through gloo.

Every process runs the same program. Only process 0 writes the run directory: ``on_primary``
runs a write there and makes the others wait (``barrier``) until it is done; ``to_host`` brings an
array sharded across hosts to every host (``process_allgather``). None of them touches a device or
initialises a backend in a single-process program, so a sweep's parent process can call them.
"""

from __future__ import annotations

import jax


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
    """``jax.distributed.initialize`` (arguments left None are detected from the environment)."""
    kw = {k: v for k, v in (("coordinator_address", coordinator), ("num_processes", num_processes),
                            ("process_id", process_id)) if v is not None}
    jax.distributed.initialize(**kw)


def _state() -> tuple[int, int]:
    """(process id, process count) as ``jax.distributed`` set them; (0, 1) before or without it."""
    try:
        from jax._src import distributed as d

        gs = d.global_state
        return (int(gs.process_id or 0), int(gs.num_processes or 1)) if gs.client is not None else (0, 1)
    except (ImportError, AttributeError):  # a JAX without that module: ask the runtime
        return jax.process_index(), jax.process_count()


def is_primary() -> bool:
    """Whether this is process 0 (the one that writes logs, files and reports in a multi-host run)."""
    return _state()[0] == 0


def process_count() -> int:
    return _state()[1]


def barrier(name: str) -> None:
    """Every process waits here for the others (no-op with one process)."""
    if process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def on_primary(name: str, fn, *args):
    """``fn(*args)`` on process 0 alone (a write to the run directory), then every process waits
    until it is done; returns its result on process 0, None on the others."""
    out = fn(*args) if is_primary() else None
    barrier(name)
    return out


def to_host(tree):
    """Device arrays as numpy on this host, whole (gathered from every host when sharded across
    them); other leaves unchanged."""
    import numpy as np

    multi = process_count() > 1

    def one(x):
        if not isinstance(x, jax.Array):
            return x
        if multi and not x.is_fully_addressable and not x.is_fully_replicated:
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree_util.tree_map(one, tree)
