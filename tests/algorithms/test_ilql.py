"""ILQL on a tiny random model: the sampler hook draws from log π + β·(Q̂ − V), the target heads
follow the Q heads by Polyak averaging, the rewards of the logged responses, a bitwise resume."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.algorithms.base import RLSetup, frozen_inputs
from rlhf_jax.algorithms.ilql import AdvantageShift
from rlhf_jax.algorithms.registry import ALGORITHMS
from rlhf_jax.algorithms.reward_model import init_reward_model, score_in_batches
from rlhf_jax.checkpoint.orbax import RunCheckpoints
from rlhf_jax.models import forward, get_preset, init_params
from rlhf_jax.models.heads import mlp_head
from rlhf_jax.sampling import generate

V, P, N, K = 48, 4, 6, 2


@pytest.fixture(scope="module")
def setup():
    cfg = get_preset("tiny", vocab_size=V, max_len=16, n_layers=1)
    policy = init_params(cfg, jax.random.PRNGKey(0))
    rm = init_reward_model(cfg, init_params(cfg, jax.random.PRNGKey(1)), jax.random.PRNGKey(2))
    rng = np.random.default_rng(0)
    ids = rng.integers(2, V, (10, K, P + N)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[:, :, P + 4:] = 0
    mask[0, 0, P + 2:] = 0
    ids[mask == 0] = 0
    train = {"input_ids": ids, "attention_mask": mask, "mu": np.ones(10, np.float32),
             "gold": rng.normal(size=(10, K)).astype(np.float32)}
    return RLSetup(model_cfg=cfg, rm_cfg=cfg, policy_params=policy, rm_params=rm,
                   prompt_ids=ids[:, 0, :P], prompt_mask=mask[:, 0, :P], response_len=N, eos_id=1, pad_id=0,
                   seed=0, preferences={"train": train, "eval": train}, rm_norm={"gain": 2.0, "bias": -0.5})


def test_rewards_of_the_logged_responses(setup):
    algo = ALGORITHMS.get("ilql")
    gold = algo.prepare(setup, dataclasses.replace(algo.section(), reward="gold")).preferences["train"]
    np.testing.assert_array_equal(gold["rewards"], setup.preferences["train"]["gold"].reshape(-1))
    assert gold["input_ids"].shape == (10 * K, P + N)
    rm = algo.prepare(setup, algo.section()).preferences["train"]
    raw = score_in_batches(setup.rm_cfg, setup.rm_params, rm["input_ids"], rm["attention_mask"])
    np.testing.assert_allclose(rm["rewards"], 2.0 * raw - 0.5, rtol=1e-6)
    assert algo.needs(algo.section()) == ("logged responses", "reward_model")
    assert "reward_model" not in algo.needs(dataclasses.replace(algo.section(), reward="gold"))


def test_iteration_polyak_targets_decoder_and_resume(setup, tmp_path):
    algo = ALGORITHMS.get("ilql")
    sec = dataclasses.replace(algo.section(), batch_size=8, lr=1e-3, polyak=0.25)
    prepared = algo.prepare(setup, sec)
    iteration = algo.make_iteration(prepared, sec)
    hp = algo.hparams(sec)
    frozen = frozen_inputs(prepared, setup.policy_params, {"gain": 2.0, "bias": -0.5})
    state = algo.init(prepared, sec, jax.random.PRNGKey(3))
    target0 = jax.tree_util.tree_map(jnp.copy, state.aux["target"])
    saved = jax.tree_util.tree_map(jnp.copy, state)
    batch = algo.batch(prepared, sec, 0)
    new, m = iteration(state, frozen, batch, hp)
    m = {k: float(v) for k, v in m.items()}
    assert all(np.isfinite(v) for v in m.values()) and m["guard/nonfinite"] == 0
    assert m["loss/cql"] > 0 and m["loss/awac"] > 0
    # target ← (1 − α)·target + α·Q, with the Q heads after the step
    for k in ("q1", "q2"):
        for t0, q, t in zip(jax.tree_util.tree_leaves(target0[k]),
                            jax.tree_util.tree_leaves(new.train.params["heads"][k]),
                            jax.tree_util.tree_leaves(new.aux["target"][k])):
            np.testing.assert_allclose(np.asarray(t), 0.75 * np.asarray(t0) + 0.25 * np.asarray(q), rtol=1e-5, atol=1e-7)
    processor, pp = algo.decoder(new, hp)
    assert isinstance(processor, AdvantageShift) and float(pp["beta"]) == sec.beta
    assert pp["q1"] is new.aux["target"]["q1"] and pp["v"] is new.train.params["heads"]["v"]

    # γ, τ, the coefficients, α and β are arrays: new values reuse the compiled iteration
    sec2 = dataclasses.replace(sec, gamma=0.5, tau=0.9, cql_coef=0.0, polyak=0.0, beta=1.0)
    iteration(algo.init(prepared, sec2, jax.random.PRNGKey(3)), frozen, batch, algo.hparams(sec2))
    assert iteration._cache_size() == 1
    ck = RunCheckpoints(str(tmp_path))
    ck.save("rl", 0, {"rl": saved})
    restored, _ = ck.restore("rl", {"rl": jax.tree_util.tree_map(jnp.copy, saved)})
    ck.close()
    _, m2 = iteration(restored["rl"], frozen, batch, hp)
    assert all(float(m2[k]) == m[k] for k in m)


def test_generation_with_the_advantage_shift(setup):
    """The sampler hook's draws and logprobs are those of log π + β·(min Q̂ − V) by a full forward."""
    algo = ALGORITHMS.get("ilql")
    sec = dataclasses.replace(algo.section(), beta=3.0)
    state = algo.init(setup, sec, jax.random.PRNGKey(3))
    big = lambda h: jax.tree_util.tree_map(lambda x: x * 300.0, h)  # noqa: E731 -- heads that matter
    heads = {k: big(v) for k, v in state.train.params["heads"].items()}
    pp = {"q1": heads["q1"], "q2": heads["q2"], "v": heads["v"], "beta": jnp.float32(3.0)}
    cfg, params = setup.model_cfg, setup.policy_params
    ids, mask = setup.prompt_ids, setup.prompt_mask
    out = generate(cfg, params, ids, mask, rng=jax.random.PRNGKey(4), max_new_tokens=N, eos_id=None,
                   temperature=0.8, processor=AdvantageShift(), processor_params=pp)
    logits, hidden, _ = forward(cfg, params, out.sequences, out.sequence_mask)
    logits, hidden = logits[:, P - 1:-1], hidden[:, P - 1:-1]
    adv = jnp.minimum(mlp_head(pp["q1"], hidden), mlp_head(pp["q2"], hidden)) - mlp_head(pp["v"], hidden)
    shifted = jax.nn.log_softmax(logits, -1) + 3.0 * adv
    want = jnp.take_along_axis(jax.nn.log_softmax(shifted / 0.8, -1), out.tokens[..., None], -1)[..., 0]
    np.testing.assert_allclose(np.asarray(out.logprobs), np.asarray(want), atol=5e-4)
    assert float(jnp.abs(adv).max()) > 0.5  # the shift is not negligible here
    plain = generate(cfg, params, ids, mask, rng=jax.random.PRNGKey(4), max_new_tokens=N, eos_id=None,
                     temperature=0.8)
    assert not np.array_equal(np.asarray(out.tokens), np.asarray(plain.tokens))
    # β = 0: the LM's own distribution
    zero = generate(cfg, params, ids, mask, rng=jax.random.PRNGKey(4), max_new_tokens=N, eos_id=None,
                    temperature=0.8, processor=AdvantageShift(), processor_params=dict(pp, beta=jnp.float32(0.0)))
    np.testing.assert_array_equal(np.asarray(zero.tokens), np.asarray(plain.tokens))
    np.testing.assert_allclose(np.asarray(zero.logprobs), np.asarray(plain.logprobs), atol=1e-5)
