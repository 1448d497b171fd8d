"""TRPO's iteration on a tiny random model: one accepted natural step inside the trust region
(KL measured independently), the critic regressed, hyperparameters as arrays, a bitwise resume."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.algorithms.base import RLSetup, frozen_inputs
from rlhf_jax.algorithms.registry import ALGORITHMS
from rlhf_jax.algorithms.reward_model import init_reward_model
from rlhf_jax.algorithms.rollout import response_logits
from rlhf_jax.checkpoint.orbax import RunCheckpoints
from rlhf_jax.models import get_preset, init_params

V, P, N = 48, 4, 6


@pytest.fixture(scope="module")
def run():
    cfg = get_preset("tiny", vocab_size=V, max_len=16, n_layers=1)
    policy = init_params(cfg, jax.random.PRNGKey(0))
    rm = init_reward_model(cfg, init_params(cfg, jax.random.PRNGKey(1)), jax.random.PRNGKey(2))
    ids = np.random.default_rng(0).integers(2, V, (8, P)).astype(np.int32)
    setup = RLSetup(model_cfg=cfg, rm_cfg=cfg, policy_params=policy, rm_params=rm, prompt_ids=ids,
                    prompt_mask=np.ones_like(ids), response_len=N, eos_id=1, pad_id=0, seed=0)
    algo = ALGORITHMS.get("trpo")
    sec = dataclasses.replace(algo.section(), batch_size=8, minibatches=2, epochs=1, no_eos_penalty=None,
                              max_kl=0.01)
    algo.check(sec, n_prompts=8, has_pretrain_texts=False)
    frozen = frozen_inputs(setup, jax.tree_util.tree_map(jnp.copy, policy), {"gain": 1.0, "bias": 0.0})
    return setup, algo, sec, algo.make_iteration(setup, sec), frozen


def _copy(t):
    return jax.tree_util.tree_map(jnp.copy, t)


def _mean_kl(cfg, old, new, s):
    """Mean per-token KL(π_old‖π_new) over the rollout's response tokens, by two full forwards."""
    seq, seq_mask = s["sequences"], s["sequence_mask"]
    lo = jax.nn.log_softmax(response_logits(cfg, old, seq, seq_mask, P)[0], -1)
    ln = jax.nn.log_softmax(response_logits(cfg, new, seq, seq_mask, P)[0], -1)
    kl = np.asarray(jnp.sum(jnp.exp(lo) * (lo - ln), -1))
    m = np.asarray(s["mask"], np.float64)
    return float((kl * m).sum() / m.sum())


def test_one_step_is_accepted_inside_the_trust_region(run, tmp_path):
    setup, algo, sec, iteration, frozen = run
    state = algo.init(setup, sec, jax.random.PRNGKey(3))
    assert state.train.opt_state is not None and "policy" in state.train.params
    saved = _copy(state)
    hp = algo.hparams(sec)
    batch = algo.batch(setup, sec, 0)
    new, m = iteration(state, frozen, batch, hp)
    m = {k: float(v) for k, v in m.items()}
    assert all(np.isfinite(v) for v in m.values()), m
    assert m["guard/nonfinite"] == 0
    assert m["trpo/accepted"] == 1.0 and 0 < m["trpo/kl"] <= 0.01 and m["trpo/surrogate_gain"] > 0
    assert m["objective/kl"] == pytest.approx(0.0, abs=1e-5)  # the rollout's policy is the reference
    # the step's KL, measured independently on the same rollout (regenerated with the same key)
    sample_rng = jax.random.split(saved.rng, 4)[1]
    from rlhf_jax.sampling import generate

    g = generate(setup.model_cfg, setup.policy_params, batch["prompt_ids"], batch["prompt_mask"], rng=sample_rng,
                 max_new_tokens=N, temperature=hp["temperature"], eos_id=1, pad_id=0)
    s = {"sequences": g.sequences, "sequence_mask": g.sequence_mask, "mask": g.mask}
    measured = _mean_kl(setup.model_cfg, setup.policy_params, algo.policy(new), s)
    assert measured == pytest.approx(m["trpo/kl"], rel=1e-3) and measured <= 0.01
    changed = lambda a, b: any(bool(jnp.any(x != y)) for x, y in zip(  # noqa: E731
        jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))
    assert changed(saved.train.params["critic"], new.train.params["critic"])
    assert m["loss/value"] > 0

    # δ, damping and the critic's lr are arrays: a new value reuses the compiled iteration
    sec2 = dataclasses.replace(sec, max_kl=1e-4, lr=3e-3, cg_damping=0.2)
    _, m2 = iteration(algo.init(setup, sec2, jax.random.PRNGKey(3)), frozen, batch, algo.hparams(sec2))
    assert float(m2["trpo/kl"]) <= 1e-4 and float(m2["trpo/step_fraction"]) <= 1.0
    assert iteration._cache_size() == 1

    ck = RunCheckpoints(str(tmp_path))
    ck.save("rl", 0, {"rl": saved})
    restored, _ = ck.restore("rl", {"rl": _copy(saved)})
    ck.close()
    _, m3 = iteration(restored["rl"], frozen, batch, hp)
    assert all(float(m3[k]) == m[k] for k in m)


def test_trust_region_options_are_checked():
    algo = ALGORITHMS.get("trpo")
    with pytest.raises(ValueError, match="trpo.kl.placement = 'loss'"):
        sec = algo.section()
        algo.check(dataclasses.replace(sec, kl=dataclasses.replace(sec.kl, placement="loss")), n_prompts=64,
                   has_pretrain_texts=False)
    with pytest.raises(ValueError, match="trpo.minibatches"):
        algo.check(dataclasses.replace(algo.section(), minibatches=5), n_prompts=64, has_pretrain_texts=False)
