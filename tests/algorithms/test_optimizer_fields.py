"""Every stage exposes the optimizer's knobs, and every knob reaches the optimizer."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.algorithms.registry import ALGORITHMS
from rlhf_jax.algorithms.sections import OptimizerFields, optimizer_kwargs
from rlhf_jax.algorithms.train_state import create_state, make_optimizer
from rlhf_jax.runner.schema import PretrainConfig, RewardConfig, SFTConfig

KNOBS = [f.name for f in dataclasses.fields(OptimizerFields) if f.name != "lr"]


@pytest.mark.parametrize("section", [PretrainConfig, SFTConfig, RewardConfig]
                         + [ALGORITHMS.get(n).section for n in ALGORITHMS.names()])
def test_every_stage_has_the_optimizer_knobs(section):
    assert issubclass(section, OptimizerFields)
    assert sorted(optimizer_kwargs(section())) == sorted(KNOBS)


def _two_updates(lr=0.1, **kw):
    """The updates of two steps with different gradients (equal ones hide b2 behind Adam's
    bias correction)."""
    params = {"w": jnp.array([1.0, -2.0, 3.0])}
    tx = make_optimizer(lr, **{**dict(warmup=0, b1=0.9, b2=0.95, eps=1e-5, weight_decay=0.0,
                                      max_grad_norm=1.0), **kw})
    opt_state = create_state(params, tx).opt_state
    out = []
    for g in (jnp.array([3.0, 4.0, 0.0]), jnp.array([0.0, 0.3, -0.4])):  # global norms 5 and 0.5
        updates, opt_state = tx.update({"w": g}, opt_state, params)
        out.append(np.asarray(updates["w"]))
    return out


@pytest.mark.parametrize("knob, value", [("warmup", 10), ("b1", 0.5), ("b2", 0.5), ("eps", 10.0),
                                         ("weight_decay", 0.5), ("max_grad_norm", 0.0)])
def test_each_knob_changes_the_update(knob, value):
    base, base2 = _two_updates()
    new, new2 = _two_updates(**{knob: value})
    assert not (np.allclose(base, new) and np.allclose(base2, new2)), knob


def test_max_grad_norm_zero_turns_clipping_off():
    # with eps large, Adam's first update is ~ g / eps: clipping to norm 1 shrinks it 5x
    clipped, _ = _two_updates(eps=1e5)
    raw, _ = _two_updates(eps=1e5, max_grad_norm=0.0)
    np.testing.assert_allclose(raw, 5 * clipped, rtol=1e-3)
