"""Gradient accumulation over micro-batches equals the full batch (step.accumulated_grads)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.algorithms.reward_model import init_reward_model, make_rm_loss
from rlhf_jax.algorithms.sft import lm_target_count, make_lm_loss
from rlhf_jax.algorithms.step import accumulated_grads, make_train_step
from rlhf_jax.algorithms.train_state import create_state, make_optimizer
from rlhf_jax.models import get_preset, init_params

CFG = get_preset("tiny", vocab_size=64, max_len=16, n_layers=1)


@pytest.fixture(scope="module")
def lm():
    params = init_params(CFG, jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 64, (8, 12)).astype(np.int32)
    # Very different target counts per row (so per-slice means of means would be wrong).
    mask = (np.arange(12)[None, :] < np.array([12, 2, 3, 12, 4, 12, 5, 6])[:, None]).astype(np.int32)
    return params, {"input_ids": ids, "attention_mask": mask, "loss_mask": mask}


def _close(a, b, tol=2e-6):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


@pytest.mark.parametrize("k", [2, 4, 8])
def test_token_mean_over_micro_batches_is_the_full_batch_mean(lm, k):
    params, batch = lm
    loss_fn = make_lm_loss(CFG)
    (want, _), g_want = accumulated_grads(loss_fn, params, batch, None)
    (got, metrics), g_got = jax.jit(lambda p, b: accumulated_grads(loss_fn, p, b, None, k, lm_target_count))(params, batch)
    assert float(got) == pytest.approx(float(want), rel=1e-6)
    _close(g_got, g_want)
    # Equal weights would average per-slice means: a different (wrong) loss for this batch.
    (unweighted, _), _ = accumulated_grads(loss_fn, params, batch, None, k)
    assert abs(float(unweighted) - float(want)) > 1e-4  # 100x the tolerance above


def test_accumulated_step_updates_the_params_like_the_full_step(lm):
    params, batch = lm
    tx = make_optimizer(1e-2)
    full = make_train_step(make_lm_loss(CFG), tx)(create_state(jax.tree_util.tree_map(jnp.copy, params), tx), batch, None)
    acc = make_train_step(make_lm_loss(CFG), tx, micro_batches=4, weight=lm_target_count)(
        create_state(jax.tree_util.tree_map(jnp.copy, params), tx), batch, None)
    _close(acc[0].params, full[0].params, tol=1e-5)
    assert float(acc[1]["optim/grad_norm"]) == pytest.approx(float(full[1]["optim/grad_norm"]), rel=1e-5)


def test_pairwise_loss_over_micro_batches(lm):
    rm = init_reward_model(CFG, lm[0], jax.random.PRNGKey(1))
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 64, (8, 2, 10)).astype(np.int32)
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids), "mu": rng.random(8).astype(np.float32)}
    hp = {"margin": jnp.float32(0.0), "center_coef": jnp.float32(0.01)}
    (want, _), g_want = accumulated_grads(make_rm_loss(CFG), rm, batch, hp)
    (got, _), g_got = accumulated_grads(make_rm_loss(CFG), rm, batch, hp, 4)  # a mean over pairs
    assert float(got) == pytest.approx(float(want), rel=1e-6)
    _close(g_got, g_want)
