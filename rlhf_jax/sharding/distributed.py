"""Several hosts as one mesh, on JAX's own runtime (``jax.distributed``).

``initialize()`` with no arguments lets JAX find the cluster itself (the ``JAX_COORDINATOR_ADDRESS``
/ ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID`` variables, SLURM, a Cloud TPU pod slice); explicit
arguments win. Call it once per process before anything touches a device. After it,
``jax.devices()`` lists every process's devices, a mesh over them spans the hosts, and
``sharding.mesh.place`` makes each host transfer only its own shards of a batch that every host
holds (``jax.make_array_from_callback``); on CPU the collectives go through gloo.
"""

from __future__ import annotations

import jax


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
    """``jax.distributed.initialize`` (arguments left None are detected from the environment)."""
    kw = {k: v for k, v in (("coordinator_address", coordinator), ("num_processes", num_processes),
                            ("process_id", process_id)) if v is not None}
    jax.distributed.initialize(**kw)


def is_primary() -> bool:
    """Whether this is process 0 (the one that writes logs and reports in a multi-host run)."""
    return jax.process_index() == 0
