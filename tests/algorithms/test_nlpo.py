"""NLPO: the masking policy's top-p set, the sampler hook that enforces it, the masked update, and
the masking policy's re-sync every n iterations."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.algorithms.base import RLSetup, frozen_inputs
from rlhf_jax.algorithms.nlpo import TopPMask, action_masks
from rlhf_jax.algorithms.registry import ALGORITHMS
from rlhf_jax.algorithms.reward_model import init_reward_model
from rlhf_jax.models import get_preset, init_params, logits as lm_logits
from rlhf_jax.sampling import generate
from rlhf_jax.sampling.strategies import MASKED_LOGIT, nucleus_mask

V, P, N = 48, 4, 6


def _top_p_by_sorting(logits, p):
    """The smallest set of most likely tokens whose probability reaches p, by a full sort."""
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    order = np.argsort(-probs, kind="stable")
    keep = np.zeros(len(probs), bool)
    mass = 0.0
    for i in order:
        keep[i] = True
        mass += probs[i]
        if mass >= p:
            break
    return keep


@pytest.mark.parametrize("p", [0.3, 0.5, 0.9, 0.99])
def test_mask_keeps_exactly_the_top_p_set(p):
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (16, V)).astype(np.float32)
    got = np.asarray(nucleus_mask(jnp.asarray(logits), p))
    for row, k in zip(logits, got):
        np.testing.assert_array_equal(k, _top_p_by_sorting(row.astype(np.float64), p))
    # temperature sharpens the masking distribution: fewer tokens at T = 0.5 than at T = 1
    cold = np.asarray(nucleus_mask(jnp.asarray(logits), p, 0.5))
    assert (cold.sum(-1) <= got.sum(-1)).all() and (cold <= got).all()
    assert np.asarray(nucleus_mask(jnp.asarray(logits), 1.0)).all()


@pytest.fixture(scope="module")
def models():
    cfg = get_preset("tiny", vocab_size=V, max_len=16, n_layers=1)
    return cfg, init_params(cfg, jax.random.PRNGKey(0)), init_params(cfg, jax.random.PRNGKey(5))


def _prompts():
    rng = np.random.default_rng(1)
    ids = rng.integers(2, V, (6, P)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[::2, 0] = 0
    ids[mask == 0] = 0
    return ids, mask


def test_sampler_hook_draws_only_inside_the_masking_policys_set(models):
    cfg, policy, masker = models
    ids, mask = _prompts()
    pp = {"params": masker, "top_p": jnp.float32(0.6), "temperature": jnp.float32(1.0)}
    out = generate(cfg, policy, ids, mask, rng=jax.random.PRNGKey(2), max_new_tokens=N, eos_id=None,
                   processor=TopPMask(cfg), processor_params=pp)
    # the masking policy's sets by a full forward over the sampled sequences
    keep = np.asarray(action_masks(cfg, masker, out.sequences, out.sequence_mask, out.tokens, P, 0.6, 1.0))
    mask_logits = lm_logits(cfg, masker, out.sequences, out.sequence_mask)[:, P - 1:-1]
    plain = np.asarray(nucleus_mask(mask_logits, 0.6))
    tok = np.asarray(out.tokens)
    assert all(plain[b, t, tok[b, t]] for b in range(len(tok)) for t in range(N)), "a token outside the set"
    assert (plain.sum(-1) < V).all() and np.array_equal(keep, plain)
    # behaviour logprobs: the masked, renormalised policy's
    pol = np.asarray(lm_logits(cfg, policy, out.sequences, out.sequence_mask)[:, P - 1:-1])
    masked = np.where(plain, pol, MASKED_LOGIT)
    want = jax.nn.log_softmax(masked, -1)
    want = np.take_along_axis(np.asarray(want), tok[..., None], -1)[..., 0]
    np.testing.assert_allclose(np.asarray(out.logprobs), want, atol=2e-5)
    # top-p 1 masks nothing: the same draws as the sampler without the hook
    pp1 = dict(pp, top_p=jnp.float32(1.0))
    a = generate(cfg, policy, ids, mask, rng=jax.random.PRNGKey(2), max_new_tokens=N, eos_id=None,
                 processor=TopPMask(cfg), processor_params=pp1)
    b = generate(cfg, policy, ids, mask, rng=jax.random.PRNGKey(2), max_new_tokens=N, eos_id=None)
    np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    np.testing.assert_allclose(np.asarray(a.logprobs), np.asarray(b.logprobs), atol=1e-6)


def test_masked_update_and_masking_policy_resync(models):
    cfg, policy, _ = models
    ids, mask = _prompts()
    rm = init_reward_model(cfg, init_params(cfg, jax.random.PRNGKey(1)), jax.random.PRNGKey(2))
    setup = RLSetup(model_cfg=cfg, rm_cfg=cfg, policy_params=policy, rm_params=rm, prompt_ids=ids,
                    prompt_mask=mask, response_len=N, eos_id=1, pad_id=0, seed=0)
    algo = ALGORITHMS.get("nlpo")
    sec = dataclasses.replace(algo.section(), batch_size=6, epochs=1, minibatches=1, top_p=0.5,
                              mask_update_every=2, no_eos_penalty=None, lr=1e-2)
    iteration = algo.make_iteration(setup, sec)
    frozen = frozen_inputs(setup, jax.tree_util.tree_map(jnp.copy, policy), {"gain": 1.0, "bias": 0.0})
    hp = algo.hparams(sec)
    state = algo.init(setup, sec, jax.random.PRNGKey(3))
    leaves = lambda t: jax.tree_util.tree_leaves(t)  # noqa: E731
    same = lambda a, b: all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(leaves(a), leaves(b)))  # noqa: E731
    policies = [jax.tree_util.tree_map(jnp.copy, state.train.params["policy"])]
    for it in range(5):
        state, m = iteration(state, frozen, algo.batch(setup, sec, it), hp)
        policies.append(jax.tree_util.tree_map(jnp.copy, state.train.params["policy"]))
        m = {k: float(v) for k, v in m.items()}
        assert all(np.isfinite(v) for v in m.values()), m
        assert 1 <= m["nlpo/mask_size"] < V
        if it == 0:  # one minibatch: the first ratio is exactly the masked policy's own, 1
            assert abs(m["policy/ratio_mean"] - 1.0) < 1e-4 and m["policy/clipfrac"] == 0.0
            # the masked policy differs from the unmasked reference by the mass it leaves out
            assert m["objective/kl"] > 0.0
        # iterations 0, 1 sample with the initial policy's copy; 2, 3 with the policy after 2 updates
        synced = policies[2 * ((it) // 2)] if it >= 2 else policies[0]
        assert same(state.aux["mask_policy"], synced), it
    assert not same(policies[2], policies[0])
    assert iteration._cache_size() == 1
