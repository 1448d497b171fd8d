"""Run report: report.md with a summary table, existing PNG plots and the resolved config."""

import json
import re

from rlhf_jax.metrics import MetricsLogger
from rlhf_jax.runner.report import write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_run(run_dir, with_kl=True, with_reward=True):
    with MetricsLogger(run_dir) as log:
        for s in range(3):
            log.log(s, {"sft/loss": 3.0 - s}, "pretrain")
        for s in range(2):
            log.log(s, {"sft/loss": 1.5 - s / 10}, "sft")
        if with_reward:
            for s in range(4):
                log.log(s, {"reward/loss": 0.7 - s / 10, "reward/accuracy": 0.5 + s / 10}, "reward")
            log.log(3, {"eval/rm_accuracy": 0.71}, "eval")
        for s in range(5):
            m = {"objective/scores": 0.1 * s}
            if with_kl:
                m.update({"objective/kl": 0.2 * s, "objective/kl_coef": 0.1})
            log.log(s, m, "rl")
            if s % 2 == 0:
                log.log(s, {"eval/gold_reward": float("nan") if s == 2 else 0.05 * s}, "eval")
    (run_dir / "summary.json").write_text(json.dumps(
        {"gold_reward": 0.123456, "rm_label_ceiling": 0.8123, "steps": 5, "wall": 12345.678,
         "final": {"kl": 0.8}, "name": "a|b"}))
    (run_dir / "config.yaml").write_text("seed: 0\nppo:\n  lr: 1.0e-05\n")


def linked_pngs(report_text):
    return re.findall(r"!\[[^\]]*\]\((plots/[^)]+\.png)\)", report_text)


def assert_valid_png(path):
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG_MAGIC
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100


def test_full_report(tmp_path, monkeypatch):
    import matplotlib.axes

    ceilings = []
    real_axhline = matplotlib.axes.Axes.axhline
    monkeypatch.setattr(matplotlib.axes.Axes, "axhline",
                        lambda self, y=0, *a, **k: ceilings.append(y) or real_axhline(self, y, *a, **k))
    run = tmp_path / "run1"
    make_run(run)
    path = write_report(run)
    assert path == run / "report.md"
    text = path.read_text()
    links = linked_pngs(text)
    assert links == ["plots/rewards.png", "plots/kl.png", "plots/reward_model.png", "plots/sft.png"]
    for rel in links:
        assert_valid_png(run / rel)
    assert ceilings == [0.8123]  # the label ceiling on the accuracy axis
    # summary table, 4 significant digits, nested keys flattened, pipes escaped
    assert "| `gold_reward` | 0.1235 |" in text
    assert "| `wall` | 1.235e+04 |" in text
    assert "| `steps` | 5 |" in text
    assert "| `final.kl` | 0.8 |" in text
    assert "| `name` | a\\|b |" in text
    # the resolved config in a fenced block
    assert "```yaml\nseed: 0\nppo:\n  lr: 1.0e-05\n```" in text
    assert "stages: eval, pretrain, reward, rl, sft" in text


def test_missing_metrics_omit_their_panels(tmp_path):
    run = tmp_path / "run2"
    make_run(run, with_kl=False, with_reward=False)
    text = write_report(run).read_text()
    links = linked_pngs(text)
    assert links == ["plots/rewards.png", "plots/sft.png"]
    for rel in links:
        assert_valid_png(run / rel)
    assert not (run / "plots" / "kl.png").exists()
    assert not (run / "plots" / "reward_model.png").exists()


def test_empty_run_dir_still_writes_a_report(tmp_path):
    text = write_report(tmp_path).read_text()
    assert "_no summary.json_" in text and "_no config.yaml_" in text
    assert "_no plottable metrics in metrics.jsonl_" in text
    assert linked_pngs(text) == []


def test_report_after_pyplot_was_imported(tmp_path):
    import matplotlib.pyplot  # noqa: F401  (write_report must still select Agg and work)

    with MetricsLogger(tmp_path) as log:
        log.log(0, {"objective/kl": 1.0}, "rl")
    assert linked_pngs(write_report(tmp_path).read_text()) == ["plots/kl.png"]


def test_whatever_step_3_logged_is_drawn(tmp_path):
    """No algorithm-specific names in the report: each metric namespace gets its own figure."""
    with MetricsLogger(tmp_path) as log:
        for s in range(3):
            log.log(s, {"objective/kl": 0.1 * s, "policy/clipfrac": 0.1, "policy/approxkl": 0.01 * s,
                        "group/zero_variance_frac": 0.25, "val/vf_explained_var": 0.5,
                        "policy/new_thing": float(s)}, "rl")
        log.log(0, {"pretrain/loss": 2.0}, "pretrain")  # other stages are not auto-drawn
    text = write_report(tmp_path).read_text()
    assert linked_pngs(text) == ["plots/kl.png", "plots/sft.png", "plots/rl_group.png",
                                 "plots/rl_policy.png", "plots/rl_val.png"]
    for rel in linked_pngs(text):
        assert_valid_png(tmp_path / rel)


def test_plots_off_writes_the_tables_only(tmp_path):
    with MetricsLogger(tmp_path) as log:
        log.log(1, {"objective/kl": 0.5}, stage="rl")
    text = write_report(tmp_path, plots=False).read_text()
    assert "run.plots: false" in text and linked_pngs(text) == []
    assert not list((tmp_path / "plots").glob("*.png"))
    assert "objective/kl" in text  # the last-values table is still there
