"""Orbax checkpoints of whole training state, one checkpoint manager per pipeline stage.

Layout: ``run_dir/checkpoints/<stage>/<step>/{state, meta}``. ``state`` is any pytree of arrays
(parameter sets, optimizer states, KL-controller state, RNG keys); ``meta`` is a small JSON dict
(stage, step, ``done`` when the stage finished). Saves are synchronous and atomic (Orbax writes
to a temporary directory and renames), so a run killed at any moment resumes from the newest
complete checkpoint.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import jax
import orbax.checkpoint as ocp

from rlhf_jax.interrupts import deferred_interrupts
from rlhf_jax.models.layout import stack_like, unstack_all
from rlhf_jax.sharding.distributed import on_primary


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
        with deferred_interrupts():  # a Ctrl-C inside Orbax's save would leave it hanging
            mgr.save(int(step), args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                       meta=ocp.args.JsonSave(meta)), force=True)
            mgr.wait_until_finished()

    def latest_step(self, stage: str) -> int | None:
        if not os.path.isdir(os.path.join(self.root, stage)):
            return None
        return self._manager(stage).latest_step()

    def restore(self, stage: str, target: Any, step: int | None = None) -> tuple[Any, dict]:
        """Restore ``(state, meta)`` at ``step`` (default: latest) into the structure of ``target``.

        When the newest step cannot be read (a damaged or truncated checkpoint) and an older one
        can, the older one is restored and the damaged step is moved aside to
        ``<step>.unreadable`` (so the stage can save that step again); when none can be read,
        :class:`~rlhf_jax.runner.run_dir.RunDirError` names the checkpoint and what to do.
        """
        from rlhf_jax.runner.run_dir import RunDirError

        mgr = self._manager(stage)
        steps = [step] if step is not None else sorted(mgr.all_steps(), reverse=True)
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target)
        failed: list[tuple[int, str]] = []
        for s in steps:
            try:
                with deferred_interrupts():
                    out = mgr.restore(s, args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
            except Exception as e:  # noqa: BLE001 -- Orbax / TensorStore raise many types here
                failed.append((s, (str(e).strip().splitlines() or [type(e).__name__])[0][:200]))
                if out := self._restore_per_layer(mgr, s, abstract):
                    failed.pop()
                else:
                    continue
            if failed:
                self._set_aside(stage, [b for b, _ in failed], s, failed[0][1])
            return out["state"], dict(out["meta"])
        where = os.path.join(self.root, stage, str(failed[0][0]))
        raise RunDirError(f"{where}: unreadable checkpoint ({failed[0][1]}); delete "
                          f"{os.path.join(self.root, stage)} to redo the {stage} stage from its start")

    @staticmethod
    def _restore_per_layer(mgr, step: int, abstract: Any) -> dict | None:
        """A checkpoint written with its layers one by one (``layer_i``, as before the stacked
        layout, ``models.layout``) restored into a target that holds them stacked, or None."""
        try:
            per_layer, has_stacked = unstack_all(abstract)
        except ValueError:  # not a layout this fallback knows (e.g. masked copies of unknown depth)
            return None
        if not has_stacked:
            return None
        try:
            with deferred_interrupts():
                out = mgr.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(per_layer), meta=ocp.args.JsonRestore()))
        except Exception:  # noqa: BLE001 -- not that layout either: the caller reports the first error
            return None
        state = stack_like(out["state"], abstract)
        state = jax.tree_util.tree_map(
            lambda x, a: jax.device_put(x, a.sharding) if getattr(a, "sharding", None) is not None else x,
            state, abstract)
        return {"state": state, "meta": out["meta"]}

    def _set_aside(self, stage: str, bad: list[int], good: int, why: str) -> None:
        self._managers.pop(stage).close()
        for b in bad:
            src = os.path.join(self.root, stage, str(b))
            on_primary(f"set aside {src}", os.replace, src, f"{src}.unreadable")
            print(f"[rlhf_jax] checkpoint {src} is unreadable ({why}); moved it to {src}.unreadable "
                  f"and resumed {stage} from step {good}", file=sys.stderr, flush=True)

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
