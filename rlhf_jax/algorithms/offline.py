"""What the offline algorithms (the DPO family, ILQL) share: they learn from step 2's data in
``setup.preferences['train']`` (rows: prompts with their K responses, or single responses), one
cheap step (no sampling) per iteration."""

from __future__ import annotations

from rlhf_jax.algorithms.base import RLSetup
from rlhf_jax.data.encoding import batch_indices


class Offline:
    """Batches of ``batch_size`` rows of ``setup.preferences['train']``, epoch by epoch."""

    steps_per_iteration = 10  # checkpoints every 10 x run.checkpoint_every steps
    batch_keys: tuple[str, ...] | None = None  # the rows' arrays a step reads (None: all)

    @staticmethod
    def group_size(sec) -> int:
        return 1

    @classmethod
    def batch(cls, setup: RLSetup, sec, it: int) -> dict:
        """Step ``it``'s rows, a pure function of (seed, it): a fresh permutation per epoch."""
        train = setup.preferences["train"]
        n = len(train["input_ids"])
        per = min(sec.batch_size, n)
        epoch, j = divmod(it, n // per)
        idx = batch_indices(n, per, setup.seed, epoch)[j]
        return {k: train[k][idx] for k in (cls.batch_keys or train)}

    @staticmethod
    def responses_per_iteration(sec, n_prompts: int) -> int:
        return sec.batch_size
