"""Iterated online RLHF (``online.rounds``): round boundaries, the checks before compute, and a
tiny 3-round run that resumes bitwise after being stopped inside a round's RL iterations and
inside a round's reward-model update. (That the retrained reward model gets better on the newest
policy's samples is shown at the quickstart's size in ``test_pipeline_e2e.py``.)"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from rlhf_jax.algorithms.registry import ALGORITHMS
from rlhf_jax.runner import online
from rlhf_jax.runner.config_loader import ConfigError, load_config
from rlhf_jax.runner.pipeline import Pipeline
from rlhf_jax.runner.rl_stage import RLStage
from rlhf_jax.runner.schema import ExperimentConfig

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QUICKSTART = os.path.join(ROOT, "experiments", "quickstart.yaml")
TINY = ["task.corpus_size=300", "task.n_eval_prompts=8", "pretrain.steps=30", "reward.n_prompts=40",
        "reward.k=2", "reward.epochs=1", "eval.samples_per_prompt=2", "eval.best_of_n=2",
        "run.checkpoint_every=4", "run.progress=false", "run.plots=false"]
ROUNDS = ["ppo.iterations=6", "ppo.batch_size=8", "ppo.minibatches=2", "ppo.epochs=1",
          "online.rounds=3", "online.n_prompts=40"]
TIME_KEYS = ("wall_time_s", "rl_iteration_time_s", "stage_time_s")


def _cfg(out, *overrides):
    return load_config(ExperimentConfig, QUICKSTART, [f"run.out_dir={out}", *TINY, *overrides])


def test_round_ends():
    assert online.round_ends(60, 3) == [20, 40, 60]
    assert online.round_ends(10, 3) == [3, 7, 10]
    assert online.round_ends(5, 1) == [5]


@pytest.mark.parametrize("overrides, needles", [
    (["algorithm=ilql", "online.rounds=2"], ["online.rounds 2", "'ilql'", "logged responses"]),
    (["online.rounds=3", "ppo.iterations=2"], ["online.rounds 3", "more rounds than ppo.iterations (2)"]),
    (["online.rounds=2", "task.name=null", "data.preferences=prefs.jsonl"],
     ["simulated labelers", "online.preferences"]),
    (["online.rounds=3", "online.preferences=[a.jsonl]"], ["online.preferences: 1 file(s) for 2 later round(s)"]),
    (["online.rounds=2", "online.preferences=[a.jsonl]", "online.n_prompts=10"],
     ["online.n_prompts 10", "leave it 0"]),
    (["online.rounds=2", "online.preferences=[a.jsonl]", "reward.k=4"], ["reward.k = 4", "reward.k=2"]),
])
def test_checked_before_compute(overrides, needles, tmp_path):
    given = {o.split("=")[0] for o in overrides}
    cfg = load_config(ExperimentConfig, QUICKSTART, [f"run.out_dir={tmp_path / 'r'}", *overrides,
                                                     *[t for t in TINY if t.split("=")[0] not in given]])
    with pytest.raises(ConfigError) as e:
        online.check_online(cfg, ALGORITHMS.get(cfg.algorithm))
    for n in needles:
        assert n in str(e.value), e.value


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("online") / "base")
    Pipeline(_cfg(out)).run(stop_after="reward")
    return out


@pytest.fixture(scope="module")
def straight(base, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("online") / "straight")
    return out, Pipeline(_cfg(out, f"run.reuse_from={base}", *ROUNDS)).run()


def _params(run_dir):
    import orbax.checkpoint as ocp

    from rlhf_jax.checkpoint.orbax import RunCheckpoints

    ck = RunCheckpoints(run_dir)
    path = os.path.join(ck.root, "rl", str(ck.latest_step("rl")), "state")
    ck.close()
    return jax.tree_util.tree_leaves(ocp.StandardCheckpointer().restore(path))


@pytest.mark.slow
def test_three_rounds_record_each_round(straight):
    out, s = straight
    rounds = s["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert [r["iterations"] for r in rounds] == [[0, 2], [2, 4], [4, 6]]
    assert [r["comparisons_total"] for r in rounds] == [40, 80, 120]
    for r in rounds:
        assert np.isfinite(r["end"]["eval/gold_reward"]) and np.isfinite(r["end"]["eval/proxy_score"])
    for r in rounds[1:]:
        assert 0 <= r["rm_accuracy_newest_before"] <= 1 and 0 <= r["rm_accuracy_newest_after"] <= 1
        assert r["gain"] > 0
    assert rounds[-1]["end"]["eval/gold_reward"] == pytest.approx(s["gold_reward_final"])
    for name in ("comparisons_round2.npz", "comparisons_round3.npz", "round3.json"):
        assert os.path.exists(os.path.join(out, "online", name)), name
    for stage in ("reward_round2", "reward_round3"):
        assert os.listdir(os.path.join(out, "checkpoints", stage)), stage
    assert "## Rounds (iterated online RLHF)" in open(os.path.join(out, "report.md")).read()
    rl = [json.loads(x)["step"] for x in open(os.path.join(out, "metrics.jsonl")) if '"stage": "rl"' in x]
    assert rl == list(range(1, 7))
    # the commands read the newest round's reward model back
    from rlhf_jax.runner.commands import evaluate_run
    from rlhf_jax.runner.run_loader import load_run

    run = load_run(out)
    assert run.rm_info["round"] == 3 and run.rm_info["gain"] == rounds[-1]["gain"]
    ev = evaluate_run(run)
    assert ev["gold_reward"] == pytest.approx(s["gold_reward_final"])
    assert ev["rm_normalized"] == pytest.approx(s["proxy_score_final"], abs=1e-5)


@pytest.mark.slow
def test_stopped_inside_rounds_resumes_bitwise(base, straight, tmp_path, monkeypatch):
    out = str(tmp_path / "stopped")
    cfg = _cfg(out, f"run.reuse_from={base}", *ROUNDS)
    # stopped as round 3 begins (its comparisons made, its reward model not yet trained), then
    # inside round 3's RL iterations (its reward model trained; the last checkpoint is round 2's end)
    stops = {"rm": 3, "rl": 4}

    real_after, real_rm = RLStage.after_iteration, online.OnlineRounds._reward_model

    def after(self, it, *a, **k):
        real_after(self, it, *a, **k)
        if stops.get("rl") == it and "rm" not in stops:
            del stops["rl"]
            raise KeyboardInterrupt

    def reward_model(self, r, data):
        if stops.get("rm") == r:
            del stops["rm"]
            raise KeyboardInterrupt
        return real_rm(self, r, data)

    monkeypatch.setattr(RLStage, "after_iteration", after)
    monkeypatch.setattr(online.OnlineRounds, "_reward_model", reward_model)
    for _ in range(2):
        with pytest.raises(KeyboardInterrupt):
            Pipeline(cfg).run()
    assert not stops
    resumed = Pipeline(cfg).run()
    s = straight[1]
    for key, value in s.items():
        if key not in TIME_KEYS:
            assert resumed[key] == value, key
    for a, b in zip(_params(straight[0]), _params(out)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    rl = [json.loads(x)["step"] for x in open(os.path.join(out, "metrics.jsonl")) if '"stage": "rl"' in x]
    assert rl == list(range(1, 7))
