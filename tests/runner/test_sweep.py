"""Sweeps: expansion (grid, zip, random with a seed), validation naming the trial and key, shared
steps 1-2, the vmapped program grouping (fast, no training); then through the real CLI on the tiny
task: a sweep with invalid and diverging trials, killed with -9 and rerun (no trial lost, none run
twice, steps 1-2 built once), and the Ray launcher on a local instance."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time

import pytest

from rlhf_jax.runner.config_loader import ConfigError
from rlhf_jax.runner.sweep import expand, load_sweep
from rlhf_jax.runner.vectorized import programs

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tiny_config import ROOT, TINY  # noqa: E402


def _write(path, text):
    path.write_text(text)
    return str(path)


def _sweep_file(tmp_path, body: str, name="sweep.yaml") -> str:
    _write(tmp_path / "tiny.yaml", TINY)
    return _write(tmp_path / name, f"base: tiny.yaml\nsweep:\n  out_dir: {tmp_path / 'out'}\n" + body)


# ----------------------------------------------------------------------------- expansion


def test_grid_zip_and_seeds_expand_in_order(tmp_path):
    path = _sweep_file(tmp_path, """  seeds: [0, 1]
  grid:
    algorithm: [ppo, rloo]
    eval.temperature: [1.0, 0.7]
  zip:
    - {pretrain.lr: [1.0e-3, 3.0e-3], pretrain.warmup: [5, 10]}
""")
    sw = load_sweep(path)
    points = expand(sw.sc)
    assert len(points) == 2 * 2 * 2
    assert points[0] == {"algorithm": "ppo", "eval.temperature": 1.0, "pretrain.lr": 1e-3, "pretrain.warmup": 5}
    assert points[1] == {"algorithm": "ppo", "eval.temperature": 1.0, "pretrain.lr": 3e-3, "pretrain.warmup": 10}
    assert [p["algorithm"] for p in points] == ["ppo"] * 4 + ["rloo"] * 4
    assert len(sw.trials) == 16
    names = [t.name for t in sw.trials]
    assert len(set(names)) == 16
    assert names[0] == "algorithm=ppo,temperature=1,lr=0.001,warmup=5,seed=0"
    t = sw.trials[1]
    assert t.seed == 1 and t.cfg.run.rl_seed == 1 and t.cfg.eval.temperature == 1.0
    assert t.cfg.run.out_dir == os.path.join(str(tmp_path / "out"), "trials", t.name)
    assert t.cfg.pretrain.lr == 1e-3 and t.cfg.pretrain.warmup == 5
    # zipped keys go together: never lr=1e-3 with warmup=10
    assert {(x.cfg.pretrain.lr, x.cfg.pretrain.warmup) for x in sw.trials} == {(1e-3, 5), (3e-3, 10)}


def test_random_axes_are_seeded_and_in_range(tmp_path):
    body = """  random:
    samples: 6
    seed: {seed}
    axes:
      ppo.clip_eps: {{uniform: [0.1, 0.3]}}
      ppo.lr: {{log_uniform: [1.0e-5, 1.0e-3]}}
      ppo.epochs: {{choice: [1, 2, 4]}}
      ppo.minibatches: {{int_uniform: [1, 2]}}
"""
    a = expand(load_sweep(_sweep_file(tmp_path, body.format(seed=3))).sc)
    b = expand(load_sweep(_sweep_file(tmp_path, body.format(seed=3))).sc)
    c = expand(load_sweep(_sweep_file(tmp_path, body.format(seed=4))).sc)
    assert a == b and a != c and len(a) == 6
    for p in a:
        assert 0.1 <= p["ppo.clip_eps"] <= 0.3
        assert 1e-5 <= p["ppo.lr"] <= 1e-3
        assert p["ppo.epochs"] in (1, 2, 4) and p["ppo.minibatches"] in (1, 2)
    assert len({p["ppo.lr"] for p in a}) == 6


@pytest.mark.parametrize("body, words", [
    ("  grid: {ppo.lrr: [1, 2]}\n", ["sweep.grid", "'ppo.lrr'"]),
    ("  grid: {pppo.lr: [1, 2]}\n", ["unknown key 'pppo.lr'", "did you mean 'ppo'"]),
    ("  grid: {ppo.lr: []}\n", ["sweep.grid.ppo.lr", "empty"]),
    ("  zip: [{ppo.lr: [1, 2], ppo.epochs: [1]}]\n", ["sweep.zip[0]", "ppo.lr: 2", "ppo.epochs: 1"]),
    ("  random: {samples: 2, axes: {ppo.lr: {normal: [0, 1]}}}\n", ["sweep.random.axes.ppo.lr", "uniform"]),
    ("  random: {samples: 2, axes: {ppo.lr: {log_uniform: [0, 1]}}}\n", ["log_uniform", "> 0"]),
    ("  grid: {ppo.lr: [1, 2]}\n  zip: [{ppo.lr: [3, 4]}]\n", ["'ppo.lr'", "two axes"]),
    ("  seeds: [0]\n  grid: {run.rl_seed: [1, 2]}\n", ["run.rl_seed", "sweep.seeds"]),
    ("  workers: 0\n", ["sweep.workers", ">= 1"]),
    ("  grid: {sweep.workers: [1, 2]}\n", ["sweep section cannot be swept"]),
])
def test_sweep_file_errors_name_the_key(tmp_path, body, words):
    with pytest.raises(ConfigError) as e:
        load_sweep(_sweep_file(tmp_path, body))
    for w in words:
        assert w in str(e.value), str(e.value)


def test_command_line_overrides_apply_to_every_trial_but_not_to_swept_keys(tmp_path):
    path = _sweep_file(tmp_path, "  seeds: [0, 1]\n  grid: {'*.kl.beta': [0.1, 0.2]}\n")
    sw = load_sweep(path, ["pretrain.steps=7", "sweep.workers=3"])
    assert sw.sc.workers == 3 and {t.cfg.pretrain.steps for t in sw.trials} == {7}
    assert {t.cfg.ppo.kl.beta for t in sw.trials} == {0.1, 0.2}
    for bad, word in (("ppo.kl.beta=0.3", "'ppo.kl.beta'"), ("run.rl_seed=4", "'run.rl_seed'"),
                      ("run.out_dir=x", "sweep.out_dir")):
        with pytest.raises(ConfigError, match=word):
            load_sweep(path, [bad])


def test_invalid_grid_points_are_recorded_per_trial(tmp_path):
    path = _sweep_file(tmp_path, "  grid: {ppo.kl.beta: [0.1, -1.0], ppo.minibatches: [1, 3]}\n")
    sw = load_sweep(path)
    errors = {t.name: t.error for t in sw.trials}
    assert errors["beta=0.1,minibatches=1"] is None
    assert "'ppo.kl.beta' must be >= 0" in errors["beta=-1,minibatches=1"]
    assert "ppo.kl.beta=-1.0" in errors["beta=-1,minibatches=1"]  # the override at fault
    # an algorithm-level check (3 minibatches cannot split 8 responses), per trial
    assert "ppo.minibatches (3) must divide" in errors["beta=0.1,minibatches=3"]
    # the CLI names the trial with its error, and exits 2 only when no trial is valid
    bad = _sweep_file(tmp_path, "  grid: {ppo.kl.beta: [-1.0, -2.0]}\n", "bad.yaml")
    proc = subprocess.run([sys.executable, "-m", "rlhf_jax", "sweep", bad, "--dry-run"], cwd=ROOT,
                          capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 2
    assert "trial beta=-1: " in proc.stderr and "trial beta=-2: " in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")


def test_trials_differing_only_in_step3_share_steps_1_2(tmp_path):
    path = _sweep_file(tmp_path, """  seeds: [0, 1]
  grid:
    algorithm: [ppo, rloo]
    reward.lr: [1.0e-3, 2.0e-3]
""")
    sw = load_sweep(path)
    groups = {}
    for t in sw.trials:
        groups.setdefault(t.group, set()).add((t.cfg.algorithm, t.seed))
    assert len(groups) == 2 and len(sw.bases) == 2  # one per reward.lr
    for members in groups.values():
        assert members == {("ppo", 0), ("ppo", 1), ("rloo", 0), ("rloo", 1)}
    for t in sw.trials:
        assert t.cfg.run.reuse_from == sw.base_dir(t.group)
        assert sw.bases[t.group].reward.lr == t.cfg.reward.lr
        assert sw.bases[t.group].run.rl_seed is None
    # with sharing off, every trial builds its own steps 1-2
    off = load_sweep(path, ["sweep.share_steps=false"])
    assert not off.bases and all(t.cfg.run.reuse_from is None for t in off.trials)


def test_vectorisable_keys_group_and_the_others_split(tmp_path):
    logs = []
    path = _sweep_file(tmp_path, """  seeds: [0, 1]
  grid:
    ppo.kl.beta: [0.02, 0.1]
    ppo.lr: [1.0e-4, 3.0e-4]
    ppo.epochs: [1, 2]
""")
    sw = load_sweep(path)
    groups = programs(sw.trials, logs.append)
    assert len(groups) == 2  # one per ppo.epochs value: seeds, β and lr are arrays
    assert sorted(len(g) for g in groups) == [8, 8]
    for g in groups:
        assert len({t.cfg.ppo.epochs for t in g}) == 1
    assert "ppo.epochs" in logs[0] and "ppo.lr" not in logs[0] and "ppo.kl.beta" not in logs[0]


# ----------------------------------------------------------------------------- through the CLI


def _env(cache):
    return dict(os.environ, PYTHONPATH=ROOT, RLHF_JAX_NO_PROGRESS="1", JAX_COMPILATION_CACHE_DIR=str(cache),
                JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


def _rows(out):
    with open(os.path.join(out, "results.csv")) as f:
        return {r["trial"]: r for r in csv.DictReader(f)}


def _attempts(out, name):
    with open(os.path.join(out, "logs", f"{name}.log")) as f:
        return sum(line.startswith("$ ") for line in f)


@pytest.fixture(scope="module")
def killed_sweep(tmp_path_factory):
    """6 trials: 2 good (two seeds), 2 out of range (recorded before anything runs), 2 that fail in
    their own run (a missing run.reuse_from: exit 2, recorded with its error line); killed with -9
    after the first trial finished, then rerun with 2 workers."""
    tmp_path = tmp_path_factory.mktemp("killed_sweep")
    out = tmp_path / "out"
    path = _sweep_file(tmp_path, """  seeds: [0, 1]
  zip:
    - {ppo.kl.beta: [0.05, -1.0, 0.05], run.reuse_from: [null, null, /nonexistent/run]}
  workers: 1
""")
    env = _env(tmp_path / "jax_cache")
    cmd = [sys.executable, "-m", "rlhf_jax", "sweep", path]
    first = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    good = "beta=0.05,reuse_from=None,seed=0"
    deadline = time.time() + 400
    while not os.path.exists(out / "trials" / good / "summary.json"):
        assert first.poll() is None, first.communicate()
        assert time.time() < deadline
        time.sleep(0.5)
    time.sleep(1.0)  # the next trial has started
    first.kill()
    first.wait()
    for lock in (out / "locks").iterdir():  # its trial's process stops on the sweep's death
        deadline = time.time() + 120
        while True:
            import fcntl

            with open(lock, "a+") as f:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError:
                    assert time.time() < deadline, f"{lock} still held"
                    time.sleep(0.5)

    proc = subprocess.run(cmd + ["--workers", "2"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    return out, cmd, env, good, proc


@pytest.mark.slow
def test_sweep_killed_and_rerun_loses_nothing_and_runs_nothing_twice(killed_sweep):
    out, cmd, env, good, proc = killed_sweep
    assert proc.returncode == 1, proc.stderr  # some trials failed, as they should
    rows = _rows(out)
    assert len(rows) == 6
    status = {k: r["status"] for k, r in rows.items()}
    ok, invalid, bad = ("beta=0.05,reuse_from=None", "beta=-1,reuse_from=None",
                        "beta=0.05,reuse_from=_nonexistent_run")
    assert status == {f"{ok},seed=0": "done", f"{ok},seed=1": "done",
                      f"{invalid},seed=0": "invalid", f"{invalid},seed=1": "invalid",
                      f"{bad},seed=0": "failed", f"{bad},seed=1": "failed"}
    assert "'ppo.kl.beta' must be >= 0" in rows[f"{invalid},seed=0"]["error"]
    assert "error: run.reuse_from: no run at /nonexistent/run" in rows[f"{bad},seed=1"]["error"]
    # the trial finished before the kill ran once; nothing else ran more than twice (once
    # interrupted, once resumed) and the trial running at the kill resumed from its checkpoints
    assert _attempts(out, good) == 1
    for name in status:
        if status[name] != "invalid":
            assert _attempts(out, name) <= 2
    for name in (f"{ok},seed=0", f"{ok},seed=1"):
        recs = [json.loads(x) for x in open(out / "trials" / name / "metrics.jsonl")]
        steps = [r["step"] for r in recs if r["stage"] == "rl"]
        assert steps == [1, 2, 3, 4]
        assert not any(r["stage"] in ("pretrain", "reward") for r in recs)  # steps 1-2 shared
    shared = list((out / "shared").iterdir())
    assert len(shared) == 1
    assert [json.loads(x)["stage"] for x in open(shared[0] / "metrics.jsonl")].count("pretrain") > 0
    assert _attempts(out, f"shared-{shared[0].name}") == 1
    # the seeds differ, and the two good trials agree on the shared steps 1-2's numbers
    a, b = rows[f"{ok},seed=0"], rows[f"{ok},seed=1"]
    assert a["gold_reward_initial"] == b["gold_reward_initial"]
    assert a["kl_to_reference_final"] != b["kl_to_reference_final"]
    report = (out / "report.md").read_text()
    assert "ppo.kl.beta=0.05, run.reuse_from=None | 2/2" in report
    assert "plots/learning_curves.png" in report and (out / "plots" / "reward_vs_kl.png").exists()
    assert "Trials that did not finish" in report
    # a rerun retries only the failed trials (they fail again); the finished ones are not touched
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 1 and "6 trials: 2 done, 2 invalid, 2 to run in 2 jobs" in again.stderr
    assert _attempts(out, good) == 1 and _attempts(out, f"{bad},seed=0") == 2


@pytest.mark.slow
def test_ray_launcher_runs_a_two_trial_sweep_on_a_local_instance(tmp_path, killed_sweep):
    pytest.importorskip("ray", reason="Ray is optional (requirements-ray.txt); CI installs it")
    out = tmp_path / "out"
    shared = next((killed_sweep[0] / "shared").iterdir())  # steps 1-2 built by the other sweep
    path = _sweep_file(tmp_path, f"""  seeds: [0, 1]
  launcher: ray
  workers: 2
ppo: {{iterations: 2}}
run: {{reuse_from: {shared}}}
""")
    env = dict(killed_sweep[2])  # its compilation cache too
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-m", "rlhf_jax", "sweep", path], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ray: started a local instance" in proc.stderr
    rows = _rows(out)
    assert [r["status"] for r in rows.values()] == ["done", "done"]
    assert not (out / "shared").exists()  # the trials name their steps 1-2 run themselves
    for name in rows:
        assert (out / "trials" / name / "summary.json").exists()


@pytest.mark.slow
def test_inline_launcher_records_a_crashing_trial_and_runs_the_rest(tmp_path, monkeypatch, capsys):
    """``--launcher inline``: trials run in this process; one that raises is recorded as failed
    with its error line, the others finish, the exit status says so, and a rerun retries only it."""
    from rlhf_jax.runner import pipeline
    from rlhf_jax.runner.cli import main

    path = _sweep_file(tmp_path, "  seeds: [0, 1]\n")
    real = pipeline.run_experiment

    def crash_seed_1(cfg, stop_after=None):
        if cfg.run.rl_seed == 1:
            raise RuntimeError("boom in trial seed 1")
        return real(cfg, stop_after)

    monkeypatch.setattr(pipeline, "run_experiment", crash_seed_1)
    assert main(["sweep", path, "--launcher", "inline"]) == 1
    rows = {r["seed"]: r for r in csv.DictReader(open(tmp_path / "out" / "results.csv"))}
    assert rows["0"]["status"] == "done" and rows["1"]["status"] == "failed"
    assert "RuntimeError: boom in trial seed 1" in rows["1"]["error"]
    monkeypatch.setattr(pipeline, "run_experiment", real)
    capsys.readouterr()
    assert main(["sweep", path, "--launcher", "inline"]) == 0
    assert "1 to run" in capsys.readouterr().err
