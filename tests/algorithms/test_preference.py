"""The offline preference family (dpo, ipo, cdpo, simpo) on a tiny random model.

At the first step the policy is the reference: every implicit reward is 0, so the DPO loss is
log 2 and IPO's is (1/(2β))²; a few steps on one batch raise the implicit-reward margin; the batch
is a pure function of (seed, step) over whole prompts; the state round-trips through a checkpoint.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.algorithms.base import RLSetup, frozen_inputs
from rlhf_jax.algorithms.dpo import response_logps
from rlhf_jax.algorithms.registry import ALGORITHMS
from rlhf_jax.checkpoint.orbax import RunCheckpoints
from rlhf_jax.models import get_preset, init_params

V, P, N = 48, 4, 6
OFFLINE = ["cdpo", "dpo", "ipo", "simpo"]


def _comparisons(rng, n, k):
    L = P + N
    ids = rng.integers(2, V, (n, k, L)).astype(np.int32)
    mask = np.ones((n, k, L), np.int32)
    mask[:, :, :1] = 0                      # left padding of the prompt
    lengths = rng.integers(2, N + 1, (n, k))
    for i in range(n):
        for j in range(k):
            mask[i, j, P + lengths[i, j]:] = 0
    ids[mask == 0] = 0
    ids[:, 1:, :P] = ids[:, :1, :P]         # one prompt per comparison
    return ids, mask


@pytest.fixture(scope="module", params=[2, 3], ids=["pairs", "rankings"])
def setup(request):
    k = request.param
    cfg = get_preset("tiny", vocab_size=V, max_len=16, n_layers=1)
    policy = init_params(cfg, jax.random.PRNGKey(0))
    rng = np.random.default_rng(k)
    prefs = {}
    for split, n in (("train", 12), ("eval", 4)):
        ids, mask = _comparisons(rng, n, k)
        d = {"input_ids": ids, "attention_mask": mask}
        if k == 2:
            d["mu"] = np.array([1.0, 0.0, 0.5, 1.0] * (n // 4), np.float32)
        else:
            d["order"] = np.stack([rng.permutation(k) for _ in range(n)]).astype(np.int32)
        prefs[split] = d
    return RLSetup(model_cfg=cfg, rm_cfg=None, policy_params=policy, rm_params=None,
                   prompt_ids=np.zeros((2, P), np.int32), prompt_mask=np.ones((2, P), np.int32),
                   response_len=N, eos_id=1, pad_id=0, seed=0, preferences=prefs)


_COMPILED: dict = {}


def _run(name, setup, steps=1, fixed=False, lr=None):
    """``steps`` iterations of ``name`` (one compiled iteration per algorithm and setup: the
    learning rate lives in the optimizer state)."""
    algo = ALGORITHMS.get(name)
    sec = dataclasses.replace(algo.section(), batch_size=4)
    key = (name, id(setup))
    if key not in _COMPILED:
        algo.check(sec, n_prompts=2, has_pretrain_texts=False)
        prepared = algo.prepare(setup, sec)
        _COMPILED[key] = prepared, algo.make_iteration(prepared, sec)
    prepared, iteration = _COMPILED[key]
    hp = algo.hparams(sec)
    init_sec = sec if lr is None else dataclasses.replace(sec, lr=lr)
    state = algo.init(prepared, init_sec, jax.random.PRNGKey(1))
    frozen = frozen_inputs(prepared, setup.policy_params, {})
    out = []
    for it in range(steps):
        state, m = iteration(state, frozen, algo.batch(prepared, sec, 0 if fixed else it), hp)
        out.append({k: float(v) for k, v in m.items()})
    return algo, sec, prepared, state, out, (iteration, frozen, hp)


@pytest.mark.parametrize("name", OFFLINE)
def test_first_step_policy_is_the_reference(name, setup):
    algo, sec, prepared, _, (m,), _ = _run(name, setup)
    assert algo.needs(sec) == ("preferences",)
    assert all(np.isfinite(v) for v in m.values()), m
    assert m["guard/nonfinite"] == 0
    if name == "simpo":  # reference-free: r = β·mean token logprob, not 0
        assert sec.reference == "none" and sec.length_normalize and m["rewards/chosen"] < 0
        assert np.all(prepared.preferences["train"]["ref_logps"] == 0)
        return
    assert m["rewards/chosen"] == pytest.approx(0.0, abs=1e-6)
    assert m["rewards/margin"] == pytest.approx(0.0, abs=1e-6)
    want = {"dpo": math.log(2.0), "cdpo": math.log(2.0), "ipo": (1 / (2 * sec.beta)) ** 2}[name]
    assert m["loss/preference"] == pytest.approx(want, rel=1e-5)


def test_reference_logprobs_are_computed_once_up_front(setup):
    algo, sec, prepared, *_ = _run("dpo", setup, steps=0)
    d = setup.preferences["eval"]
    want = response_logps(setup.model_cfg, setup.policy_params, d["input_ids"], d["attention_mask"], P, False)
    assert np.allclose(prepared.preferences["eval"]["ref_logps"], want)
    # by hand for one response: Σ over the response's tokens of log softmax(logits)[token]
    from rlhf_jax.models import logits as lm_logits

    i, j = 1, 0
    ids, mask = d["input_ids"][i, j][None], d["attention_mask"][i, j][None]
    lp = jax.nn.log_softmax(lm_logits(setup.model_cfg, setup.policy_params, ids, mask)[0], -1)
    total = sum(float(lp[t - 1, ids[0, t]]) for t in range(P, P + N) if mask[0, t])
    assert want[i, j] == pytest.approx(total, rel=1e-4)
    assert setup.preferences["train"].get("ref_logps") is None  # the setup itself is not changed


@pytest.mark.parametrize("name", OFFLINE)
def test_steps_on_one_batch_raise_the_margin(name, setup):
    *_, out, _ = _run(name, setup, steps=8, fixed=True, lr=3e-3)
    assert out[-1]["loss/preference"] < out[0]["loss/preference"] - 0.05, [o["loss/preference"] for o in out]
    assert out[-1]["rewards/margin"] > out[0]["rewards/margin"] + 0.01


def test_batches_are_whole_prompts_and_a_pure_function_of_seed_and_step(setup):
    algo, sec, prepared, *_ = _run("dpo", setup, steps=0)
    b0, again = algo.batch(prepared, sec, 0), algo.batch(prepared, sec, 0)
    assert all(np.array_equal(b0[k], again[k]) for k in b0)
    assert b0["input_ids"].shape[0] == 4 and b0["ref_logps"].shape == b0["input_ids"].shape[:2]
    # one epoch (3 steps of 4 of the 12 prompts) sees every prompt once
    seen = np.concatenate([algo.batch(prepared, sec, it)["ref_logps"][:, 0] for it in range(3)])
    assert sorted(seen.tolist()) == sorted(prepared.preferences["train"]["ref_logps"][:, 0].tolist())


def test_held_out_evaluation_and_checkpoint_round_trip(setup, tmp_path):
    algo, sec, prepared, state, _, (iteration, frozen, hp) = _run("dpo", setup, steps=2)
    ev = algo.evaluate(prepared, sec, algo.policy(state), hp)
    assert set(ev) == {"eval/implicit_accuracy", "eval/implicit_margin", "eval/preference_loss"}
    assert 0.0 <= ev["eval/implicit_accuracy"] <= 1.0
    ck = RunCheckpoints(str(tmp_path))
    ck.save("rl", 2, {"rl": state}, {"done": False})
    restored, _ = ck.restore("rl", {"rl": state})
    ck.close()
    batch = algo.batch(prepared, sec, 2)
    copy = jax.tree_util.tree_map(jnp.copy, restored["rl"])
    a, ma = iteration(copy, frozen, batch, hp)
    b, mb = iteration(jax.tree_util.tree_map(jnp.copy, state), frozen, batch, hp)
    assert all(float(ma[k]) == float(mb[k]) for k in ma)


def test_ipo_rejects_sigmoid_only_options():
    algo = ALGORITHMS.get("ipo")
    with pytest.raises(ValueError, match="label_smoothing"):
        algo.check(dataclasses.replace(algo.section(), label_smoothing=0.1), n_prompts=2,
                   has_pretrain_texts=False)
