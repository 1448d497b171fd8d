"""Orbax checkpoints of whole training state, one checkpoint manager per pipeline stage.

Layout: ``run_dir/checkpoints/<stage>/<step>/{state, meta}``. ``state`` is any pytree of arrays
(parameter sets, optimizer states, KL-controller state, RNG keys); ``meta`` is a small JSON dict
(stage, step, ``done`` when the stage finished). Saves are synchronous and atomic (Orbax writes
to a temporary directory and renames), so a run killed at any moment resumes from the newest
complete checkpoint.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class RunCheckpoints:
    def __init__(self, run_dir: str, max_to_keep: int = 2):
        self.root = os.path.abspath(os.path.join(run_dir, "checkpoints"))
        self.max_to_keep = max_to_keep
        self._managers: dict[str, ocp.CheckpointManager] = {}

    def _manager(self, stage: str) -> ocp.CheckpointManager:
        if stage not in self._managers:
            opts = ocp.CheckpointManagerOptions(max_to_keep=self.max_to_keep, create=True,
                                                cleanup_tmp_directories=True,
                                                enable_async_checkpointing=False)
            self._managers[stage] = ocp.CheckpointManager(os.path.join(self.root, stage), options=opts)
        return self._managers[stage]

    def save(self, stage: str, step: int, state: Any, meta: dict | None = None) -> None:
        meta = dict(meta or {}, stage=stage, step=int(step))
        mgr = self._manager(stage)
        mgr.save(int(step), args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                   meta=ocp.args.JsonSave(meta)), force=True)
        mgr.wait_until_finished()

    def latest_step(self, stage: str) -> int | None:
        if not os.path.isdir(os.path.join(self.root, stage)):
            return None
        return self._manager(stage).latest_step()

    def restore(self, stage: str, target: Any, step: int | None = None) -> tuple[Any, dict]:
        """Restore ``(state, meta)`` at ``step`` (default: latest) into the structure of ``target``."""
        mgr = self._manager(stage)
        step = mgr.latest_step() if step is None else step
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target)
        out = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                        meta=ocp.args.JsonRestore()))
        return out["state"], dict(out["meta"])

    def restore_meta(self, stage: str, step: int | None = None) -> dict | None:
        if self.latest_step(stage) is None:
            return None
        mgr = self._manager(stage)
        step = mgr.latest_step() if step is None else step
        return dict(mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])

    def close(self) -> None:
        for mgr in self._managers.values():
            mgr.close()
        self._managers.clear()
