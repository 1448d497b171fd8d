"""Every registered algorithm's jitted iteration on a tiny random model.

At the first iteration the policy is the reference: KL is 0 and every importance ratio is 1; all
metrics are finite and the metric contract holds; changing a sweepable hyperparameter (learning
rate, ε, β, temperature) does not recompile; the state round-trips through an Orbax checkpoint and
the next iteration from the restored state is bitwise the one from the original.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.algorithms.base import RLSetup, frozen_inputs
from rlhf_jax.algorithms.registry import ALGORITHMS
from rlhf_jax.algorithms.reward_model import init_reward_model
from rlhf_jax.checkpoint.orbax import RunCheckpoints
from rlhf_jax.models import get_preset, init_params

NAMES = ["a2c", "cispo", "dapo", "dr_grpo", "gspo", "grpo", "nlpo", "ppo", "reinforce", "remax", "rloo"]
CONTRACT = ("objective/scores", "objective/kl", "objective/entropy", "response/length",
            "policy/clipfrac", "policy/approxkl", "policy/ratio_mean", "objective/kl_coef")
V, P, N, EOS, PAD = 48, 4, 6, 1, 0


@pytest.fixture(scope="module")
def setup():
    cfg = get_preset("tiny", vocab_size=V, max_len=16, n_layers=1)
    policy = init_params(cfg, jax.random.PRNGKey(0))
    rm = init_reward_model(cfg, init_params(cfg, jax.random.PRNGKey(1)), jax.random.PRNGKey(2))
    rng = np.random.default_rng(0)
    ids = rng.integers(2, V, (12, P)).astype(np.int32)
    mask = np.ones((12, P), np.int32)
    mask[::3, :2] = 0  # some left padding
    ids[mask == 0] = PAD
    return RLSetup(model_cfg=cfg, rm_cfg=cfg, policy_params=policy, rm_params=rm, prompt_ids=ids,
                   prompt_mask=mask, response_len=N, eos_id=EOS, pad_id=PAD, seed=0)


def _section(name, **changes):
    algo = ALGORITHMS.get(name)
    sec = algo.section()
    k = getattr(sec, "group_size", 1)
    # no_eos_penalty off: a random model rarely emits EOS, and equal penalty scores carry no signal
    base = dict(batch_size=2 * k if k > 1 else 4, epochs=1, minibatches=1, recompute_logprobs=True,
                no_eos_penalty=None)
    if name == "nlpo":  # an unmasked action space (top-p 1) is PPO: the contract below holds exactly
        base.update(top_p=1.0, recompute_logprobs=False)  # (tests/algorithms/test_nlpo.py masks)
    return algo, dataclasses.replace(sec, **{**base, **changes})


def _frozen(setup):
    return frozen_inputs(setup, jax.tree_util.tree_map(jnp.copy, setup.policy_params),
                         {"gain": 1.0, "bias": 0.0})


def _copy(tree):
    return jax.tree_util.tree_map(jnp.copy, tree)


def test_registry_holds_every_preset():
    assert sorted(ALGORITHMS.names()) == sorted(NAMES + ["cdpo", "dpo", "ilql", "ipo", "simpo", "trpo"])


@pytest.mark.parametrize("name", NAMES)
def test_iteration(name, setup, tmp_path):
    algo, sec = _section(name)
    algo.check(sec, n_prompts=len(setup.prompt_ids), has_pretrain_texts=False)
    frozen = _frozen(setup)
    iteration = algo.make_iteration(setup, sec)
    hp = algo.hparams(sec)
    state = algo.init(setup, sec, jax.random.PRNGKey(3))
    saved = _copy(state)
    new, m = iteration(state, frozen, algo.batch(setup, sec, 0), hp)
    m = {k: float(v) for k, v in m.items()}

    # the policy is the reference: KL 0 (logprobs from the same forward), ratio 1, nothing clipped
    if sec.recompute_logprobs:  # behaviour and reference logprobs from the same full forward
        assert m["objective/kl"] == 0.0 and m["objective/kl_k3"] == 0.0
    else:  # the sampler's cached-decode logprobs: equal up to float rounding
        assert abs(m["objective/kl"]) < 1e-5 and abs(m["objective/kl_k3"]) < 1e-5
    assert abs(m["policy/ratio_mean"] - 1.0) < 1e-5 and m["policy/approxkl"] < 1e-10
    assert m["policy/clipfrac"] == 0.0
    for key in CONTRACT:
        assert key in m, key
    assert all(np.isfinite(v) for v in m.values()), m
    if algo.family.group_size(sec) > 1:
        assert "group/zero_variance_frac" in m and "group/score_std" in m
    if name in ("ppo", "a2c", "nlpo"):
        assert "val/vf_explained_var" in m and "loss/value" in m
    if sec.kl.placement == "loss":
        assert m["loss/kl"] == pytest.approx(0.0, abs=1e-6)
    assert int(new.iteration) == 1
    moved = jax.tree_util.tree_map(lambda a, b: bool(jnp.any(a != b)), algo.policy(new), setup.policy_params)
    assert any(jax.tree_util.tree_leaves(moved)), "one iteration changed no policy parameter"

    # sweepable hyperparameters are arrays: new lr, β, ε, temperature reuse the compiled iteration
    sec2 = dataclasses.replace(sec, lr=sec.lr * 3, kl=dataclasses.replace(sec.kl, beta=0.3),
                               clip_eps=0.1, temperature=0.7)
    hp2 = algo.hparams(sec2)
    state2 = algo.init(setup, sec2, jax.random.PRNGKey(3))
    _, m2 = iteration(state2, frozen, algo.batch(setup, sec2, 1), hp2)
    # β as given (reported as 0 when the KL is placed nowhere, as in DAPO, GSPO, CISPO)
    assert float(m2["objective/kl_coef"]) == pytest.approx(0.3 if sec.kl.placement != "none" else 0.0)
    assert iteration._cache_size() == 1

    # Orbax round trip: restored state == saved state, and the next iteration is bitwise the same
    ck = RunCheckpoints(str(tmp_path))
    ck.save("rl", 0, {"rl": saved})
    restored, _ = ck.restore("rl", {"rl": _copy(saved)})
    ck.close()
    restored = restored["rl"]
    for a, b in zip(jax.tree_util.tree_leaves(saved), jax.tree_util.tree_leaves(restored)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    _, m_restored = iteration(restored, frozen, algo.batch(setup, sec, 0), hp)
    for k, v in m.items():
        assert float(m_restored[k]) == v, k


def test_sampler_logprobs_equal_a_full_forward(setup):
    """By default the behaviour logprobs come from the sampler (no second policy forward): at the
    first iteration KL and the ratio differ from exact only by float rounding."""
    algo, sec = _section("grpo", recompute_logprobs=False, epochs=2, minibatches=2)
    it = algo.make_iteration(setup, sec)
    _, m = it(algo.init(setup, sec, jax.random.PRNGKey(3)), _frozen(setup), algo.batch(setup, sec, 0),
              algo.hparams(sec))
    assert abs(float(m["objective/kl"])) < 1e-4
    assert np.isfinite(float(m["policy/ratio_mean"]))


def test_critic_has_its_own_learning_rate(setup):
    algo, sec = _section("ppo")
    it = algo.make_iteration(setup, sec)
    frozen, hp = _frozen(setup), algo.hparams(sec)
    changed = lambda a, b: any(jax.tree_util.tree_leaves(  # noqa: E731
        jax.tree_util.tree_map(lambda x, y: bool(jnp.any(x != y)), a, b)))
    for lr, critic_lr in ((0.0, 1e-3), (1e-3, 0.0)):
        s = dataclasses.replace(sec, lr=lr, critic_lr=critic_lr)
        state = algo.init(setup, s, jax.random.PRNGKey(3))
        before = _copy(state.train.params)
        new, _ = it(state, frozen, algo.batch(setup, s, 0), hp)
        assert changed(before["policy"], new.train.params["policy"]) == (lr > 0)
        assert changed(before["critic"], new.train.params["critic"]) == (critic_lr > 0)
    assert it._cache_size() == 1


@pytest.mark.parametrize("name, changes, message", [
    ("rloo", {"group_size": 1}, "rloo.group_size = 1: advantage 'rloo' needs at least 2"),
    ("grpo", {"group_size": 1}, "needs at least 2 responses per prompt"),
    ("dapo", {"group_size": 1}, "dapo.group_size = 1"),
    ("grpo", {"batch_size": 10}, "grpo.batch_size (10) must be a multiple of grpo.group_size (4)"),
    ("ppo", {"batch_size": 6, "minibatches": 4}, "ppo.minibatches (4) must divide the 6 responses"),
    ("ppo", {"ptx_coef": 0.5}, "ppo.ptx_coef > 0 needs pretraining texts"),
    ("reinforce", {"clip": "ppo"}, "has nothing to clip"),
    ("a2c", {"epochs": 2}, "on-policy only"),
])
def test_unmet_needs_say_what_is_missing(name, changes, message):
    algo = ALGORITHMS.get(name)
    sec = dataclasses.replace(algo.section(), **changes)
    with pytest.raises(ValueError) as e:
        algo.check(sec, n_prompts=100, has_pretrain_texts=False)
    assert message in str(e.value)
