"""One process of a two-process data-parallel run on localhost (run by test_multihost.py).

    python tests/sharding/multihost_check.py PORT PROCESS_ID OUT.json

Both processes form one 2-device CPU mesh through ``jax.distributed`` (gloo collectives), hold the
same global batches, feed only their own rows to the mesh (``sharding.mesh.place``), and take two
SFT steps; process 0 writes the losses and the updated parameters (replicated: its own copy).
"""

from __future__ import annotations

import json
import sys

import jax
import numpy as np


def batches():
    rng = np.random.default_rng(0)
    ids = rng.integers(2, 64, (8, 12)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[::3, :3] = 0
    return [{"input_ids": ids, "attention_mask": mask, "loss_mask": mask},
            {"input_ids": ids[::-1].copy(), "attention_mask": mask[::-1].copy(), "loss_mask": mask[::-1].copy()}]


def train(mesh):
    """Two SFT steps from a fixed init: (losses, final params as host arrays)."""
    from rlhf_jax.algorithms.sft import make_lm_loss
    from rlhf_jax.algorithms.step import make_train_step
    from rlhf_jax.algorithms.train_state import create_state, make_optimizer
    from rlhf_jax.models import get_preset, init_params
    from rlhf_jax.sharding.mesh import logical_table

    cfg = get_preset("tiny", vocab_size=64, max_len=16, n_layers=2)
    tx = make_optimizer(1e-2)
    kw = {} if mesh is None else {"mesh": mesh, "table": logical_table(cfg)}
    step = make_train_step(make_lm_loss(cfg), tx, **kw)
    state = create_state(init_params(cfg, jax.random.PRNGKey(0)), tx)
    losses = []
    for b in batches():
        state, m = step(state, b, None)
        losses.append(float(np.asarray(m["optim/loss"].addressable_data(0))))
    params = jax.tree_util.tree_map(lambda x: np.asarray(x.addressable_data(0)), state.params)
    return losses, params


def main(port: int, pid: int, out: str):
    from rlhf_jax.sharding.distributed import initialize
    from rlhf_jax.sharding.mesh import make_mesh

    initialize(coordinator=f"localhost:{port}", num_processes=2, process_id=pid)
    assert jax.process_count() == 2 and len(jax.devices()) == 2 and len(jax.local_devices()) == 1
    losses, params = train(make_mesh((2, 1, 1)))
    if pid == 0:
        flat = {jax.tree_util.keystr(k): v.tolist() for k, v in jax.tree_util.tree_flatten_with_path(params)[0]}
        with open(out, "w") as f:
            json.dump({"losses": losses, "params": flat, "processes": jax.process_count()}, f)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
