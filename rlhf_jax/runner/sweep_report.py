"""A sweep's ``results.csv`` (one row per trial) and ``report.md`` with plots, from whatever has
run so far (a partial sweep gives a partial report).

Configurations are the trials' swept values without the seed; across a configuration's seeds the
report shows the mean and a 95% interval (Student t) of the final metrics, ranked by gold reward
(by proxy score when there is no gold labeler), learning curves as mean ± one standard deviation,
and the final gold reward against the KL to the reference.
"""

from __future__ import annotations

import csv
import math
import os
import pathlib
from collections import defaultdict

import numpy as np

from rlhf_jax.metrics.logger import read_metrics
from rlhf_jax.runner.run_dir import read_json

FINAL_KEYS = ("gold_reward_final", "proxy_score_final", "kl_to_reference_final", "gold_reward_initial",
              "rm_eval_accuracy", "response_length_final", "eos_rate_final", "samples",
              "rl_iteration_time_s", "wall_time_s")
CURVES = (("eval", "eval/gold_reward", "gold reward (held out)"),
          ("rl", "objective/scores", "proxy score (RM, training batch)"),
          ("rl", "objective/kl", "KL to reference (per response)"))
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
         10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}


def t_quantile(dof: int) -> float:
    """Student t's 97.5% quantile (the nearest tabled dof at or below; 1.96 beyond 30)."""
    if dof > 30:
        return 1.96
    return _T975[max(k for k in _T975 if k <= dof)]


def mean_interval(values) -> tuple[float, float]:
    """Mean and the half-width of its 95% interval (nan half-width for a single value)."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], float)
    if len(v) == 0:
        return math.nan, math.nan
    if len(v) == 1:
        return float(v[0]), math.nan
    return float(v.mean()), float(t_quantile(len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))


def _config_label(params: dict, varying: set) -> str:
    items = [(k, v) for k, v in params.items() if k != "run.rl_seed" and k in varying]
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in items) or "base"


def trial_rows(sweep) -> list[dict]:
    """One dict per trial: name, configuration, seed, status, error, swept params, final metrics."""
    from rlhf_jax.runner.sweep_jobs import trial_status

    keys = list(dict.fromkeys(k for t in sweep.trials for k in t.params if k != "run.rl_seed"))
    varying = {k for k in keys if len({repr(t.params.get(k)) for t in sweep.trials}) > 1}
    rows = []
    for t in sweep.trials:
        st = trial_status(sweep, t)
        row = {"trial": t.name, "configuration": _config_label(t.params, varying), "seed": t.seed,
               "status": st["status"], "error": st.get("error") or ""}
        row.update({k: t.params.get(k) for k in keys})
        d = sweep.trial_dir(t)
        summary = read_json(os.path.join(d, "summary.json"), "delete it") if st["status"] == "done" else None
        records = read_metrics(d) if os.path.isdir(d) else []
        rl = [r for r in records if r.get("stage") == "rl"]
        for k in FINAL_KEYS:
            row[k] = None
        if summary:
            for k in FINAL_KEYS:
                if k in summary:
                    row[k] = summary[k]
            if rl:
                row["proxy_score_final"] = rl[-1].get("objective/scores")
            if t.cfg is not None:
                from rlhf_jax.runner.schema import algorithm_section

                sec = algorithm_section(t.cfg)
                row["samples"] = sec.iterations * sec.batch_size
        row["_records"] = records
        rows.append(row)
    return rows


def write_results_csv(rows: list[dict], path: pathlib.Path) -> None:
    cols = [c for c in rows[0] if not c.startswith("_")] if rows else []
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({c: ("" if r.get(c) is None else r.get(c)) for c in cols})
    os.replace(tmp, path)


def _fmt(x) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def _curve(records, stage, key):
    pts = {}
    for r in records:
        if r.get("stage") == stage and isinstance(r.get(key), (int, float)):
            pts[int(r["step"])] = float(r[key])
    return pts


def _plots(rows: list[dict], by_config: dict, plots: pathlib.Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    fig, axes = plt.subplots(1, len(CURVES), figsize=(5 * len(CURVES), 3.6))
    drawn = False
    for ax, (stage, key, title) in zip(axes, CURVES):
        for label, members in by_config.items():
            curves = [_curve(r["_records"], stage, key) for r in members]
            curves = [c for c in curves if c]
            if not curves:
                continue
            steps = sorted(set.intersection(*(set(c) for c in curves)))
            if not steps:
                continue
            y = np.array([[c[s] for s in steps] for c in curves])
            m, sd = y.mean(0), y.std(0)
            line, = ax.plot(steps, m, label=label if len(label) < 60 else label[:57] + "...")
            if len(curves) > 1:
                ax.fill_between(steps, m - sd, m + sd, color=line.get_color(), alpha=0.2)
            drawn = True
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("RL iteration")
        ax.grid(alpha=0.3)
    if drawn:
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(plots / "learning_curves.png", dpi=110)
        out.append("learning_curves.png")
    plt.close(fig)

    y_key = "gold_reward_final" if any(r["gold_reward_final"] is not None for r in rows) else "proxy_score_final"
    done = [r for r in rows if r["status"] == "done" and r[y_key] is not None
            and r["kl_to_reference_final"] is not None]
    if done:
        fig, ax = plt.subplots(figsize=(6, 4.2))
        for label, members in by_config.items():
            pts = [(r["kl_to_reference_final"], r[y_key]) for r in members if r in done]
            if not pts:
                continue
            x, y = np.array(pts).T
            sc = ax.scatter(x, y, alpha=0.45, s=18)
            ax.scatter([x.mean()], [y.mean()], color=sc.get_facecolor()[0], s=90, edgecolor="k",
                       label=label if len(label) < 60 else label[:57] + "...")
        ax.set_xlabel("KL to reference (final, per response)")
        ax.set_ylabel(y_key.replace("_", " "))
        ax.set_title("final reward against KL (large: mean over seeds)", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(plots / "reward_vs_kl.png", dpi=110)
        plt.close(fig)
        out.append("reward_vs_kl.png")
    return out


def write_sweep_report(sweep) -> pathlib.Path:
    """(Re)write ``results.csv``, ``report.md`` and ``plots/`` of a sweep directory."""
    root = pathlib.Path(sweep.out_dir)
    plots = root / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    rows = trial_rows(sweep)
    write_results_csv(rows, root / "results.csv")
    by_config: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_config[r["configuration"]].append(r)

    rank_key = "gold_reward_final" if any(r["gold_reward_final"] is not None for r in rows) else "proxy_score_final"
    table = []
    for label, members in by_config.items():
        done = [r for r in members if r["status"] == "done"]
        stats = {k: mean_interval([r[k] for r in done]) for k in
                 (rank_key, "kl_to_reference_final", "proxy_score_final", "wall_time_s")}
        table.append((label, len(done), len(members), stats))
    table.sort(key=lambda e: -e[3][rank_key][0] if math.isfinite(e[3][rank_key][0]) else math.inf)

    def cell(mi):
        m, h = mi
        return _fmt(m) + ("" if not math.isfinite(h) else f" ± {h:.2g}")

    statuses = [r["status"] for r in rows]
    lines = [f"# Sweep report: {root}", "",
             f"{len(rows)} trials: " + ", ".join(f"{statuses.count(s)} {s}" for s in dict.fromkeys(statuses)),
             "", f"## Ranking by {rank_key.replace('_', ' ')} (mean ± 95% interval across seeds)", "",
             f"| rank | configuration | seeds done | {rank_key} | proxy score | KL | wall time (s) |",
             "|---|---|---|---|---|---|---|"]
    for i, (label, n_done, n_all, st) in enumerate(table, 1):
        lines.append(f"| {i} | {label} | {n_done}/{n_all} | {cell(st[rank_key])} | "
                     f"{cell(st['proxy_score_final'])} | {cell(st['kl_to_reference_final'])} | "
                     f"{cell(st['wall_time_s'])} |")
    for png in _plots(rows, by_config, plots):
        lines += ["", f"![{png}](plots/{png})"]
    failed = [r for r in rows if r["status"] in ("failed", "invalid", "interrupted")]
    if failed:
        lines += ["", "## Trials that did not finish", "", "| trial | status | error |", "|---|---|---|"]
        lines += [f"| {r['trial']} | {r['status']} | {r['error'].replace('|', '/')} |" for r in failed]
    lines += ["", "Every trial's own run directory (`trials/<name>`) has its report.md, metrics and summary; "
              "`results.csv` has one row per trial.", ""]
    path = root / "report.md"
    tmp = path.with_name("report.md.tmp")
    tmp.write_text("\n".join(lines), encoding="utf-8")
    os.replace(tmp, path)
    return path
