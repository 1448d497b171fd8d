"""metrics.jsonl logging: append, non-finite values, resume truncation, TensorBoard gating, progress."""

import json
import math
import sys
import types

import jax.numpy as jnp
import pytest

from rlhf_jax.metrics import MetricsLogger, progress, read_metrics, truncate_metrics


def strict_lines(path):
    def bad_constant(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    return [json.loads(line, parse_constant=bad_constant) for line in path.read_text().splitlines()]


def test_log_appends_one_strict_json_line_per_call(tmp_path):
    with MetricsLogger(tmp_path / "run") as log:
        log.log(0, {"objective/kl": jnp.array(0.5), "n": 3}, stage="rl")
        # flushed immediately: visible before close
        assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 1
        log.log(1, {"objective/kl": float("nan"), "x": float("inf"), "y": -math.inf, "s": "ok"}, stage="rl")
    lines = strict_lines(tmp_path / "run" / "metrics.jsonl")
    assert list(lines[0])[:3] == ["stage", "step", "time"]
    assert lines[0]["stage"] == "rl" and lines[0]["step"] == 0 and lines[0]["objective/kl"] == 0.5
    assert lines[1]["objective/kl"] == "nan" and lines[1]["x"] == "inf" and lines[1]["y"] == "-inf"
    recs = read_metrics(tmp_path / "run")
    assert math.isnan(recs[1]["objective/kl"]) and recs[1]["x"] == math.inf and recs[1]["y"] == -math.inf
    assert recs[1]["s"] == "ok" and recs[0]["n"] == 3
    assert recs[0]["time"] <= recs[1]["time"]


def test_reserved_names_and_unknown_backend(tmp_path):
    log = MetricsLogger(tmp_path)
    with pytest.raises(ValueError, match="clash with the reserved fields"):
        log.log(0, {"step": 1.0}, stage="sft")
    log.close()
    with pytest.raises(ValueError, match="unknown metrics backend 'jsnol'; did you mean 'jsonl'?"):
        MetricsLogger(tmp_path, backends=("jsnol",))


def test_resume_false_starts_afresh_resume_true_appends(tmp_path):
    with MetricsLogger(tmp_path) as log:
        log.log(0, {"a": 1.0}, "sft")
    with MetricsLogger(tmp_path, resume=True) as log:
        log.log(1, {"a": 2.0}, "sft")
    assert [r["a"] for r in read_metrics(tmp_path)] == [1.0, 2.0]
    with MetricsLogger(tmp_path) as log:
        log.log(0, {"a": 3.0}, "sft")
    assert [r["a"] for r in read_metrics(tmp_path)] == [3.0]


def _pipeline(log):
    for s in range(3):
        log.log(s, {"sft/loss": 3.0 - s}, "pretrain")
    for s in range(2):
        log.log(s, {"sft/loss": 1.0 - s / 10}, "sft")
    for s in range(4):
        log.log(s, {"reward/loss": 0.7}, "reward")
    for s in range(6):
        log.log(s, {"objective/kl": float(s)}, "rl")
        if s % 2 == 0:
            log.log(s, {"eval/gold_reward": float("nan") if s == 4 else s / 10}, "eval")


def test_truncate_after_drops_later_steps_and_stages(tmp_path):
    log = MetricsLogger(tmp_path)
    _pipeline(log)
    assert len(read_metrics(tmp_path)) == 3 + 2 + 4 + 6 + 3
    # crash after rl step 5; the checkpoint restored is rl step 2
    assert log.truncate_after("rl", 2) == 3 + 1  # rl 3,4,5 and eval 4 (the NaN line) dropped
    log.log(3, {"objective/kl": 30.0}, "rl")  # the logger keeps appending after truncation
    log.close()
    recs = read_metrics(tmp_path)
    rl = [(r["step"], r["objective/kl"]) for r in recs if r["stage"] == "rl"]
    assert rl == [(0, 0.0), (1, 1.0), (2, 2.0), (3, 30.0)]
    assert [r["step"] for r in recs if r["stage"] == "eval"] == [0, 2]  # eval 2 came before rl 3
    assert sum(r["stage"] == "reward" for r in recs) == 4

    # resuming an earlier stage drops the later pipeline stages and what was logged after the cut
    assert truncate_metrics(tmp_path, "sft", 0) == 1 + 4 + 4 + 2
    assert [(r["stage"], r["step"]) for r in read_metrics(tmp_path)] == [
        ("pretrain", 0), ("pretrain", 1), ("pretrain", 2), ("sft", 0)]
    assert truncate_metrics(tmp_path / "missing", "rl", 0) == 0


def test_read_metrics_torn_and_corrupt_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"stage": "rl", "step": 0, "a": 1}\n{"stage": "rl", "st')
    assert read_metrics(tmp_path) == [{"stage": "rl", "step": 0, "a": 1}]
    assert read_metrics(path) == read_metrics(tmp_path)
    path.write_text('{"stage": "rl", "step": 0}\nnot json\n{"stage": "rl", "step": 1}\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl:2: not a JSON line"):
        read_metrics(tmp_path)
    assert read_metrics(tmp_path / "nothing_here") == []


def test_tensorboard_backend_missing_package_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    with pytest.raises(ImportError, match=r"needs the package 'tensorboardX', which is not installed; "
                                          r"pip install -r requirements-logging\.txt"):
        MetricsLogger(tmp_path, backends=("jsonl", "tensorboard"))


def test_tensorboard_backend_writes_scalars(tmp_path, monkeypatch):
    written = []

    class FakeWriter:
        def __init__(self, logdir, **kwargs):
            self.logdir = logdir

        def add_scalar(self, tag, value, step, walltime=None):
            written.append((tag, value, step))

        def add_text(self, tag, text, step, walltime=None):
            written.append((tag, text, step))

        def flush(self):
            pass

        def close(self):
            written.append("closed")

    monkeypatch.setitem(sys.modules, "tensorboardX", types.SimpleNamespace(SummaryWriter=FakeWriter))
    with MetricsLogger(tmp_path, backends=("jsonl", "tensorboard")) as log:
        log.log(7, {"objective/kl": jnp.array(0.25), "note": "x", "flag": True, "bad": float("nan")}, "rl")
    assert written[0] == ("rl/objective/kl", 0.25, 7)
    assert written[1] == ("rl/note", "x", 7) and written[2] == ("rl/flag", 1.0, 7)
    assert written[3][:1] == ("rl/bad",) and math.isnan(written[3][1])
    assert written[4:] == ["closed"]
    assert (tmp_path / "tensorboard").is_dir()


def test_progress_enabled_disabled_and_postfix(capsys, monkeypatch):
    monkeypatch.delenv("RLHF_JAX_NO_PROGRESS", raising=False)
    # stderr is captured (not a TTY) -> disabled by default
    assert list(progress(range(3), "quiet")) == [0, 1, 2]
    assert "quiet" not in capsys.readouterr().err

    bar = progress(4, "train", force=True)
    bar.set_metrics({"loss": jnp.array(0.123456), "step": 3})
    bar.update(2)
    bar.close()
    err = capsys.readouterr().err
    assert "train" in err and "2/4" in err and "loss=0.1235" in err and "step=3" in err

    monkeypatch.setenv("RLHF_JAX_NO_PROGRESS", "1")
    bar = progress(range(2), "hidden", force=True)
    assert bar.disable
    bar.set_metrics({"loss": 1.0})
    assert list(bar) == [0, 1]
    bar.close()
    assert "hidden" not in capsys.readouterr().err
