"""Bad input to the CLI: one clear line naming the culprit, exit status 2, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QUICKSTART = os.path.join(ROOT, "experiments", "quickstart.yaml")


def _run(*args, cwd=ROOT):
    env = dict(os.environ, RLHF_JAX_NO_PROGRESS="1")
    return subprocess.run([sys.executable, "-m", "rlhf_jax", "run", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def _one_line_error(proc) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_typo_in_config_file(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("model:\n  preset: tiny\nppo:\n  iteratons: 3\n")
    line = _one_line_error(_run(str(cfg)))
    assert "bad.yaml:4" in line and "ppo.iteratons" in line and "did you mean 'ppo.iterations'" in line


def test_typo_in_override():
    line = _one_line_error(_run(QUICKSTART, "ppo.lrr=1e-4"))
    assert "ppo.lrr" in line and "did you mean 'ppo.lr'" in line


@pytest.mark.parametrize("override,needle", [
    ("ppo.lr=-1", "ppo.lr"),
    ("ppo.epochs=two", "ppo.epochs"),
    ("ppo.kl.controller=adaptiv", "ppo.kl.controller"),
    ("reward.k=1", "reward.k"),
])
def test_bad_value(override, needle):
    line = _one_line_error(_run(QUICKSTART, override))
    assert needle in line


def test_missing_config_file(tmp_path):
    line = _one_line_error(_run(str(tmp_path / "nope.yaml")))
    assert "nope.yaml" in line


def test_missing_data_file(tmp_path):
    line = _one_line_error(_run(QUICKSTART, f"run.out_dir={tmp_path / 'r'}",
                                f"data.preferences={tmp_path / 'missing.jsonl'}"))
    assert "data.preferences" in line and "missing.jsonl" in line


def test_unknown_task_and_preset(tmp_path):
    line = _one_line_error(_run(QUICKSTART, f"run.out_dir={tmp_path / 'r'}", "task.name=sentiment_review"))
    assert "task.name" in line and "sentiment_reviews" in line
    line = _one_line_error(_run(QUICKSTART, f"run.out_dir={tmp_path / 'r2'}", "model.preset=tinyy"))
    assert "model.preset" in line and "tiny" in line


def test_unknown_algorithm_lists_every_registered_name():
    from rlhf_jax.algorithms.registry import ALGORITHMS

    line = _one_line_error(_run(QUICKSTART, "algorithm=zzz"))
    assert "'algorithm'" in line and "zzz" in line
    for name in ALGORITHMS.names():
        assert repr(name) in line, name


def test_algorithm_whose_needs_are_unmet(tmp_path):
    line = _one_line_error(_run(QUICKSTART, f"run.out_dir={tmp_path / 'r'}", "algorithm=rloo",
                                "rloo.group_size=1"))
    assert "rloo.group_size = 1" in line and "at least 2 responses per prompt" in line
    assert not os.path.exists(tmp_path / "r" / "checkpoints")  # nothing was computed


@pytest.mark.parametrize("override, needle", [
    ("a2c.clip_eps_hi=0.3", "unknown key 'a2c.clip_eps_hi'; did you mean 'a2c.clip_eps_high'?"),
    ("a2c.group_size=4", "unknown key 'a2c.group_size'"),       # a critic-free option
    ("a2c.dual_clip_c=0.5", "'a2c.dual_clip_c' must be >= 1.0"),
])
def test_option_the_algorithm_does_not_have(override, needle):
    line = _one_line_error(_run(QUICKSTART, "algorithm=a2c", override))
    assert needle in line


def test_override_of_another_algorithms_section():
    line = _one_line_error(_run(QUICKSTART, "algorithm=grpo", "ppo.vf_coef=0.5"))
    assert "uses algorithm 'grpo'" in line and "'grpo.vf_coef'" in line
    line = _one_line_error(_run(QUICKSTART, "rloo.group_size=8"))  # default algorithm is ppo
    assert "uses algorithm 'ppo'" in line and "algorithm=rloo" in line


def test_offline_algorithm_without_a_preference_source(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "a"}\n{"prompt": "b"}\n')
    line = _one_line_error(_run(QUICKSTART, f"run.out_dir={tmp_path / 'r'}", "algorithm=dpo",
                                "task.name=null", f"data.prompts={prompts}"))
    assert "algorithm 'dpo' learns from preference pairs" in line and "data.preferences" in line
    assert not os.path.exists(tmp_path / "r")  # before anything is written


def test_reward_model_switched_off_for_an_algorithm_that_needs_one(tmp_path):
    line = _one_line_error(_run(QUICKSTART, f"run.out_dir={tmp_path / 'r'}", "reward.train=false"))
    assert "algorithm 'ppo' needs a reward model" in line and "reward.train" in line
    assert "dpo" in line and "simpo" in line  # the algorithms that need none
    assert not os.path.exists(tmp_path / "r")
