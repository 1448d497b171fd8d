"""DPO / IPO / cDPO / SimPO losses and gradients against values worked out by hand."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.losses.dpo import PREFERENCE_LOSSES, comparison_pairs, preference_loss, response_logprob


def _sig(x):
    return 1.0 / (1.0 + math.exp(-x))


# policy and reference sequence logprobs of (a, b); a is preferred (mu = 1)
PA, PB, RA, RB = -3.0, -5.0, -4.0, -4.0


def _hp(beta=0.1, eps=0.0, margin=0.0):
    return {"beta": jnp.float32(beta), "label_smoothing": jnp.float32(eps), "margin": jnp.float32(margin)}


def _loss(kind, hp, pa=PA, pb=PB, ref=(RA, RB), mu=1.0):
    def f(logps):
        r = hp["beta"] * (logps - jnp.asarray([ref]))
        return preference_loss(r, {"mu": jnp.asarray([mu])}, hp, kind)[0]
    logps = jnp.asarray([[pa, pb]], jnp.float32)
    return float(f(logps)), np.asarray(jax.grad(f)(logps))[0]


def test_registry_names():
    assert sorted(PREFERENCE_LOSSES.names()) == ["ipo", "sigmoid"]


def test_dpo_value_and_gradient():
    # h = β[(πa − ra) − (πb − rb)] = 0.1·[1 − (−1)] = 0.2; L = −log σ(0.2)
    loss, g = _loss("sigmoid", _hp())
    assert loss == pytest.approx(math.log(1 + math.exp(-0.2)), rel=1e-6)
    # dL/dπa = −β·σ(−h), dL/dπb = +β·σ(−h)
    assert g == pytest.approx([-0.1 * _sig(-0.2), 0.1 * _sig(-0.2)], rel=1e-5)


def test_cdpo_label_smoothing():
    loss, g = _loss("sigmoid", _hp(eps=0.1))
    want = -0.9 * math.log(_sig(0.2)) - 0.1 * math.log(_sig(-0.2))
    assert loss == pytest.approx(want, rel=1e-6)
    # d/dh = −0.9·σ(−h) + 0.1·σ(h)
    dh = -0.9 * _sig(-0.2) + 0.1 * _sig(0.2)
    assert g == pytest.approx([0.1 * dh, -0.1 * dh], rel=1e-5)
    # at ε = ½ the label carries nothing: the loss is flat at h = 0
    flat, gflat = _loss("sigmoid", _hp(eps=0.5), pa=-4.0, pb=-4.0)
    assert flat == pytest.approx(math.log(2.0), rel=1e-6) and np.allclose(gflat, 0.0, atol=1e-7)


def test_ipo_value_and_gradient():
    # raw log-ratio difference 2; target 1/(2β) = 5; L = (2 − 5)² = 9, dL/dπa = 2·(2 − 5) = −6
    loss, g = _loss("ipo", _hp())
    assert loss == pytest.approx(9.0, rel=1e-6)
    assert g == pytest.approx([-6.0, 6.0], rel=1e-5)


def test_simpo_length_normalised_reference_free_with_margin():
    # token logprobs: a has 2 tokens summing to −3, b 4 tokens summing to −5
    tok = jnp.asarray([[-1.0, -2.0, 0.0, 0.0], [-1.0, -1.0, -2.0, -1.0]])
    mask = jnp.asarray([[1, 1, 0, 0], [1, 1, 1, 1]])
    avg = response_logprob(tok, mask, length_normalize=True)
    assert np.allclose(avg, [-1.5, -1.25])
    assert np.allclose(response_logprob(tok, mask), [-3.0, -5.0])
    hp = _hp(beta=2.0, margin=1.0)

    def f(t):
        r = hp["beta"] * response_logprob(t, mask, length_normalize=True)[None]
        return preference_loss(r, {"mu": jnp.asarray([1.0])}, hp, "sigmoid")[0]

    # h = β(−1.5 + 1.25) − γ = −1.5; L = −log σ(−1.5)
    assert float(f(tok)) == pytest.approx(math.log(1 + math.exp(1.5)), rel=1e-6)
    g = np.asarray(jax.grad(f)(tok))
    s = _sig(1.5)  # −dL/dh
    assert g[0] == pytest.approx([-s * 2.0 / 2, -s * 2.0 / 2, 0, 0], rel=1e-5)
    assert g[1] == pytest.approx([s * 2.0 / 4] * 4, rel=1e-5)


@pytest.mark.parametrize("kind", ["sigmoid", "ipo"])
def test_label_direction_and_ties(kind):
    hp = _hp(eps=0.0)
    won, _ = _loss(kind, hp)
    # mu = 0 with the responses swapped is the same comparison
    swapped, _ = _loss(kind, hp, pa=PB, pb=PA, ref=(RB, RA), mu=0.0)
    assert swapped == pytest.approx(won, rel=1e-6)
    # a tie is the mean of both directions
    tie, _ = _loss(kind, hp, mu=0.5)
    lost, _ = _loss(kind, hp, mu=0.0)
    assert tie == pytest.approx(0.5 * (won + lost), rel=1e-6)


def test_ranking_is_all_pairs_weighted_equally():
    r = jnp.asarray([[0.3, -0.2, 0.1]])           # responses 0, 1, 2
    order = jnp.asarray([[2, 0, 1]])              # best → worst: 2 > 0 > 1
    a, b, mu, w = comparison_pairs(r, order=order)
    assert np.allclose(a, [0.1, 0.1, 0.3]) and np.allclose(b, [0.3, -0.2, -0.2])
    assert np.allclose(mu, 1.0) and np.allclose(w, 1 / 3)
    hp = _hp()
    loss, m = preference_loss(r, {"order": order}, hp, "sigmoid")
    want = np.mean([math.log(1 + math.exp(-(x - y))) for x, y in ((0.1, 0.3), (0.1, -0.2), (0.3, -0.2))])
    assert float(loss) == pytest.approx(want, rel=1e-6)
    assert float(m["rewards/accuracy"]) == pytest.approx(2 / 3)
    assert float(m["rewards/chosen"]) == pytest.approx((0.1 + 0.1 + 0.3) / 3)
    assert float(m["rewards/margin"]) == pytest.approx(((0.1 - 0.3) + 0.3 + 0.5) / 3)


def test_metrics_ignore_ties():
    r = jnp.asarray([[1.0, 0.0], [0.0, 2.0], [5.0, 5.0]])
    mu = jnp.asarray([1.0, 0.0, 0.5])
    _, m = preference_loss(r, {"mu": mu}, _hp(), "sigmoid")
    assert float(m["rewards/accuracy"]) == 1.0
    assert float(m["rewards/chosen"]) == pytest.approx(1.5)
    assert float(m["rewards/rejected"]) == pytest.approx(0.0)
