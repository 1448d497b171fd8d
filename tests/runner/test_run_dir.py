"""Unit tests of the hardening pieces: run-directory files, the non-finite guard, deferred signals,
which settings a rerun may change after a non-finite stop."""

from __future__ import annotations

import os
import signal
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax import interrupts
from rlhf_jax.algorithms.step import NonFiniteError, guarded_names, nonfinite_code, nonfinite_metric
from rlhf_jax.runner.run_reuse import _may_change
from rlhf_jax.runner.run_dir import (RunDirError, check_out_dir, load_npz, read_json, read_yaml,
                                     save_npz, write_json, write_yaml)


def test_check_out_dir(tmp_path):
    check_out_dir(str(tmp_path / "new" / "deeper"))  # creatable
    assert not (tmp_path / "new").exists()  # and nothing was created
    (tmp_path / "f").write_text("x")
    with pytest.raises(RunDirError, match="is a file"):
        check_out_dir(str(tmp_path / "f"))
    with pytest.raises(RunDirError, match="cannot be created"):
        check_out_dir(str(tmp_path / "f" / "run"))
    with pytest.raises(RunDirError, match="cannot be written"):
        check_out_dir("/proc/rlhf_jax_test_run")
    assert [p for p in os.listdir(tmp_path) if p.startswith(".rlhf_jax_probe")] == []


def test_json_yaml_npz_round_trip_and_corruption(tmp_path):
    write_json(str(tmp_path / "a.json"), {"x": 1.5})
    assert read_json(str(tmp_path / "a.json"), "fix") == {"x": 1.5}
    assert read_json(str(tmp_path / "missing.json"), "fix") is None
    write_yaml(str(tmp_path / "c.yaml"), {"ppo": {"lr": 1e-3}})
    assert read_yaml(str(tmp_path / "c.yaml"), "fix") == {"ppo": {"lr": 1e-3}}
    save_npz(str(tmp_path / "d.npz"), {"input_ids": np.arange(6).reshape(3, 2),
                                       "attention_mask": np.ones((3, 2))})
    d = load_npz(str(tmp_path / "d.npz"), ("input_ids", "attention_mask"), "fix")
    np.testing.assert_array_equal(d["input_ids"], np.arange(6).reshape(3, 2))
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]

    (tmp_path / "a.json").write_bytes(b'{"x": ')
    with pytest.raises(RunDirError, match=r"a\.json: unreadable .*; do this"):
        read_json(str(tmp_path / "a.json"), "do this")
    (tmp_path / "a.json").write_bytes(b"[1]")
    with pytest.raises(RunDirError, match="expected a JSON dict"):
        read_json(str(tmp_path / "a.json"), "fix")
    (tmp_path / "c.yaml").write_bytes(b"\xff")
    with pytest.raises(RunDirError, match="c.yaml: unreadable"):
        read_yaml(str(tmp_path / "c.yaml"), "fix")
    save_npz(str(tmp_path / "e.npz"), {"input_ids": np.zeros((3, 2)), "attention_mask": np.zeros((2, 2))})
    with pytest.raises(RunDirError, match="different lengths"):
        load_npz(str(tmp_path / "e.npz"), ("input_ids",), "fix")
    with pytest.raises(RunDirError, match="no array 'gold'"):
        load_npz(str(tmp_path / "d.npz"), ("gold",), "fix")
    (tmp_path / "d.npz").write_bytes(b"PK\x03\x04junk")
    with pytest.raises(RunDirError, match="d.npz: unreadable"):
        load_npz(str(tmp_path / "d.npz"), (), "fix")


def test_nonfinite_code_points_at_the_first_bad_guarded_metric():
    guarded = ("optim/", "objective/kl")
    metrics = {"optim/loss": jnp.float32(1.0), "optim/grad_norm": jnp.float32(2.0),
               "objective/kl": jnp.float32(0.1), "policy/clipfrac": jnp.float32(np.nan)}
    assert guarded_names(metrics, guarded) == ["objective/kl", "optim/grad_norm", "optim/loss"]
    assert int(nonfinite_code(metrics, guarded)) == 0  # the NaN is in an unguarded metric
    bad = dict(metrics, **{"optim/loss": jnp.float32(np.inf), "optim/grad_norm": jnp.float32(np.nan)})
    code = nonfinite_code(bad, guarded)
    assert int(code) == 2 and nonfinite_metric(code, bad, guarded) == "optim/grad_norm"
    vec = dict(metrics, **{"objective/kl": jnp.array([0.0, -np.inf])})
    assert nonfinite_metric(nonfinite_code(vec, guarded), vec, guarded) == "objective/kl"
    err = NonFiniteError("pretrain", 17, "optim/grad_norm", 10)
    assert "pretrain step 17" in str(err) and "pretrain step 10, is kept" in str(err)


def test_deferred_interrupts_deliver_after_the_block():
    interrupts.install()
    try:
        done = []
        with pytest.raises(KeyboardInterrupt):
            with interrupts.deferred_interrupts():
                os.kill(os.getpid(), signal.SIGINT)
                done.append("the block ran to its end")
        assert done
        interrupts._received.clear()
        interrupts.check()  # nothing pending: no raise
        with pytest.raises(interrupts.Terminated):
            with interrupts.deferred_interrupts():
                os.kill(os.getpid(), signal.SIGTERM)
        # Had a library swallowed that raise, the next check raises it again.
        with pytest.raises(interrupts.Terminated):
            interrupts.check()
        # An interrupt Python cannot raise (in a GC callback, a __del__) is not printed.
        class Dropper:
            def __del__(self):
                raise KeyboardInterrupt()
        seen = []
        previous = sys.unraisablehook
        try:
            sys.unraisablehook = seen.append  # stands for Python's printer, behind ours
            interrupts.install()
            Dropper()
            assert seen == []
            class Other:
                def __del__(self):
                    raise ValueError("other")
            Other()
            assert len(seen) == 1 and isinstance(seen[0].exc_value, ValueError)
        finally:
            sys.unraisablehook = previous
    finally:
        interrupts._received.clear()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def test_settings_a_rerun_may_change_after_a_nonfinite_stop():
    assert _may_change("rl", ["ppo.lr", "ppo.kl.beta", "eval.temperature"], "ppo")
    assert not _may_change("rl", ["reward.lr"], "ppo")
    assert not _may_change("rl", ["algorithm"], "ppo")
    assert _may_change("reward", ["reward.lr", "reward.epochs", "grpo.lr"], "grpo")
    assert not _may_change("reward", ["reward.k"], "ppo")  # the sampled comparisons depend on it
    assert _may_change("pretrain", ["pretrain.lr", "reward.k"], "ppo")
    assert not _may_change("pretrain", ["model.max_len"], "ppo")
    assert not _may_change("unknown", ["ppo.lr"], "ppo")
