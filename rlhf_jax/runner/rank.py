"""``python -m rlhf_jax rank RUN_DIR... [--judge gold|rm:RUN_DIR] [--prompts N]``: Elo ratings
(Bradley–Terry, ``metrics/elo.py``) of the policies of several runs, judged on the same prompts.

Every player (a run's newest policy; with ``--checkpoints`` also each RL checkpoint the run keeps;
with ``--reference`` the reference policy of the first run, which then anchors the scale at 1000)
samples ``--samples`` responses to each of the first ``--prompts`` held-out evaluation prompts of
the first run, all from the same key (``fold_in(PRNGKey(seed), 13)``), at its run's
``eval.temperature`` (or ``--temperature``) and response length, through its run's tokenizer and
its algorithm's decoder. A judge scores each response text: ``gold`` — the built-in task's gold
reward (every run on the same task); ``rm:RUN_DIR`` — that run's trained reward model
(``gain·r + bias`` of the prompt + response re-encoded with its tokenizer). For each prompt every
response of one player meets every response of another; the higher score wins, equal scores tie
(half a win each). The fit and its bootstrap over prompts give each player's Elo and 95% interval;
the win-rate matrix is the share of games won by the row player against the column player.

``--out DIR`` writes ``rank.json`` (:func:`rank_runs`' result), ``rank.md`` (the tables) and the
plots ``elo.png`` and ``win_rate.png``; without it the table is printed. Deterministic given the
seed. Nothing is written into the run directories.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

from rlhf_jax.metrics import elo
from rlhf_jax.runner.config_loader import ConfigError
from rlhf_jax.runner.run_dir import RunDirError, write_json

RANK_RNG = 13
"""``jax.random.fold_in(PRNGKey(seed), 13)``: the key every player samples with."""


def _log(msg: str) -> None:
    print(f"[rank] {msg}", file=sys.stderr, flush=True)


def _names(run_dirs: list[str]) -> list[str]:
    """Short unique labels: the directory's name, with as many parents as it takes."""
    parts = [os.path.abspath(d).rstrip(os.sep).split(os.sep) for d in run_dirs]
    depth = 1
    while depth < max(map(len, parts)):
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
        depth += 1
    return ["/".join(p) for p in parts]


def parse_judge(spec: str) -> tuple[str, str | None]:
    if spec == "gold":
        return "gold", None
    if spec.startswith("rm:") and len(spec) > 3:
        return "rm", spec[3:]
    raise ConfigError(f"--judge {spec!r}: use gold (the built-in task's gold reward) or rm:RUN_DIR "
                      f"(that run's reward model)")


class _Judge:
    def __init__(self, kind: str, where: str | None, first, run_dirs: list[str]):
        from rlhf_jax.runner.config_loader import load_config
        from rlhf_jax.runner.run_loader import load_run
        from rlhf_jax.runner.schema import ExperimentConfig

        self.kind = kind
        if kind == "gold":
            for d in run_dirs:  # the configs only: nothing is restored twice
                task = load_config(ExperimentConfig, os.path.join(d, "config.yaml"),
                                   [f"run.out_dir={d}"]).task.name
                if task is None or first.gold is None:
                    raise ConfigError(f"--judge gold: {d} has no built-in task (task.name) and so "
                                      f"no gold reward; judge with a reward model: --judge rm:RUN_DIR")
                if task != first.cfg.task.name:
                    raise ConfigError(f"--judge gold: {d} is on task {task!r}, {run_dirs[0]} on "
                                      f"{first.cfg.task.name!r}")
            self.gold, self.label = first.gold, f"gold reward ({first.cfg.task.name})"
        else:
            self.run = load_run(where, reward_model=True)
            if not self.run.has_reward_model:
                raise RunDirError(f"--judge rm:{where}: the run has no trained reward model")
            self.label = f"reward model of {self.run.run_dir}"

    def __call__(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        if self.kind == "gold":
            return np.asarray(self.gold(prompts, responses), np.float64)
        from rlhf_jax.algorithms.reward_model import score_in_batches
        from rlhf_jax.data.encoding import encode_prompt_response

        r = self.run
        enc = encode_prompt_response(r.tokenizer, prompts, responses, r.prompt_len, r.response_len)
        raw = score_in_batches(r.rm_cfg, r.rm_params, enc["input_ids"], enc["attention_mask"])
        return (r.rm_info["gain"] * raw + r.rm_info["bias"]).astype(np.float64)


def _player_specs(run_dirs, names, checkpoints: bool, reference: bool) -> list[tuple]:
    """``[(name, run_dir, what, step)]`` before anything is loaded: ``what`` is 'reference' or
    'policy', ``step`` an RL checkpoint (None: the run's newest policy)."""
    from rlhf_jax.runner.run_loader import rl_steps

    specs = []
    for d, name in zip(run_dirs, names):
        if reference and d == run_dirs[0]:
            specs.append((f"reference ({name})", d, "reference", None))
        steps = rl_steps(d) if checkpoints else []
        specs += [(f"{name}@{s}", d, "policy", s) for s in steps[:-1]]
        specs.append((f"{name}@{steps[-1]}" if steps else name, d, "policy", None))
    return specs


def _players(specs, first):
    """``(name, loaded_run, params, decoder, run_dir, stage, step)`` per spec, loaded one at a
    time (a run's newest state is loaded once for its reference and its policy)."""
    from rlhf_jax.runner.run_loader import load_run

    newest = {first.run_dir: first}
    for name, d, what, step in specs:
        if step is not None:
            run = load_run(d, reward_model=False, step=step)
        else:
            run = newest.get(d) or load_run(d, reward_model=False)
            newest = {d: run}
        if what == "reference":
            yield name, run, run.reference_params, None, d, run.reference_stage, run.reference_step
        else:
            yield name, run, run.policy_params, run.policy_decoder, d, run.policy_stage, run.policy_step


def check_rank_options(run_dirs, *, prompts, samples, n_boot, temperature) -> None:
    if not run_dirs:
        raise ConfigError("rank: give at least one run directory")
    dup = sorted({d for d in run_dirs if [os.path.abspath(x) for x in run_dirs].count(os.path.abspath(d)) > 1})
    if dup:
        raise ConfigError(f"rank: {dup[0]} is given more than once")
    for name, v in (("--prompts", prompts), ("--samples", samples)):
        if v is not None and v < 1:
            raise ConfigError(f"{name} {v}: must be at least 1")
    if n_boot < 0:
        raise ConfigError(f"--boot {n_boot}: must be >= 0")
    if temperature is not None and not (np.isfinite(temperature) and temperature >= 0):
        raise ConfigError(f"--temperature {temperature}: must be >= 0 (0 is greedy decoding)")


def rank_runs(run_dirs: list[str], *, judge: str = "gold", prompts: int | None = None,
              samples: int = 1, seed: int = 0, checkpoints: bool = False, reference: bool = False,
              temperature: float | None = None, n_boot: int = 1000) -> dict:
    """Elo of the runs' policies (module docstring). Returns :func:`metrics.elo.rank`'s dict plus
    ``judge``, ``prompts`` (the texts), ``samples``, and per player ``run_dir``, ``stage``,
    ``step`` and ``mean_score`` (the judge's mean score of its responses)."""
    import jax

    from rlhf_jax.runner.evaluation import decode_responses, sample_many
    from rlhf_jax.runner.run_loader import load_run

    check_rank_options(run_dirs, prompts=prompts, samples=samples, n_boot=n_boot, temperature=temperature)
    kind, where = parse_judge(judge)
    run_dirs = [os.path.abspath(d) for d in run_dirs]
    first = load_run(run_dirs[0], reward_model=False)
    texts = first.eval_prompts()
    if prompts is not None:
        if prompts > len(texts):
            raise ConfigError(f"--prompts {prompts}: {run_dirs[0]} has only {len(texts)} held-out "
                              f"prompts (task.n_eval_prompts)")
        texts = texts[:prompts]
    for d in run_dirs[1:]:
        if not os.path.isfile(os.path.join(d, "config.yaml")):
            load_run(d, reward_model=False)  # says what is wrong with it
    judge_fn = _Judge(kind, where, first, run_dirs)
    specs = _player_specs(run_dirs, _names(run_dirs), checkpoints, reference)
    if len(specs) < 2:
        raise ConfigError("rank: one player only; give more run directories, or --checkpoints / "
                          "--reference")
    rng = jax.random.fold_in(jax.random.PRNGKey(seed), RANK_RNG)
    names, meta, scores = [], [], []
    for name, run, params, decoder, d, stage, step in _players(specs, first):
        ids, mask = run.encode_prompts(texts)
        temp = run.cfg.eval.temperature if temperature is None else float(temperature)
        s = sample_many(run.model_cfg, params, ids, mask, rng=rng, n=samples,
                        max_new_tokens=run.response_len, temperature=temp, eos_id=run.tokenizer.eos_id,
                        pad_id=run.tokenizer.pad_id, decoder=decoder)
        responses = decode_responses(run.tokenizer, s)
        judged = judge_fn([p for p in texts for _ in range(samples)], responses)
        scores.append(judged.reshape(len(texts), samples))
        names.append(name)
        meta.append({"run_dir": d, "stage": stage, "step": step})
        _log(f"{name}: mean {kind} score {judged.mean():+.3f} over {len(responses)} responses")
    games = elo.games_of_scores(np.stack(scores))
    out = elo.rank(games, names, n_boot=n_boot, seed=seed, anchor=0 if reference else None)
    for p, m, s in zip(out["players"], meta, scores):
        p.update(m, mean_score=float(s.mean()))
    out.update(judge=judge_fn.label, prompts=list(texts), samples=samples)
    return out


# ----------------------------------------------------------------------------- output

def _fmt_interval(p) -> str:
    if not np.isfinite(p["elo_low"]):
        return f"{p['elo']:.0f}"
    return f"{p['elo']:.0f} [{p['elo_low']:.0f}, {p['elo_high']:.0f}]"


def rank_table(result: dict) -> list[str]:
    """Markdown: the ratings, best first, and the win-rate matrix in the same order."""
    ps = sorted(result["players"], key=lambda p: p["rank"])
    lines = [f"Judge: {result['judge']}; {result['n_prompts']} prompts × {result['samples']} "
             f"response(s) per player; 95% intervals from {result['n_boot']} bootstrap resamples "
             f"of the prompts.", "",
             "| rank | policy | Elo [95% interval] | win rate | mean score |", "|---|---|---|---|---|"]
    for p in ps:
        lines.append(f"| {p['rank']} | {p['name']} | {_fmt_interval(p)} | {p['win_rate']:.3f} | "
                     f"{p['mean_score']:+.3f} |")
    idx = [next(i for i, q in enumerate(result["players"]) if q["name"] == p["name"]) for p in ps]
    wr = result["win_rate"]
    lines += ["", "Win rate of the row policy against the column policy:", "",
              "| | " + " | ".join(str(p["rank"]) for p in ps) + " |",
              "|---|" + "---|" * len(ps)]
    for i, p in zip(idx, ps):
        cells = ["—" if wr[i][j] is None else f"{wr[i][j]:.2f}" for j in idx]
        lines.append(f"| {p['rank']}. {p['name']} | " + " | ".join(cells) + " |")
    return lines


def plot_rank(result: dict, out_dir: str) -> list[str]:
    """``elo.png`` (ratings with intervals) and ``win_rate.png`` (heatmap), best first."""
    from rlhf_jax.runner.run_dir import headless_pyplot

    plt = headless_pyplot()

    ps = sorted(result["players"], key=lambda p: p["rank"])
    idx = [next(i for i, q in enumerate(result["players"]) if q["name"] == p["name"]) for p in ps]
    names = [p["name"] for p in ps]
    y = np.arange(len(ps))
    fig, ax = plt.subplots(figsize=(6, 0.35 * len(ps) + 1.2))
    el = np.array([p["elo"] for p in ps])
    lo, hi = np.array([p["elo_low"] for p in ps]), np.array([p["elo_high"] for p in ps])
    err = None if not np.isfinite(lo).all() else np.stack([el - lo, hi - el])
    ax.errorbar(el, y, xerr=err, fmt="o", capsize=3)
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlabel("Elo (95% bootstrap interval)")
    ax.set_title(result["judge"], fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "elo.png"), dpi=110)
    plt.close(fig)

    m = np.array([[np.nan if result["win_rate"][i][j] is None else result["win_rate"][i][j]
                   for j in idx] for i in idx])
    size = 0.45 * len(ps) + 2
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(m, vmin=0, vmax=1, cmap="RdBu_r")
    if len(ps) <= 20:
        for i in range(len(ps)):
            for j in range(len(ps)):
                if np.isfinite(m[i, j]):
                    ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=7)
    ax.set_xticks(y, names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(y, names, fontsize=8)
    ax.set_title("win rate of row vs column", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "win_rate.png"), dpi=110)
    plt.close(fig)
    return ["elo.png", "win_rate.png"]


def write_rank(result: dict, out_dir: str, plots: bool = True) -> None:
    os.makedirs(out_dir, exist_ok=True)
    write_json(os.path.join(out_dir, "rank.json"), result)
    lines = ["# Elo ranking of policies", ""] + rank_table(result)
    if plots:
        lines += [""] + [f"![{p}]({p})" for p in plot_rank(result, out_dir)]
    with open(os.path.join(out_dir, "rank.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def _rank_command(args) -> int:
    check_rank_options(args.run_dirs, prompts=args.prompts, samples=args.samples, n_boot=args.boot,
                       temperature=args.temperature)
    parse_judge(args.judge)
    if args.out and os.path.exists(args.out) and not os.path.isdir(args.out):
        raise RunDirError(f"--out {args.out}: is a file, not a directory")
    result = rank_runs(args.run_dirs, judge=args.judge, prompts=args.prompts, samples=args.samples,
                       seed=args.seed, checkpoints=args.checkpoints, reference=args.reference,
                       temperature=args.temperature, n_boot=args.boot)
    if args.out:
        write_rank(result, args.out)
        print(f"ranking: {os.path.join(args.out, 'rank.md')}")
    if args.json:
        print(json.dumps(result))
    else:
        print("\n".join(rank_table(result)))
    return 0


def add_parser(sub) -> None:
    r = sub.add_parser("rank", help="Elo ratings of several runs' policies, judged pairwise",
                       description=__doc__.split("\n\n")[1].replace("``", ""))
    r.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories (finished or running)")
    r.add_argument("--judge", default="gold", metavar="gold|rm:RUN_DIR",
                   help="who judges: the built-in task's gold reward (default) or a run's reward model")
    r.add_argument("--prompts", type=int, default=None, metavar="N",
                   help="the first N held-out prompts of the first run (default: all of them)")
    r.add_argument("--samples", type=int, default=1, metavar="K", help="responses per prompt and player (default 1)")
    r.add_argument("--checkpoints", action="store_true",
                   help="also rank every RL checkpoint the runs keep")
    r.add_argument("--reference", action="store_true",
                   help="also rank the first run's reference policy (the LM after step 1), at Elo 1000")
    r.add_argument("--temperature", type=float, default=None, metavar="T",
                   help="sampling temperature (default: each run's eval.temperature)")
    r.add_argument("--seed", type=int, default=0, metavar="S", help="sampling and bootstrap seed (default 0)")
    r.add_argument("--boot", type=int, default=1000, metavar="B", help="bootstrap resamples (default 1000)")
    r.add_argument("--out", default=None, metavar="DIR", help="write rank.json, rank.md and plots here")
    r.add_argument("--json", action="store_true", help="print the result as one JSON object")
    r.set_defaults(handler=_rank_command)
