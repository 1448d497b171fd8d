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
          ("eval", "eval/proxy_score", "proxy score (normalised RM, held out)"),
          ("eval", "eval/kl", "KL to reference (per response, held out)"))
RANK_DIR = "rank"
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


def _shown_params(t, trials) -> dict:
    """A trial's swept values as the report names them: when the algorithm varies, a key of the
    trial's own algorithm section (``rloo.iterations``, from a ``*.iterations`` axis or not) is
    shown as ``*.iterations``, one column for every algorithm."""
    algorithms = {x.params.get("algorithm") for x in trials}
    if len(algorithms) < 2:
        return dict(t.params)
    own = t.params.get("algorithm")
    return {("*." + k.split(".", 1)[1] if k.split(".", 1)[0] == own else k): v for k, v in t.params.items()}


def trial_rows(sweep) -> list[dict]:
    """One dict per trial: name, configuration, seed, status, error, swept params, final metrics."""
    from rlhf_jax.runner.sweep_jobs import trial_status

    shown = {t.name: _shown_params(t, sweep.trials) for t in sweep.trials}
    keys = list(dict.fromkeys(k for t in sweep.trials for k in shown[t.name] if k != "run.rl_seed"))
    varying = {k for k in keys if len({repr(shown[t.name].get(k)) for t in sweep.trials}) > 1}
    rows = []
    for t in sweep.trials:
        st = trial_status(sweep, t)
        row = {"trial": t.name, "configuration": _config_label(shown[t.name], varying), "seed": t.seed,
               "status": st["status"], "error": st.get("error") or ""}
        row.update({k: shown[t.name].get(k) for k in keys})
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
            if row["proxy_score_final"] is None and rl:  # (a run from before proxy_score_final)
                row["proxy_score_final"] = rl[-1].get("objective/scores")
        row["elo"] = row["elo_low"] = row["elo_high"] = None
        row["_per_iteration"] = (summary or {}).get("responses_per_iteration") or _per_iteration(t.cfg)
        row["_records"] = records
        rows.append(row)
    return rows


def _per_iteration(cfg) -> int | None:
    """Responses an RL iteration of a trial learns from (for curves of an unfinished trial)."""
    if cfg is None:
        return None
    from rlhf_jax.algorithms.registry import ALGORITHMS
    from rlhf_jax.runner.schema import algorithm_section

    return ALGORITHMS.get(cfg.algorithm).responses_per_iteration(algorithm_section(cfg), 1 << 30)


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


def _curve(records, stage, key, per_iteration):
    """{responses used so far: value} (step × responses per iteration)."""
    pts = {}
    for r in records:
        if r.get("stage") == stage and isinstance(r.get(key), (int, float)):
            pts[int(r["step"]) * (per_iteration or 1)] = float(r[key])
    return pts


def _plots(rows: list[dict], by_config: dict, plots: pathlib.Path) -> list[str]:
    from rlhf_jax.runner.run_dir import headless_pyplot

    plt = headless_pyplot()

    out = []
    colors = plt.get_cmap("tab20" if len(by_config) > 10 else "tab10")
    color_of = {label: colors(i % colors.N) for i, label in enumerate(by_config)}
    short = {label: label if len(label) < 60 else label[:57] + "..." for label in by_config}
    fig, axes = plt.subplots(1, len(CURVES), figsize=(5 * len(CURVES), 3.6))
    drawn = False
    for ax, (stage, key, title) in zip(axes, CURVES):
        for label, members in by_config.items():
            curves = [_curve(r["_records"], stage, key, r["_per_iteration"]) for r in members]
            curves = [c for c in curves if c]
            if not curves:
                continue
            steps = sorted(set.intersection(*(set(c) for c in curves)))
            if not steps:
                continue
            y = np.array([[c[s] for s in steps] for c in curves])
            m, sd = y.mean(0), y.std(0)
            ax.plot(steps, m, label=short[label], color=color_of[label],
                    marker="o" if len(steps) < 8 else None, ms=3)
            if len(curves) > 1:
                ax.fill_between(steps, m - sd, m + sd, color=color_of[label], alpha=0.2)
            drawn = True
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("responses used in step 3")
        ax.grid(alpha=0.3)
    if drawn:
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 0.95))
        fig.tight_layout()
        fig.savefig(plots / "learning_curves.png", dpi=110, bbox_inches="tight")
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
            ax.scatter(x, y, alpha=0.45, s=18, color=color_of[label])
            ax.scatter([x.mean()], [y.mean()], color=color_of[label], s=90, edgecolor="k",
                       label=short[label])
        ax.set_xlabel("KL to reference (final, per response)")
        ax.set_ylabel(y_key.replace("_", " "))
        ax.set_title("final reward against KL (large: mean over seeds)", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
        fig.tight_layout()
        fig.savefig(plots / "reward_vs_kl.png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        out.append("reward_vs_kl.png")
    return out


def _rank_file(sweep) -> pathlib.Path:
    return pathlib.Path(sweep.out_dir) / RANK_DIR / "rank.json"


def rank_sweep(sweep) -> dict | None:
    """Elo of the finished trials' final policies (``sweep.rank``; :func:`runner.rank.rank_runs`)
    into ``out_dir/rank/``; reused while the finished trials and the settings are the same."""
    from rlhf_jax.runner.config_loader import config_to_dict
    from rlhf_jax.runner.rank import rank_runs, write_rank
    from rlhf_jax.runner.sweep_jobs import trial_status

    rc = sweep.sc.rank
    done = [t for t in sweep.trials if trial_status(sweep, t)["status"] == "done"]
    if len(done) + rc.reference < 2:
        return None
    key = {"trials": [t.name for t in done], "settings": config_to_dict(rc)}
    path = _rank_file(sweep)
    old = _read_rank(sweep)
    if old is not None and old.get("key") == key:
        return old
    from rlhf_jax.runner.sweep import _log

    _log(f"ranking the final policies of {len(done)} finished trials (judge: {rc.judge})")
    result = rank_runs([sweep.trial_dir(t) for t in done], judge=rc.judge, prompts=rc.prompts,
                       samples=rc.samples, reference=rc.reference, n_boot=rc.boot)
    result["key"] = key
    write_rank(result, str(path.parent))
    return result


def _read_rank(sweep) -> dict | None:
    """The newest ranking of the sweep's final policies (None when there is none)."""
    path = _rank_file(sweep)
    return read_json(str(path), "delete it to rank again") if path.exists() else None


def write_sweep_report(sweep) -> pathlib.Path:
    """(Re)write ``results.csv``, ``report.md`` and ``plots/`` of a sweep directory."""
    root = pathlib.Path(sweep.out_dir)
    plots = root / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    rows = trial_rows(sweep)
    ranking = _read_rank(sweep)
    elo_of = {os.path.abspath(p["run_dir"]): p for p in (ranking or {}).get("players", [])
              if not p["name"].startswith("reference (")}
    for r, t in zip(rows, sweep.trials):
        p = elo_of.get(os.path.abspath(sweep.trial_dir(t))) if r["status"] == "done" else None
        if p is not None:
            r["elo"], r["elo_low"], r["elo_high"] = p["elo"], p["elo_low"], p["elo_high"]
    write_results_csv(rows, root / "results.csv")
    by_config: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_config[r["configuration"]].append(r)

    rank_key = "gold_reward_final" if any(r["gold_reward_final"] is not None for r in rows) else "proxy_score_final"
    table = []
    for label, members in by_config.items():
        done = [r for r in members if r["status"] == "done"]
        stats = {k: mean_interval([r[k] for r in done]) for k in
                 (rank_key, "kl_to_reference_final", "proxy_score_final", "wall_time_s", "samples", "elo")}
        table.append((label, len(done), len(members), stats))
    table.sort(key=lambda e: -e[3][rank_key][0] if math.isfinite(e[3][rank_key][0]) else math.inf)

    def cell(mi):
        m, h = mi
        return _fmt(m) + ("" if not math.isfinite(h) else f" ± {h:.2g}")

    statuses = [r["status"] for r in rows]
    lines = [f"# Sweep report: {root}", "",
             f"{len(rows)} trials: " + ", ".join(f"{statuses.count(s)} {s}" for s in dict.fromkeys(statuses)),
             "", f"## Ranking by {rank_key.replace('_', ' ')} (mean ± 95% interval across seeds)", "",
             f"| rank | configuration | seeds done | {rank_key} | proxy score | KL | Elo | "
             f"wall time (s) | responses used |",
             "|---|---|---|---|---|---|---|---|---|"]
    for i, (label, n_done, n_all, st) in enumerate(table, 1):
        lines.append(f"| {i} | {label} | {n_done}/{n_all} | {cell(st[rank_key])} | "
                     f"{cell(st['proxy_score_final'])} | {cell(st['kl_to_reference_final'])} | "
                     f"{cell(st['elo'])} | {cell(st['wall_time_s'])} | {_fmt(st['samples'][0])} |")
    for png in _plots(rows, by_config, plots):
        lines += ["", f"![{png}](plots/{png})"]
    if elo_of:
        from rlhf_jax.runner.rank import rank_table

        lines += ["", "## Elo of the final policies", "",
                  "Every finished trial's final policy against every other on the same held-out prompts "
                  "(the Elo column above is the mean over seeds ± 95% interval; "
                  f"[{RANK_DIR}/rank.md]({RANK_DIR}/rank.md) has each trial's bootstrap interval).", ""]
        lines += rank_table(ranking)[:1] + ["", f"![elo]({RANK_DIR}/elo.png)", "",
                                        f"![win rate]({RANK_DIR}/win_rate.png)"]
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


def _cell_value(text: str):
    if text == "":
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"True": True, "False": False}.get(text, text)


def read_sweep_dir(sweep_dir: str) -> dict:
    """A sweep directory read back (for notebooks and scripts; nothing is written): ``rows`` —
    ``results.csv`` as dicts (numbers parsed, empty cells None); ``curves`` — per trial, the
    held-out ``gold``, ``proxy`` and ``kl`` evaluations against ``responses`` used so far;
    ``rank`` — ``rank/rank.json`` (None when the sweep ranks nothing)."""
    from rlhf_jax.runner.run_dir import RunDirError

    root = pathlib.Path(sweep_dir)
    path = root / "results.csv"
    if not path.is_file():
        raise RunDirError(f"{path}: missing (not a sweep directory, or its report has not been "
                          f"written yet: rerun the sweep command)")
    with open(path, newline="", encoding="utf-8") as f:
        rows = [{k: _cell_value(v) for k, v in r.items()} for r in csv.DictReader(f)]
    curves = {}
    for r in rows:
        d = root / "trials" / str(r["trial"])
        summary = read_json(str(d / "summary.json"), "delete it") if (d / "summary.json").exists() else None
        per = (summary or {}).get("responses_per_iteration") or 1
        records = read_metrics(d) if d.is_dir() else []
        c = {}
        for name, (stage, key, _) in zip(("gold", "proxy", "kl"), CURVES):
            pts = _curve(records, stage, key, per)
            c[name] = ([x for x in sorted(pts)], [pts[x] for x in sorted(pts)])
        curves[r["trial"]] = c
    rank = root / RANK_DIR / "rank.json"
    return {"rows": rows, "curves": curves,
            "rank": read_json(str(rank), "delete it to rank again") if rank.exists() else None}
