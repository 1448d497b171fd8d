"""(sum, count) metric aggregation: hand-computed weighted means and a single host transfer."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.metrics import MeanAccumulator, to_python


def test_weighted_means_by_hand():
    acc = MeanAccumulator()
    acc.add({"loss": 2.0, "acc": 0.5}, weight=2)
    acc.add({"loss": jnp.float32(5.0), "acc": jnp.array(1.0)}, weight=1)
    out = acc.result()
    # loss: (2*2 + 5*1) / 3 = 3; acc: (0.5*2 + 1*1) / 3 = 2/3 -- not the mean of means (0.75)
    assert out["loss"] == pytest.approx(3.0)
    assert out["acc"] == pytest.approx(2.0 / 3.0)
    assert all(type(v) is float for v in out.values())
    assert len(acc) == 2 and acc


def test_sum_count_pairs_and_per_key_weights():
    acc = MeanAccumulator()
    # masked token sums from two micro-batches: 6 over 4 tokens, then 2 over 4 tokens -> 8/8
    acc.add_sums({"tok/kl": jnp.array(6.0)}, {"tok/kl": jnp.array(4.0)})
    acc.add_sums({"tok/kl": 2.0}, 4)
    acc.add({"a": 1.0, "b": 3.0}, weight={"a": 1.0, "b": 0.0})
    acc.add({"a": 4.0, "b": 3.0}, weight={"a": 2.0, "b": 0.0})
    out = acc.result()
    assert out["tok/kl"] == pytest.approx(1.0)
    assert out["a"] == pytest.approx((1.0 + 8.0) / 3.0)
    assert math.isnan(out["b"])  # zero total count
    sums, counts = acc.sums_and_counts()
    assert float(sums["tok/kl"]) == 8.0 and float(counts["tok/kl"]) == 8.0
    acc.reset()
    assert acc.result() == {} and not acc


def test_to_python_single_transfer(monkeypatch):
    calls = []
    real = jax.device_get

    def counting(x):
        calls.append(x)
        return real(x)

    monkeypatch.setattr(jax, "device_get", counting)
    metrics = {"a": jnp.array(1.5), "b": jnp.array(2, jnp.int32), "c": 0.25, "d": np.float32(3.0),
               "e": jnp.array([7.0]), "f": jnp.array(True)}
    out = to_python(metrics)
    assert len(calls) == 1
    assert out == {"a": 1.5, "b": 2, "c": 0.25, "d": 3.0, "e": 7.0, "f": True}
    assert type(out["a"]) is float and type(out["b"]) is int and type(out["f"]) is bool


def test_to_python_rejects_non_scalars():
    with pytest.raises(ValueError, match=r"metric 'v' is not a scalar \(shape \(2,\)\)"):
        to_python({"v": jnp.zeros(2)})
