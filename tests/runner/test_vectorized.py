"""Vectorised trials: 2 seeds × 2 KL coefficients as one vmapped step 3 give, run by run, the
files and the metrics of the 4 sequential runs (float tolerance), on the tiny task; a lane that
goes non-finite (learning rate 1e9) stops alone; a finished program rerun changes nothing."""

from __future__ import annotations

import json
import math
import os

import jax
import pytest

from rlhf_jax.runner.config_loader import ConfigError, load_config
from rlhf_jax.runner.pipeline import Pipeline
from rlhf_jax.runner.schema import ExperimentConfig
from rlhf_jax.runner.vectorized import run_vectorized

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QUICKSTART = os.path.join(ROOT, "experiments", "quickstart.yaml")
TINY = ["task.corpus_size=300", "task.n_eval_prompts=4", "pretrain.steps=30", "pretrain.batch_size=16",
        "reward.n_prompts=40", "reward.k=2", "reward.epochs=1", "reward.batch_size=8",
        "ppo.iterations=4", "ppo.batch_size=8", "ppo.minibatches=2", "ppo.epochs=1",
        "ppo.eval_every=2", "eval.samples_per_prompt=1", "eval.best_of_n=2",
        "run.checkpoint_every=2", "run.progress=false", "run.plots=false"]
SEEDS, BETAS = (0, 1), (0.02, 0.2)


def _cfg(out, *extra):
    return load_config(ExperimentConfig, QUICKSTART, TINY + [f"run.out_dir={out}", *extra])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("vectorized")
    # The sequential runs compile the same programs (seeds and β are data): JAX's persistent
    # cache lets each load them instead of compiling again.
    old = {k: getattr(jax.config, k) for k in ("jax_compilation_cache_dir",
                                           "jax_persistent_cache_min_compile_time_secs",
                                           "jax_persistent_cache_min_entry_size_bytes")}
    jax.config.update("jax_compilation_cache_dir", str(root / "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    try:
        base = root / "base"
        assert Pipeline(_cfg(base)).run(stop_after="reward") is None
        trial = lambda mode, s, b, *x: _cfg(root / mode / f"seed{s}_beta{b}", f"run.reuse_from={base}",  # noqa: E731
                                            f"run.rl_seed={s}", f"ppo.kl.beta={b}", *x)
        seq = {(s, b): Pipeline(trial("seq", s, b)).run() for s in SEEDS for b in BETAS}
        cfgs = [trial("vec", s, b) for s in SEEDS for b in BETAS]
        cfgs.append(trial("vec", 9, 0.02, "ppo.lr=1e9"))  # a lane that diverges
        vec = run_vectorized(cfgs)
    finally:
        for k, v in old.items():
            jax.config.update(k, v)
    return root, seq, cfgs, vec


def _metrics(path):
    return [json.loads(line) for line in open(path / "metrics.jsonl")]


def _close(a, b, key):
    if isinstance(a, str) or isinstance(b, str) or a is None or b is None:
        assert a == b, key
    else:
        assert math.isclose(a, b, rel_tol=2e-4, abs_tol=2e-5), f"{key}: {a} vs {b}"


def test_each_vmapped_run_equals_its_sequential_run(runs):
    root, seq, cfgs, vec = runs
    keys = [(s, b) for s in SEEDS for b in BETAS]
    for (s, b), summary in zip(keys, vec):
        assert summary is not None
        ref = seq[(s, b)]
        assert set(summary) == set(ref)
        for k in ("gold_reward_final", "kl_to_reference_final", "kl_coef_final", "response_length_final",
                  "eos_rate_final", "gold_reward_initial", "rm_eval_accuracy"):
            _close(summary[k], ref[k], k)
        a_dir, b_dir = root / "vec" / f"seed{s}_beta{b}", root / "seq" / f"seed{s}_beta{b}"
        # the same files (Orbax names its array shards by content hash: those by directory only)
        files = lambda d: sorted({os.path.relpath(os.path.join(p, f), d) if "/d" not in p  # noqa: E731
                                  else os.path.relpath(p, d) for p, _, fs in os.walk(d) for f in fs})
        assert files(a_dir) == files(b_dir)
        ma, mb = _metrics(a_dir), _metrics(b_dir)
        assert [(r["stage"], r["step"]) for r in ma] == [(r["stage"], r["step"]) for r in mb]
        for ra, rb in zip(ma, mb):
            assert set(ra) == set(rb)
            for k in ra:
                if k not in ("time", "perf/iteration_s") and not k.startswith("time/"):
                    _close(ra[k], rb[k], f"seed {s} beta {b} {ra['stage']} step {ra['step']} {k}")


def test_the_runs_differ_so_the_comparison_means_something(runs):
    _, seq, _, _ = runs
    kl = {k: v["kl_to_reference_final"] for k, v in seq.items()}
    assert len({round(v, 6) for v in kl.values()}) == len(kl)  # every seed and β its own run
    betas = {k: v["kl_coef_final"] for k, v in seq.items()}
    for s in SEEDS:
        assert betas[(s, 0.2)] > 5 * betas[(s, 0.02)]


def test_a_diverging_lane_stops_alone(runs):
    root, _, cfgs, vec = runs
    assert vec[-1] is None
    d = cfgs[-1].run.out_dir
    stopped = json.load(open(os.path.join(d, "stopped.json")))
    assert stopped["stage"] == "rl" and stopped["step"] == 1
    assert not os.path.exists(os.path.join(d, "summary.json"))
    assert all(v is not None for v in vec[:-1])


def test_rerun_of_finished_runs_changes_nothing_and_mixed_keys_are_refused(runs):
    root, _, cfgs, vec = runs
    before = {c.run.out_dir: open(os.path.join(c.run.out_dir, "summary.json")).read() for c in cfgs[:2]}
    again = run_vectorized(cfgs[:2])
    assert again == vec[:2]
    for d, text in before.items():
        assert open(os.path.join(d, "summary.json")).read() == text
    other = cfgs[0].__class__(**{**cfgs[0].__dict__,
                                 "ppo": cfgs[0].ppo.__class__(**{**cfgs[0].ppo.__dict__, "epochs": 2})})
    with pytest.raises(ConfigError, match="cannot be vectorised"):
        run_vectorized([cfgs[0], other])
