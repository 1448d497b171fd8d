"""The notebooks: stored without outputs, and executed top to bottom with tiny settings injected.
01 runs here; 02 runs in ``tests/runner/test_pipeline_e2e.py`` on the compare sweep that module
builds, 03 in ``tests/runner/test_overopt.py`` on the study that module runs."""

import json

import nbformat
import pytest

from nbexec import NOTEBOOKS, execute, images_of, outputs_of, parameters_cell

NAMES = ("01_quickstart.ipynb", "02_compare_algorithms.ipynb", "03_reward_overoptimization.ipynb")
TINY = ["task.corpus_size=300", "task.n_eval_prompts=8", "pretrain.steps=30", "pretrain.batch_size=16",
        "reward.n_prompts=40", "reward.k=2", "reward.epochs=1", "reward.batch_size=8",
        "ppo.iterations=4", "ppo.batch_size=8", "ppo.minibatches=2", "ppo.epochs=1", "ppo.eval_every=2",
        "eval.samples_per_prompt=2", "eval.best_of_n=2", "run.checkpoint_every=2", "run.plots=false"]


def test_the_notebooks_are_stored_without_outputs():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == list(NAMES)
    for name in NAMES:
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        nbformat.validate(nb)
        parameters_cell(nb)
        for i, c in enumerate(nb.cells):
            if c.cell_type == "code":
                assert c.outputs == [] and c.execution_count is None, \
                    f"{name}: cell {i} has outputs (strip them: python notebooks/strip_outputs.py)"


@pytest.mark.slow
def test_quickstart_notebook_runs_the_three_steps(tmp_path):
    out = tmp_path / "run"
    nb = execute(NAMES[0], {"OVERRIDES": TINY, "OUT_DIR": str(out), "SHOW": 3})
    summary = json.loads((out / "summary.json").read_text())
    assert summary["algorithm"] == "ppo" and (out / "report.md").exists()
    assert images_of(nb) == 3  # step 1's loss, the reward model's curves, step 3's curves
    table = [o for o in outputs_of(nb) if "text/markdown" in o.get("data", {})][-1]["data"]["text/markdown"]
    assert table.count("\n") == 1 + 3  # header, rule and one row per prompt shown
    # the notebook's final evaluation is the run's own: the summary it shows is summary.json's
    shown = [o for o in outputs_of(nb) if "gold_reward_final" in o.get("data", {}).get("text/plain", "")]
    assert shown and f"{round(summary['gold_reward_final'], 4)}" in shown[-1]["data"]["text/plain"]
