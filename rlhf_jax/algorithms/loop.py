"""A resumable supervised training loop shared by pretraining, SFT and reward-model training.

The data position is the step itself: batch ``s`` is row ``s % n_batches`` of the permutation for
epoch ``s // n_batches`` (``data.encoding.batch_indices``), so a restored step number is all a
resumed run needs to see exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

from typing import Any, Callable

import jax.numpy as jnp
import numpy as np

from rlhf_jax import interrupts
from rlhf_jax.algorithms.step import GUARD_KEY, SUPERVISED_GUARDED, NonFiniteError, nonfinite_metric
from rlhf_jax.data.encoding import batch_indices
from rlhf_jax.metrics.aggregate import MeanAccumulator
from rlhf_jax.metrics.logger import progress


def supervised_loop(*, stage: str, state: Any, step_fn: Callable, data: dict[str, np.ndarray],
                    batch_size: int, n_steps: int, seed: int, hparams: Any, ckpt, logger,
                    ckpt_every: int, log_every: int = 25, show_progress: bool | None = None) -> Any:
    """Run ``n_steps`` of ``state, metrics = step_fn(state, batch, hparams)``; resume if possible.

    Checkpoints ``{'train': state}`` every ``ckpt_every`` steps and at the end (meta done=True).
    The step's non-finite flag (``GUARD_KEY``) is read in one transfer with the logged metrics and
    before every checkpoint: the first NaN/Inf step raises :class:`NonFiniteError`, and no state
    from it or after it is saved.
    """
    start = 0
    last = ckpt.latest_step(stage)
    if last is not None:
        restored, meta = ckpt.restore(stage, {"train": state})
        state, start = restored["train"], int(meta["step"])
        if meta.get("done"):
            return state  # (``data`` may be None when the caller knows the stage is done)
    n = len(next(iter(data.values())))
    batch_size = min(batch_size, n)
    n_batches = n // batch_size
    logger.truncate_after(stage, start)  # lines an interrupted attempt logged after `start`

    perm, perm_epoch = None, -1
    acc = MeanAccumulator()
    flags: list = []  # (step, device flag) since the last check
    good = start if last is not None else None

    def check(keys):
        if flags:
            codes = np.asarray(jnp.stack([f for _, f in flags]))  # one transfer for the window
            bad = np.flatnonzero(codes)
            if bad.size:
                i = int(bad[0])
                metric = nonfinite_metric(codes[i], keys, SUPERVISED_GUARDED)
                raise NonFiniteError(stage, flags[i][0], metric, good)
            flags.clear()

    bar = progress(n_steps, stage, initial=start, force=show_progress)
    for s in range(start, n_steps):
        epoch, k = divmod(s, n_batches)
        if epoch != perm_epoch:
            perm, perm_epoch = batch_indices(n, batch_size, seed, epoch), epoch
        idx = perm[k]
        batch = {key: v[idx] for key, v in data.items()}
        interrupts.check()
        state, metrics = step_fn(state, batch, hparams)
        flags.append((s + 1, metrics.pop(GUARD_KEY)))
        acc.add(metrics)
        if (s + 1) % log_every == 0 or s + 1 == n_steps:
            check(metrics)
            means = acc.result()
            acc = MeanAccumulator()
            logger.log(s + 1, means, stage=stage)
            bar.set_metrics({k2.split("/")[-1]: v for k2, v in list(means.items())[:3]})
        bar.update(1)
        if (s + 1) % ckpt_every == 0 and s + 1 < n_steps:
            check(metrics)
            ckpt.save(stage, s + 1, {"train": state}, {"done": False})
            good = s + 1
    bar.close()
    ckpt.save(stage, n_steps, {"train": state}, {"done": True})
    return state
