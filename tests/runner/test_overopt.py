"""The over-optimisation study end to end at tiny sizes (three reward models on one shared step 1,
RL against each, best-of-n from the initial policy's samples), its numbers recomputed from the
files it kept, resuming without recomputing, bad options refused before compute, and notebook 03
executed on the same study."""

import json
import math
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from rlhf_jax.metrics import overoptimization as oo
from rlhf_jax.metrics.logger import read_metrics
from rlhf_jax.runner.config_loader import ConfigError
from rlhf_jax.runner.overopt import BON_FILE, PLOT_FILE, STUDY_FILE, TABLE_FILE, overoptimization_study

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "notebooks"))
from nbexec import execute, images_of, outputs_of  # noqa: E402

pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parents[2]
QUICKSTART = str(ROOT / "experiments" / "quickstart.yaml")
TINY = ["task.corpus_size=300", "task.n_eval_prompts=8", "pretrain.steps=30", "pretrain.batch_size=16",
        "reward.k=2", "reward.epochs=1", "reward.batch_size=8", "ppo.iterations=6", "ppo.batch_size=8",
        "ppo.minibatches=2", "ppo.epochs=1", "ppo.eval_every=1", "ppo.kl.controller=fixed",
        "eval.samples_per_prompt=2", "eval.best_of_n=2", "run.checkpoint_every=3", "run.progress=false",
        "run.plots=false"]
SIZES, N_MAX = (20, 40, 80), 8


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("overopt") / "study"
    return overoptimization_study(QUICKSTART, TINY, sizes=SIZES, n_max=N_MAX, bon_samples=N_MAX,
                                  out=str(out)), out


def test_the_study_writes_its_files_and_shares_step_1(study):
    result, out = study
    for name in (STUDY_FILE, TABLE_FILE, BON_FILE, f"plots/{PLOT_FILE}"):
        assert (out / name).is_file(), name
    assert json.loads((out / STUDY_FILE).read_text()) == json.loads(json.dumps(result))
    assert [r["size"] for r in result["rows"]] == list(SIZES) and result["ns"] == [1, 2, 4, 8]
    first = out / f"rm_{SIZES[0]}"
    for size in SIZES[1:]:
        run = out / f"rm_{size}"
        # step 1 copied from the first run, step 2 made again on its own number of prompts
        for a in (first / "checkpoints" / "pretrain").rglob("*"):
            b = run / a.relative_to(first)
            assert b.exists() and (a.is_dir() or a.read_bytes() == b.read_bytes()), b
        with np.load(run / "reward_data.npz") as z:
            assert len(z["input_ids"]) == size
        assert json.loads((run / "summary.json").read_text())["gold_reward_initial"] == pytest.approx(
            json.loads((first / "summary.json").read_text())["gold_reward_initial"])
    accs = [r["rm_accuracy"] for r in result["rows"]]
    assert all(0.0 <= a <= 1.0 for a in accs)
    table = (out / TABLE_FILE).read_text()
    assert all(f"| {s} |" in table for s in SIZES)


def test_best_of_n_recomputed_from_the_kept_samples(study):
    result, out = study
    with np.load(out / BON_FILE) as z:
        gold, proxy = z["gold"], z["proxy"]
    assert gold.shape == (8, N_MAX) and proxy.shape == (8, len(SIZES), N_MAX)
    for j, row in enumerate(result["rows"]):
        b, p = row["bon"], proxy[:, j]
        best = np.take_along_axis(gold, p.argmax(1)[:, None], 1)[:, 0]
        assert b["gold"][0] == pytest.approx(gold.mean()) and b["gold"][-1] == pytest.approx(best.mean())
        assert b["proxy"][0] == pytest.approx(p.mean()) and b["proxy"][-1] == pytest.approx(p.max(1).mean())
        assert np.all(np.diff(b["proxy"]) > 0)  # the proxy of the proxy-best only rises with n
        np.testing.assert_allclose(b["d"], np.sqrt([0.0, math.log(2) - 0.5, math.log(4) - 0.75,
                                                    math.log(8) - 7 / 8]))
        fit = oo.fit_form("bon", b["d"], np.array(b["gold"]) - b["gold"][0])
        assert b["fit"] == pytest.approx(fit)
    # the reward models differ, so their proxies rank the same samples differently
    assert not np.allclose(proxy[:, 0], proxy[:, -1])


def test_rl_curves_are_the_runs_own_evaluations(study):
    result, out = study
    for row in result["rows"]:
        rl = row["rl"]
        evals = [r for r in read_metrics(out / f"rm_{row['size']}") if r["stage"] == "eval" and r["step"] > 0]
        assert rl["step"] == [0] + [r["step"] for r in evals] == list(range(7))
        assert rl["gold"][1:] == [r["eval/gold_reward"] for r in evals]
        assert rl["proxy"][1:] == [r["eval/proxy_score"] for r in evals]
        assert rl["gold"][0] == row["bon"]["gold"][0] and rl["kl"][0] == 0.0
        np.testing.assert_allclose(rl["d"], np.sqrt(np.maximum(rl["kl"], 0.0)))
        assert rl["fit"] == pytest.approx(oo.fit_form("rl", rl["d"], np.array(rl["gold"]) - rl["gold"][0]))
        i = int(np.argmax(rl["gold"]))
        assert (rl["peak_step"], rl["gold_peak"], rl["gold_final"]) == (i, rl["gold"][i], rl["gold"][-1])
        summary = json.loads((out / f"rm_{row['size']}" / "summary.json").read_text())
        assert rl["gold_final"] == pytest.approx(summary["gold_reward_final"])


def test_a_rerun_reads_everything_back(study):
    result, out = study
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and "checkpoints" in p.parts}
    bon = (out / BON_FILE).stat().st_mtime_ns
    again = overoptimization_study(QUICKSTART, TINY, sizes=SIZES, n_max=N_MAX, bon_samples=N_MAX,
                                   out=str(out), plots=False)
    assert again == result
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps and (out / BON_FILE).stat().st_mtime_ns == bon


@pytest.mark.parametrize("kwargs, overrides, needle", [
    ({"sizes": (20, 20)}, [], "--sizes: 20 is given twice"),
    ({"sizes": (0,)}, [], "--sizes: 0"),
    ({"n_max": 1}, [], "--n-max 1"),
    ({"n_max": 8, "bon_samples": 4}, [], "--bon-samples 4"),
    ({}, ["algorithm=dpo"], "algorithm 'dpo' learns from comparisons directly"),
    ({}, ["online.rounds=2"], "online.rounds must be 1"),
    ({}, ["reward.n_prompts=50"], "override reward.n_prompts"),
    ({}, ["reward.train=false"], "reward.train must be true"),
    ({}, ["task.name=null"], "built-in task"),
    ({}, ["ppo.lrr=1"], "did you mean 'ppo.lr'"),
])
def test_bad_options_are_refused_before_compute(tmp_path, kwargs, overrides, needle):
    base = [t for t in TINY if not t.startswith("ppo.")] if overrides == ["algorithm=dpo"] else TINY
    with pytest.raises(ConfigError, match=re.escape(needle)):
        overoptimization_study(QUICKSTART, base + overrides, out=str(tmp_path / "s"), **kwargs)
    assert not (tmp_path / "s").exists()


def test_the_command_prints_the_table_and_refuses_bad_sizes(study, tmp_path):
    result, out = study
    env = dict(os.environ, RLHF_JAX_NO_PROGRESS="1")
    cmd = [sys.executable, "-m", "rlhf_jax", "overoptimization", QUICKSTART, *TINY]
    bad = subprocess.run(cmd + ["--sizes", "10,x"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "error: --sizes '10,x'" in bad.stderr
    ok = subprocess.run(cmd + ["--sizes", ",".join(map(str, SIZES)), "--n-max", str(N_MAX), "--bon-samples",
                               str(N_MAX), "--out", str(out)],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert sum(line.startswith("| ") for line in ok.stdout.splitlines()) == len(SIZES) + 1
    assert str(out / TABLE_FILE) in ok.stdout


def test_notebook_03_runs_on_the_study(study):
    result, out = study
    nb = execute("03_reward_overoptimization.ipynb", {"CONFIG": QUICKSTART, "OVERRIDES": TINY,
                                                      "SIZES": SIZES, "N_MAX": N_MAX, "BON_SAMPLES": N_MAX,
                                                      "OUT": str(out)})
    assert images_of(nb) == 2
    md = [o["data"]["text/markdown"] for o in outputs_of(nb) if "text/markdown" in o.get("data", {})]
    assert md and all(f"| {s} |" in md[0] for s in SIZES)
