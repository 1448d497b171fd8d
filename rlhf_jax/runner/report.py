"""Run report: ``report.md`` with a summary table, PNG plots of the metrics and the resolved config.

Reads ``run_dir/metrics.jsonl`` (lines carrying a ``stage``: 'pretrain', 'sft', 'reward', 'rl',
'eval'), ``summary.json`` and ``config.yaml`` (each optional) and writes ``run_dir/report.md`` and
``run_dir/plots/*.png``. Every metric is drawn against the steps of the stage that logged it (one
line per stage that logged it). A panel whose metrics are all absent is left out.

The fixed panels (``PANELS``) use the names every algorithm logs; after them, whatever else step 3
logged is drawn too, one figure per metric namespace (``policy/``, ``val/``, ``group/``, ``loss/``,
...), one small axis per metric, so a new algorithm's diagnostics appear without touching this file.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
from typing import Any

from rlhf_jax.metrics.logger import read_metrics

__all__ = ["write_report", "PANELS", "Panel"]


@dataclasses.dataclass(frozen=True)
class Panel:
    """One PNG: a row of axes, each (y label, metric names); ``ceiling`` draws a summary value."""

    name: str
    title: str
    axes: tuple[tuple[str, tuple[str, ...]], ...]
    ceiling: tuple[str, str] | None = None  # (summary.json key, y label of the axis to draw it on)


PANELS = (
    Panel("rewards", "Gold and proxy reward", (("reward", ("eval/gold_reward", "objective/scores")),)),
    Panel("kl", "KL to the reference policy", (("KL (nats)", ("objective/kl",)),
                                               ("KL coefficient β", ("objective/kl_coef",)))),
    Panel("reward_model", "Reward model training",
          (("loss", ("reward/loss",)), ("accuracy", ("reward/accuracy", "eval/rm_accuracy"))),
          ceiling=("rm_label_ceiling", "accuracy")),
    Panel("sft", "Pretraining / SFT loss", (("loss", ("pretrain/loss", "sft/loss")),)),
)


RL_STAGE = "rl"
_PER_ROW = 4


def _namespace_panels(records: list[dict]) -> list[Panel]:
    """One panel per namespace of the step-3 metrics that no fixed panel draws."""
    fixed = {key for panel in PANELS for _, keys in panel.axes for key in keys}
    names: dict[str, list[str]] = {}
    for rec in records:
        if rec.get("stage") != RL_STAGE:
            continue
        for key, value in rec.items():
            if key in fixed or key in ("stage", "step", "time") or key in names.get(key.split("/")[0], ()):
                continue
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                names.setdefault(key.split("/")[0] if "/" in key else "other", []).append(key)
    return [Panel(f"rl_{ns}", f"Step 3: {ns}/ metrics", tuple((k, (k,)) for k in sorted(keys)))
            for ns, keys in sorted(names.items())]


def _series(records: list[dict], key: str) -> dict[str, tuple[list[int], list[float]]]:
    """{stage: (steps, values)} of one metric, in file order."""
    out: dict[str, tuple[list[int], list[float]]] = {}
    for rec in records:
        value = rec.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or "step" not in rec:
            continue
        steps, values = out.setdefault(str(rec.get("stage", "?")), ([], []))
        steps.append(rec["step"])
        values.append(float(value))
    return out


def _plot_panel(panel: Panel, records: list[dict], summary: dict, plots_dir: pathlib.Path) -> str | None:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    axes_data = []
    for ylabel, keys in panel.axes:
        lines = [(key, stage, s) for key in keys for stage, s in _series(records, key).items()]
        if lines:
            axes_data.append((ylabel, lines))
    if not axes_data:
        return None
    n_cols = min(len(axes_data), _PER_ROW) if len(panel.axes) > 2 else len(axes_data)
    n_rows = -(-len(axes_data) // n_cols)
    width = 5.5 if len(panel.axes) <= 2 else 4.0
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(width * n_cols, 3.4 * n_rows + 0.4), squeeze=False)
    for ax in axes.flat[len(axes_data):]:
        ax.set_visible(False)
    for ax, (ylabel, lines) in zip(axes.flat, axes_data):
        stages = sorted({stage for _, stage, _ in lines})
        for key, stage, (steps, values) in lines:
            label = key if len(stages) == 1 else f"{key} ({stage})"
            ax.plot(steps, values, marker="." if len(steps) < 30 else None, label=label)
        if panel.ceiling and panel.ceiling[1] == ylabel:
            ceiling = summary.get(panel.ceiling[0])
            if isinstance(ceiling, (int, float)) and not isinstance(ceiling, bool) and math.isfinite(ceiling):
                ax.axhline(ceiling, color="gray", linestyle="--", label=f"label ceiling ({ceiling:.4g})")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(f"{' / '.join(stages)} step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(panel.title)
    fig.tight_layout()
    path = plots_dir / f"{panel.name}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return f"plots/{panel.name}.png"


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        text = f"{value:.4g}"
    elif isinstance(value, (list, tuple)):
        text = "[" + ", ".join(_fmt(v) for v in value) + "]"
    elif value is None:
        text = "—"
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _table(rows: list[tuple[str, Any]], header: tuple[str, str]) -> str:
    lines = [f"| {header[0]} | {header[1]} |", "|---|---|"]
    lines += [f"| `{k}` | {_fmt(v)} |" for k, v in rows]
    return "\n".join(lines)


def _last_values(records: list[dict]) -> list[tuple[str, Any]]:
    last: dict[str, Any] = {}
    for rec in records:
        stage = rec.get("stage", "?")
        for k, v in rec.items():
            if k not in ("stage", "step", "time"):
                last[f"{stage}: {k}"] = v
    return sorted(last.items())


def _read_summary(path: pathlib.Path) -> dict:
    if not path.exists():
        return {}
    with open(path, encoding="utf-8") as f:
        summary = json.load(f, parse_constant=float)
    return summary if isinstance(summary, dict) else {"summary": summary}


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|") or "_(empty)_"


def _samples_section(samples: dict) -> list[str]:
    """Held-out prompts with the reference (SFT) policy's and the final policy's responses."""
    gold = "gold_policy" in samples
    head = ("| prompt | reference (SFT) policy | final policy |" if not gold else
            "| prompt | reference (SFT) policy | gold | final policy | gold |")
    rows = [head, "|" + "---|" * (5 if gold else 3)]
    for i, p in enumerate(samples["prompts"]):
        ref, pol = samples["reference"][i], samples["policy"][i]
        if gold:
            rows.append(f"| {_cell(p)} | {_cell(ref)} | {samples['gold_reference'][i]:.3f} | "
                        f"{_cell(pol)} | {samples['gold_policy'][i]:.3f} |")
        else:
            rows.append(f"| {_cell(p)} | {_cell(ref)} | {_cell(pol)} |")
    return ["## Samples", "", "One sample per held-out prompt from each policy (evaluation "
            "temperature).", ""] + rows + [""]


def _rounds_section(rounds: list[dict], plots_dir: pathlib.Path | None) -> list[str]:
    """Iterated online RLHF: one row per round (and a plot of the same)."""
    def end(r, key):
        return r.get("end", {}).get(key)

    lines = ["## Rounds (iterated online RLHF)", "",
             "Each round ends with a held-out evaluation (gold reward, proxy score = the round's own "
             "normalised reward model, KL to the reference). Before rounds 2.., the reward model's "
             "accuracy on the held-out part of the newest policy's comparisons, before and after "
             "it was retrained on all comparisons so far.", "",
             "| round | iterations | comparisons (new / total) | RM accuracy on newest: before → after "
             "(labelers' ceiling) | gold reward | proxy score | KL |", "|---|---|---|---|---|---|---|"]
    for r in rounds:
        it = r.get("iterations") or ["?", "?"]
        acc = ("step 2: " + _fmt(r.get("rm_eval_accuracy")) if r["round"] == 1 else
               f"{_fmt(r.get('rm_accuracy_newest_before'))} → {_fmt(r.get('rm_accuracy_newest_after'))}"
               + (f" ({_fmt(r['rm_label_ceiling_newest'])})" if r.get("rm_label_ceiling_newest") else ""))
        lines.append(f"| {r['round']} | {it[0]}–{it[1]} | {_fmt(r.get('comparisons_new'))} / "
                     f"{_fmt(r.get('comparisons_total'))} | {acc} | {_fmt(end(r, 'eval/gold_reward'))} | "
                     f"{_fmt(end(r, 'eval/proxy_score'))} | {_fmt(end(r, 'eval/kl'))} |")
    lines.append("")
    if plots_dir is not None:
        import matplotlib.pyplot as plt

        x = [r["round"] for r in rounds]
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
        for key, label in (("eval/gold_reward", "gold reward"), ("eval/proxy_score", "proxy score"),
                           ("eval/kl", "KL")):
            y = [end(r, key) for r in rounds]
            if any(v is not None for v in y):
                axes[0].plot(x, [float("nan") if v is None else v for v in y], "o-", label=label)
        axes[0].set_xlabel("round")
        axes[0].legend(fontsize=8)
        later = [r for r in rounds if "rm_accuracy_newest_before" in r]
        if later:
            axes[1].plot([r["round"] for r in later], [r["rm_accuracy_newest_before"] for r in later],
                         "o-", label="before retraining")
            axes[1].plot([r["round"] for r in later], [r["rm_accuracy_newest_after"] for r in later],
                         "o-", label="after")
            axes[1].legend(fontsize=8)
        axes[1].set_title("RM accuracy on the newest policy's comparisons", fontsize=9)
        axes[1].set_xlabel("round")
        for ax in axes:
            ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(plots_dir / "rounds.png", dpi=110)
        plt.close(fig)
        lines += ["![rounds](plots/rounds.png)", ""]
    return lines


def write_report(run_dir: str | os.PathLike, plots: bool = True) -> pathlib.Path:
    """Write ``run_dir/report.md`` and (``plots``) ``run_dir/plots/*.png``; returns the report's path.
    In a multi-host run only process 0 writes."""
    from rlhf_jax.runner.run_dir import headless_pyplot
    from rlhf_jax.sharding.distributed import is_primary

    if not is_primary():
        return pathlib.Path(run_dir) / "report.md"

    headless_pyplot()  # (the panels import pyplot themselves)
    run_dir = pathlib.Path(run_dir)
    records = read_metrics(run_dir)
    summary = _read_summary(run_dir / "summary.json")
    config_path = run_dir / "config.yaml"
    plots_dir = run_dir / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)

    parts = [f"# Run report: {run_dir.resolve().name}", ""]
    parts += ["## Summary", ""]
    flat = _flatten({k: v for k, v in summary.items() if k != "rounds"})
    parts += [_table(sorted(flat.items()), ("key", "value")) if flat else "_no summary.json_", ""]
    if summary.get("rounds"):
        parts += _rounds_section(summary["rounds"], plots_dir if plots else None)

    parts += ["## Plots", ""]
    n_plots = 0
    for panel in (PANELS + tuple(_namespace_panels(records))) if plots else ():
        rel = _plot_panel(panel, records, summary, plots_dir)
        if rel is not None:
            parts += [f"### {panel.title}", "", f"![{panel.title}]({rel})", ""]
            n_plots += 1
    if not plots:
        parts += ["_plots off (run.plots: false)_", ""]
    elif not n_plots:
        parts += ["_no plottable metrics in metrics.jsonl_", ""]

    samples = _read_summary(run_dir / "samples.json")
    if samples.get("prompts"):
        parts += _samples_section(samples)

    if records:
        stages = sorted({str(r.get("stage", "?")) for r in records})
        parts += ["## Last logged values", "",
                  f"{len(records)} metric lines; stages: {', '.join(stages)}.", "",
                  _table(_last_values(records), ("stage: metric", "last value")), ""]

    parts += ["## Config", ""]
    if config_path.exists():
        text = config_path.read_text(encoding="utf-8").rstrip("\n")
        parts += ["```yaml", text, "```", ""]
    else:
        parts += ["_no config.yaml_", ""]

    report = run_dir / "report.md"
    tmp = run_dir / "report.md.tmp"
    tmp.write_text("\n".join(parts), encoding="utf-8")
    os.replace(tmp, report)
    return report
