"""``python -m rlhf_jax overoptimization CONFIG.yaml [key=value ...]``: the reward over-optimisation
study of Gao, Schulman & Hilton (2022) on the built-in task, from one experiment config.

For each reward-model size S (``--sizes``: values of ``reward.n_prompts``, the prompts whose k
responses the simulated labelers rank) the study makes an ordinary run ``OUT/rm_S`` of the config.
The first size builds step 1 (pretrain + SFT); the others reuse it (``run.reuse_from``: step 1
copied, step 2 made again on S prompts), so every reward model is trained on the same LM, and RL
starts from the same policy. Each run then trains its policy against its own reward model; its
periodic held-out evaluations (``<algorithm>.eval_every``) give the RL curve: gold reward, proxy
score (the normalised RM score) and KL to the reference, measured on the policy's samples.

Best-of-n needs no training: ``--bon-samples`` N responses (default 4·``--n-max``) of the initial policy to each held-out
prompt, scored by the gold labeler and by every reward model, give the unbiased best-of-n estimate
for n = 1, 2, 4, ... ``--n-max`` at the analytic KL ``log n − (n − 1)/n``
(``metrics/overoptimization.py``). Gold gains over the initial policy are fitted with
``R_bon(d) = d (α − β d)`` and ``R_rl(d) = d (α − β log d)``, ``d = √KL``, per size.

``OUT`` (default: the config's ``run.out_dir``) gets ``overoptimization.json`` (every point and fit:
:func:`overoptimization_study`'s result), ``overoptimization.md`` (the table) and
``plots/overoptimization.png``. The study resumes: finished runs are not redone, an interrupted run
resumes from its checkpoints, and the best-of-n samples are kept in ``OUT/bon_samples.npz``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

import numpy as np

from rlhf_jax.metrics import overoptimization as oo
from rlhf_jax.metrics.logger import read_metrics
from rlhf_jax.runner.config_loader import ConfigError, load_config
from rlhf_jax.runner.rl_stage import _log
from rlhf_jax.runner.run_dir import RunDirError, load_npz, read_json, save_npz, write_json

STUDY_FILE, TABLE_FILE, PLOT_FILE, BON_FILE = ("overoptimization.json", "overoptimization.md",
                                               "overoptimization.png", "bon_samples.npz")
BON_RNG = 11
"""``jax.random.fold_in(PRNGKey(run.seed), 11)``: the key of the best-of-n samples."""


@dataclasses.dataclass(frozen=True)
class StudyOptions:
    sizes: tuple[int, ...] = (200, 800, 2400)  # reward.n_prompts of each reward model
    n_max: int = 256                           # best-of-n for n = 1, 2, 4, ... n_max
    bon_samples: int | None = None             # responses per prompt for best-of-n (default 4·n_max)
    prompts: int | None = None                 # held-out prompts for best-of-n (default: all)

    @property
    def ns(self) -> list[int]:
        ns = [2 ** i for i in range(int(math.log2(self.n_max)) + 1)]
        return ns + ([self.n_max] if ns[-1] != self.n_max else [])

    @property
    def n_samples(self) -> int:
        return 4 * self.n_max if self.bon_samples is None else self.bon_samples


def check_options(opts: StudyOptions) -> None:
    sizes = list(opts.sizes)
    if not sizes:
        raise ConfigError("--sizes: give at least one reward-model size (reward.n_prompts)")
    bad = [s for s in sizes if not isinstance(s, int) or s < 1]
    if bad:
        raise ConfigError(f"--sizes: {bad[0]!r} is not a positive number of prompts")
    if len(set(sizes)) != len(sizes):
        raise ConfigError(f"--sizes: {sorted(s for s in sizes if sizes.count(s) > 1)[0]} is given twice")
    if opts.n_max < 2:
        raise ConfigError(f"--n-max {opts.n_max}: best-of-n needs n up to at least 2")
    if opts.n_samples < opts.n_max:
        raise ConfigError(f"--bon-samples {opts.n_samples}: best-of-{opts.n_max} needs at least "
                          f"{opts.n_max} samples per prompt")
    if opts.prompts is not None and opts.prompts < 1:
        raise ConfigError(f"--prompts {opts.prompts}: must be at least 1")


def study_configs(config: str, overrides: list[str], opts: StudyOptions, out: str | None = None):
    """``(out_dir, [(size, cfg)])``: one validated run config per size (the first builds step 1)."""
    from rlhf_jax.algorithms.registry import ALGORITHMS
    from rlhf_jax.runner.schema import ExperimentConfig, algorithm_section, check_overrides

    check_options(opts)
    base = load_config(ExperimentConfig, config, overrides)
    check_overrides(base, overrides)
    for key in ("reward.n_prompts", "run.out_dir"):
        if any(o.split("=", 1)[0].strip() == key for o in overrides):
            raise ConfigError(f"override {key}: the study sets it for each run (use --sizes / --out)")
    if base.task.name is None or base.data.preferences:
        raise ConfigError("the over-optimisation study needs the built-in task's gold labeler and its "
                          "simulated comparisons: set task.name and leave data.preferences unset")
    if not base.reward.train:
        raise ConfigError("the over-optimisation study trains reward models: reward.train must be true")
    if "reward_model" not in ALGORITHMS.get(base.algorithm).needs(algorithm_section(base)):
        raise ConfigError(f"algorithm {base.algorithm!r} learns from comparisons directly, not "
                          f"against a reward model: choose an on-policy algorithm (e.g. algorithm=ppo)")
    if base.online.rounds != 1:
        raise ConfigError("the over-optimisation study holds each reward model fixed: online.rounds must be 1")
    out = os.path.abspath(out or base.run.out_dir)
    cfgs, first = [], None
    for size in opts.sizes:
        run_dir = os.path.join(out, f"rm_{size}")
        extra = [f"reward.n_prompts={size}", f"run.out_dir={run_dir}"]
        given = list(overrides)
        if first is not None:  # step 1 of the first run (which may itself reuse a given run's)
            extra.append(f"run.reuse_from={first}")
            given = [o for o in given if o.split("=", 1)[0].strip() != "run.reuse_from"]
        cfgs.append((size, load_config(ExperimentConfig, config, given + extra)))
        first = first or run_dir
    return out, cfgs


def _validate(cfgs) -> None:
    """Every run's checks before any compute (a later run's reuse check waits for the first)."""
    from rlhf_jax.runner.pipeline import Pipeline

    for i, (_, cfg) in enumerate(cfgs):
        pending = i > 0 and not os.path.exists(os.path.join(cfg.run.out_dir, "config.yaml")) and \
            not os.path.exists(os.path.join(cfg.run.reuse_from, "reward_model.json"))
        if pending:
            cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, reuse_from=None))
        Pipeline(cfg).validate()


def _bon_samples(cfgs, opts: StudyOptions, out: str) -> dict:
    """Gold ``[P, N]`` and every reward model's proxy ``[P, S, N]`` of N initial-policy samples."""
    import jax

    from rlhf_jax.runner.evaluation import gold_of_samples, sample_many
    from rlhf_jax.runner.run_loader import load_run

    path = os.path.join(out, BON_FILE)
    meta = {"n": str(opts.n_samples), "prompts": str(opts.prompts),
            "sizes": ",".join(str(s) for s, _ in cfgs)}
    kept = load_npz(path, ("gold", "proxy", *meta), "delete it to sample again")
    if kept is not None and all(str(kept[k]) == v for k, v in meta.items()):
        return kept
    first = load_run(cfgs[0][1].run.out_dir, reward_model=False)
    prompts = first.eval_prompts()[: opts.prompts]
    ids, mask = first.encode_prompts(prompts)
    N = opts.n_samples
    _log(f"best-of-n: sampling {N} responses of the initial policy to each of {len(prompts)} "
         f"held-out prompts")
    samples = sample_many(first.model_cfg, first.reference_params, ids, mask,
                          rng=jax.random.fold_in(jax.random.PRNGKey(first.cfg.run.seed), BON_RNG), n=N,
                          max_new_tokens=first.response_len, temperature=first.cfg.eval.temperature,
                          eos_id=first.tokenizer.eos_id, pad_id=first.tokenizer.pad_id)
    gold = gold_of_samples(first.gold, first.tokenizer, prompts, N, samples)
    proxy = []
    for size, cfg in cfgs:
        run = load_run(cfg.run.out_dir)
        proxy.append(run.rm_scores(samples)[1].reshape(len(prompts), N))
    # [P, S, N]: every array of an npz the run keeps has the prompts' length
    data = {"gold": gold, "proxy": np.stack(proxy, axis=1), **{k: np.array(v) for k, v in meta.items()}}
    save_npz(path, data)
    return data


def _rl_curve(run_dir: str, gold0: float, proxy0: float) -> dict:
    """The run's periodic held-out evaluations (and the final one) after step 0, with the initial
    policy's point (d = 0) from the best-of-n samples."""
    evals = {}
    for rec in read_metrics(run_dir):
        if rec.get("stage") == "eval" and rec["step"] > 0 and "eval/gold_reward" in rec:
            evals[rec["step"]] = rec
    steps = sorted(evals)
    curve = {"step": [0] + steps, "kl": [0.0] + [evals[s]["eval/kl"] for s in steps],
             "gold": [gold0] + [evals[s]["eval/gold_reward"] for s in steps],
             "proxy": [proxy0] + [evals[s].get("eval/proxy_score", float("nan")) for s in steps]}
    curve["d"] = [math.sqrt(max(k, 0.0)) for k in curve["kl"]]
    return curve


def _peak(curve: dict) -> dict:
    g, p = np.array(curve["gold"]), np.array(curve["proxy"])
    i = int(np.argmax(g))
    return {"peak_step": curve["step"][i], "d_at_peak": curve["d"][i], "gold_peak": float(g[i]),
            "gold_final": float(g[-1]), "gold_drop": float(g[i] - g[-1]),
            "proxy_at_peak": float(p[i]), "proxy_final": float(p[-1]),
            "proxy_rise_after_peak": float(p[-1] - p[i])}


def _fit(form: str, curve: dict, gold0: float) -> dict:
    gain = np.array(curve["gold"]) - gold0
    try:
        return oo.fit_form(form, curve["d"], gain)
    except ValueError as e:
        return {"error": str(e)}


def analyse(cfgs, opts: StudyOptions, bon: dict) -> dict:
    """Every size's best-of-n and RL curves, fits and RL peak (a JSON-able dict)."""
    ns = opts.ns
    d_bon = np.sqrt(oo.bon_kl(ns)).tolist()
    rows = []
    for j, (size, cfg) in enumerate(cfgs):
        proxy = bon["proxy"][:, j]
        b = {"n": ns, "d": d_bon, "kl": oo.bon_kl(ns).tolist(),
             "gold": oo.best_of_n(proxy, bon["gold"], ns).tolist(),
             "proxy": oo.best_of_n(proxy, proxy, ns).tolist()}
        gold0, proxy0 = b["gold"][0], b["proxy"][0]
        b["fit"] = _fit("bon", b, gold0)
        rl = _rl_curve(cfg.run.out_dir, gold0, proxy0)
        rl["fit"] = _fit("rl", rl, gold0)
        rl.update(_peak(rl))
        info = read_json(os.path.join(cfg.run.out_dir, "reward_model.json"), "delete it") or {}
        k = cfg.reward.k
        rows.append({"size": size, "comparisons": size * k * (k - 1) // 2,
                     "rm_accuracy": info.get("rm_eval_accuracy"),
                     "rm_label_ceiling": info.get("rm_label_ceiling"),
                     "run_dir": cfg.run.out_dir, "bon": b, "rl": rl})
    return {"algorithm": cfgs[0][1].algorithm, "sizes": [s for s, _ in cfgs], "ns": ns,
            "bon_samples": opts.n_samples, "prompts": int(bon["gold"].shape[0]), "rows": rows}


def overoptimization_study(config: str, overrides: list[str] = (), *, sizes=(200, 800, 2400),
                           n_max: int = 256, bon_samples: int | None = None,
                           prompts: int | None = None, out: str | None = None,
                           plots: bool = True) -> dict:
    """Run (or resume) the study and write its files; returns :func:`analyse`'s result (with
    ``out_dir``). See the module docstring."""
    from rlhf_jax.runner.pipeline import Pipeline

    opts = StudyOptions(tuple(sizes), n_max, bon_samples, prompts)
    out, cfgs = study_configs(config, list(overrides), opts, out)
    _validate(cfgs)
    if opts.prompts is not None and opts.prompts > cfgs[0][1].task.n_eval_prompts:
        raise ConfigError(f"--prompts {opts.prompts}: the runs hold out only "
                          f"{cfgs[0][1].task.n_eval_prompts} prompts (task.n_eval_prompts)")
    os.makedirs(out, exist_ok=True)
    for i, (size, cfg) in enumerate(cfgs):
        _log(f"over-optimisation study: run {i + 1} of {len(cfgs)}, a reward model on {size} "
             f"prompts ({cfg.run.out_dir})")
        Pipeline(cfg).run()
    result = analyse(cfgs, opts, _bon_samples(cfgs, opts, out))
    result["out_dir"] = out
    write_json(os.path.join(out, STUDY_FILE), result)
    write_table(result, out, plots=plots)
    return result


def _num(x, fmt="{:.3f}") -> str:
    return "—" if x is None or (isinstance(x, float) and not math.isfinite(x)) else fmt.format(x)


def table_lines(result: dict) -> list[str]:
    lines = ["| RM prompts | comparisons | RM acc. | BoN α | BoN β | BoN R² | RL α | RL β | RL R² | "
             "RL gold: peak (at d) → final | proxy: at peak → final |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in result["rows"]:
        b, rl = r["bon"]["fit"], r["rl"]["fit"]
        rl_pt = r["rl"]
        lines.append(
            f"| {r['size']} | {r['comparisons']} | {_num(r['rm_accuracy'])} | {_num(b.get('alpha'))} | "
            f"{_num(b.get('beta'))} | {_num(b.get('r2'))} | {_num(rl.get('alpha'))} | "
            f"{_num(rl.get('beta'))} | {_num(rl.get('r2'))} | {rl_pt['gold_peak']:.3f} "
            f"(d={rl_pt['d_at_peak']:.2f}) → {rl_pt['gold_final']:.3f} | "
            f"{rl_pt['proxy_at_peak']:.2f} → {rl_pt['proxy_final']:.2f} |")
    return lines


def write_table(result: dict, out: str, plots: bool = True) -> None:
    lines = ["# Reward over-optimisation", "",
             f"{result['algorithm']} against reward models trained on {', '.join(map(str, result['sizes']))} "
             f"prompts' comparisons; best-of-n from {result['bon_samples']} samples per prompt on "
             f"{result['prompts']} held-out prompts. Fits to the gold gain over the initial policy: "
             "R_bon(d) = d(α − βd), R_rl(d) = d(α − β log d), d = √KL.", ""] + table_lines(result)
    if plots:
        plot_study(result, os.path.join(out, "plots"))
        lines += ["", f"![over-optimisation](plots/{PLOT_FILE})"]
    with open(os.path.join(out, TABLE_FILE), "w") as f:
        f.write("\n".join(lines) + "\n")


def plot_study(result: dict, plot_dir: str) -> str:
    """Gold (points and fitted form) and proxy against d, best-of-n and RL, one colour per size."""
    from rlhf_jax.runner.run_dir import headless_pyplot

    plt = headless_pyplot()

    os.makedirs(plot_dir, exist_ok=True)
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), sharex="col")
    colors = plt.cm.viridis(np.linspace(0.0, 0.85, len(result["rows"])))
    for r, c in zip(result["rows"], colors):
        for col, (kind, form) in enumerate((("bon", "bon"), ("rl", "rl"))):
            cur = r[kind]
            d, gold0 = np.array(cur["d"]), cur["gold"][0]
            label = f"RM on {r['size']} prompts"
            axes[0, col].plot(d, np.array(cur["gold"]) - gold0, "o", color=c, ms=4, label=label)
            fit = cur["fit"]
            if "alpha" in fit:
                grid = np.linspace(0.0, d.max(), 100)
                axes[0, col].plot(grid, oo.predict(form, grid, fit["alpha"], fit["beta"]), "-", color=c,
                                  lw=1.2, label=f"fit, R²={fit['r2']:.2f}")
            axes[1, col].plot(d, np.array(cur["proxy"]) - cur["proxy"][0], "s--", color=c, ms=3,
                              lw=1, label=label)
    for col, title in enumerate(("best-of-n (KL = log n − (n−1)/n)", f"RL ({result['algorithm']}, KL measured)")):
        axes[0, col].set_title(title)
        axes[0, col].set_ylabel("gold reward gain")
        axes[1, col].set_ylabel("proxy score gain")
        axes[1, col].set_xlabel("d = √KL(π‖π_ref)")
        for ax in axes[:, col]:
            ax.axhline(0.0, color="grey", lw=0.5)
            ax.grid(alpha=0.3)
        axes[0, col].legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(plot_dir, PLOT_FILE)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _sizes(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise ConfigError(f"--sizes {text!r}: expected comma-separated numbers of prompts, e.g. "
                          f"200,800,2400") from None


def _command(args) -> int:
    if args.out and os.path.exists(args.out) and not os.path.isdir(args.out):
        raise RunDirError(f"--out {args.out}: is a file, not a directory")
    result = overoptimization_study(args.config, args.overrides, sizes=_sizes(args.sizes),
                                    n_max=args.n_max, bon_samples=args.bon_samples,
                                    prompts=args.prompts, out=args.out)
    if args.json:
        print(json.dumps(result))
    else:
        print("\n".join(table_lines(result)))
        print(f"study: {os.path.join(result['out_dir'], TABLE_FILE)}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("overoptimization", help="the reward over-optimisation study (Gao et al. 2022)",
                       description=__doc__.split("\n\n")[1].replace("``", ""))
    p.add_argument("config", help="experiment YAML file (e.g. experiments/overoptimization.yaml)")
    p.add_argument("overrides", nargs="*", help="key.path=value overrides for every run")
    p.add_argument("--sizes", default="200,800,2400", metavar="S1,S2,...",
                   help="reward.n_prompts of each reward model (default 200,800,2400)")
    p.add_argument("--n-max", type=int, default=256, metavar="N", help="best-of-n up to n = N (default 256)")
    p.add_argument("--bon-samples", type=int, default=None, metavar="M",
                   help="initial-policy samples per prompt for best-of-n (default: 4 x --n-max)")
    p.add_argument("--prompts", type=int, default=None, metavar="P",
                   help="the first P held-out prompts for best-of-n (default: all)")
    p.add_argument("--out", default=None, metavar="DIR", help="study directory (default: the config's run.out_dir)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(handler=_command)
