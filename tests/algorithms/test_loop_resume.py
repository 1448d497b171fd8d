"""The supervised loop resumes from its checkpoint to exactly the uninterrupted result."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.algorithms.loop import supervised_loop
from rlhf_jax.algorithms.step import make_train_step
from rlhf_jax.algorithms.train_state import create_state, make_optimizer
from rlhf_jax.checkpoint.orbax import RunCheckpoints
from rlhf_jax.metrics.logger import MetricsLogger, read_metrics


def _loss(params, batch, hparams):
    pred = batch["x"] @ params["w"]
    loss = jnp.mean((pred - batch["y"]) ** 2)
    return loss, {"mse": loss}


class Crash(Exception):
    pass


def _run(run_dir, crash_at=None):
    rng = np.random.default_rng(0)
    data = {"x": rng.normal(size=(40, 3)).astype(np.float32), "y": rng.normal(size=(40,)).astype(np.float32)}
    tx = make_optimizer(1e-2, total_steps=12)
    step = make_train_step(_loss, tx, donate=False)
    calls = {"n": 0}

    def step_fn(state, batch, hp):
        if crash_at is not None and calls["n"] == crash_at:
            raise Crash()
        calls["n"] += 1
        return step(state, batch, hp)

    ckpt = RunCheckpoints(str(run_dir))
    logger = MetricsLogger(run_dir, resume=ckpt.latest_step("fit") is not None)
    state = create_state({"w": jnp.zeros(3)}, tx)
    try:
        return supervised_loop(stage="fit", state=state, step_fn=step_fn, data=data, batch_size=8,
                               n_steps=12, seed=3, hparams=None, ckpt=ckpt, logger=logger,
                               ckpt_every=4, log_every=1, show_progress=False)
    finally:
        logger.close()
        ckpt.close()


def test_resume_equals_uninterrupted(tmp_path):
    full = _run(tmp_path / "a")
    with pytest.raises(Crash):
        _run(tmp_path / "b", crash_at=6)  # checkpoints at 4, dies during step 7
    resumed = _run(tmp_path / "b")
    np.testing.assert_array_equal(np.asarray(full.params["w"]), np.asarray(resumed.params["w"]))
    assert int(resumed.step) == 12
    steps = [r["step"] for r in read_metrics(tmp_path / "b")]
    assert steps == list(range(1, 13))
