"""Sweeps: many ordinary runs from one sweep file, ``python -m rlhf_jax sweep SWEEP.yaml``.

A sweep file is an experiment config (usually ``base: some_experiment.yaml`` plus fixed keys) with
one extra section, ``sweep``, that says what varies::

    base: quickstart.yaml            # the experiment the trials start from (path relative to this file)
    ppo: {iterations: 30}            # fixed settings: ordinary config keys
    sweep:
      out_dir: runs/sweep_kl         # trials in out_dir/trials/<name>, results.csv and report.md here
      seeds: [0, 1, 2]               # run.rl_seed of each configuration (steps 1-2 stay shared)
      grid:                          # the product of these lists
        algorithm: [ppo, rloo]
      zip:                           # each group varies its keys together (equal-length lists)
        - {ppo.lr: [1.0e-4, 3.0e-4], ppo.critic_lr: [1.0e-4, 3.0e-4]}
      random:                        # `samples` points drawn with `seed`
        samples: 4
        seed: 0
        axes:
          ppo.clip_eps: {uniform: [0.1, 0.3]}
          ppo.lr: {log_uniform: [1.0e-5, 1.0e-3]}
          ppo.epochs: {choice: [1, 2, 4]}
      workers: 2                     # trials run at once (local processes or Ray tasks)

A key ``*.name`` means ``name`` in the section of the trial's own algorithm (``*.iterations``
gives every algorithm of an ``algorithm`` axis the same budget). The configurations are the
product of the grid, the zip groups and the random points; each runs
once per seed. Every trial is an ordinary run (``python -m rlhf_jax run`` of the resolved config
the sweep writes to ``out_dir/configs/<name>.yaml``) in its own directory, named from its
parameters. Trials that differ only in step-3 keys (the algorithm, its section, ``run.rl_seed``)
share one steps 1-2 run (``out_dir/shared/<id>``, built once, then ``run.reuse_from``).

Before any trial starts, every trial's config is checked (keys, types, ranges, the algorithm's
needs); a trial that fails the check is recorded as failed with its error line and the others run.
Rerunning the same command skips finished trials, resumes interrupted ones from their
checkpoints and retries failed ones; a trial is never run by two sweep processes at once (a lock
per trial). Exit status: 0 every trial finished, 1 some failed (see results.csv), 2 the sweep file
itself is wrong, 130/143 interrupted (rerun to resume).

Running the trials (status, jobs, locks, the local launcher) is ``runner/sweep_jobs.py``.
``sweep.vectorize: true`` runs the trials that differ only in seeds and array-valued
hyperparameters as one vmapped program (``runner/vectorized.py``). ``sweep.launcher: ray`` sends
the trials to a Ray cluster (``runner/ray_launcher.py``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import sys
from dataclasses import field
from typing import Any, Literal, Optional

import numpy as np
import yaml

from rlhf_jax.runner.config_loader import ConfigError, config_to_dict, load_config, parse_override
from rlhf_jax.runner.run_reuse import _steps12_id
from rlhf_jax.runner.run_dir import write_yaml
from rlhf_jax.runner.schema import (ALGORITHM_SECTIONS, ExperimentConfig, algorithm_section,
                                    check_overrides)

EXIT_OK, EXIT_FAILED = 0, 1
DISTRIBUTIONS = ("uniform", "log_uniform", "int_uniform", "choice")


def _log(msg: str) -> None:
    print(f"[sweep] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- the sweep section


@dataclasses.dataclass(frozen=True)
class RandomAxes:
    """Random search: ``samples`` points, each key drawn from its distribution."""
    samples: int = field(default=0, metadata={"range": (0, None)})  # points drawn (0: none)
    seed: int = 0                             # seed of the draws (the same seed, the same points)
    axes: dict[str, dict[str, Any]] = field(default_factory=dict)  # key: {uniform | log_uniform |
    #   int_uniform: [lo, hi]} or {choice: [v1, v2, ...]}


@dataclasses.dataclass(frozen=True)
class RayConfig:
    """``sweep.launcher: ray``: where the trials go and what each one asks for."""
    address: Optional[str] = None             # cluster address (None: RAY_ADDRESS, else a local instance)
    num_cpus: float = field(default=1.0, metadata={"range": (0.0, None)})  # per trial
    num_gpus: float = field(default=0.0, metadata={"range": (0.0, None)})  # per trial


@dataclasses.dataclass(frozen=True)
class RankConfig:
    """``sweep.rank``: Elo ratings of the finished trials' final policies (the ``rank`` command),
    computed when the trials are done and shown in the report."""
    judge: Optional[str] = None               # gold | rm:RUN_DIR (None: no ranking)
    prompts: Optional[int] = field(default=None, metadata={"range": (1, None)})  # first N held-out
    #   prompts (None: all)
    samples: int = field(default=1, metadata={"range": (1, None)})  # responses per prompt and policy
    boot: int = field(default=1000, metadata={"range": (0, None)})  # bootstrap resamples
    reference: bool = True                    # the (first trial's) reference policy at Elo 1000


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    out_dir: str = "runs/sweep"               # the sweep directory (trials, results.csv, report.md)
    seeds: list[int] = field(default_factory=list)  # run.rl_seed values: each configuration once
    #   per seed (empty: once, with the experiment's own seed)
    grid: dict[str, list[Any]] = field(default_factory=dict)  # key: values; the product of all
    zip: list[dict[str, list[Any]]] = field(default_factory=list)  # groups of keys varied together
    random: RandomAxes = RandomAxes()
    workers: int = field(default=1, metadata={"range": (1, None)})  # trials at once
    launcher: Literal["local", "ray", "inline"] = "local"  # inline: one by one in this process
    ray: RayConfig = RayConfig()
    share_steps: bool = True                  # build steps 1-2 once for trials that agree on them
    vectorize: bool = False                   # seeds / array hyperparameters as one vmapped program
    rank: RankConfig = RankConfig()           # Elo of the final policies (off unless rank.judge)


_EXPERIMENT_FIELDS = tuple(f.name for f in dataclasses.fields(ExperimentConfig))
SweepFile = dataclasses.make_dataclass(
    "SweepFile",
    [(f.name, f.type, field(default=f.default)) for f in dataclasses.fields(ExperimentConfig)]
    + [("sweep", SweepConfig, field(default=SweepConfig()))], frozen=True)
SweepFile.__module__ = __name__
SweepFile.__doc__ = "An experiment config plus its ``sweep`` section."


def _experiment(sf) -> Any:
    return ExperimentConfig(**{k: getattr(sf, k) for k in _EXPERIMENT_FIELDS})


# ----------------------------------------------------------------------------- expansion


def _check_key(key: str, where: str) -> None:
    """A swept key must name a field of the experiment config (with a did-you-mean when not)."""
    import difflib
    import typing

    if not isinstance(key, str) or not key or any(not p.strip() for p in key.split(".")):
        raise ConfigError(f"{where}: {key!r} is not a dotted config key like 'ppo.lr'")
    if key.split(".")[0] == "sweep":
        raise ConfigError(f"{where}: {key!r}: the sweep section cannot be swept")
    if key.startswith("*."):  # the trial's algorithm's section: checked with each trial
        return
    cls, done = ExperimentConfig, []
    for part in key.split("."):
        if cls is None:
            raise ConfigError(f"{where}: {'.'.join(done)!r} is a value, not a section, in {key!r}")
        names = [f.name for f in dataclasses.fields(cls)]
        if part not in names:
            close = difflib.get_close_matches(part, names, n=1)
            raise ConfigError(f"{where}: unknown key {key!r}"
                              + (f"; did you mean {'.'.join(done + [close[0]])!r}?" if close else ""))
        tp = typing.get_type_hints(cls)[part]
        options = [a for a in (typing.get_args(tp) or (tp,)) if dataclasses.is_dataclass(a)]
        cls = options[0] if options else None
        done.append(part)


def _draw(rng: np.random.Generator, key: str, spec: dict) -> Any:
    where = f"sweep.random.axes.{key}"
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
        raise ConfigError(f"{where}: expected one of {{{', '.join(d + ': ...' for d in DISTRIBUTIONS)}}}, "
                          f"got {spec!r}")
    (kind, arg), = spec.items()
    if kind == "choice":
        if not isinstance(arg, list) or not arg:
            raise ConfigError(f"{where}.choice: expected a non-empty list, got {arg!r}")
        return arg[int(rng.integers(len(arg)))]
    if (not isinstance(arg, list) or len(arg) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in arg)
            or not arg[0] <= arg[1]):
        raise ConfigError(f"{where}.{kind}: expected [low, high] numbers with low <= high, got {arg!r}")
    lo, hi = arg
    if kind == "uniform":
        return float(rng.uniform(lo, hi))
    if kind == "int_uniform":
        return int(rng.integers(int(lo), int(hi) + 1))
    if lo <= 0:
        raise ConfigError(f"{where}.log_uniform: the bounds must be > 0, got {arg!r}")
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def expand(sc: SweepConfig) -> list[dict[str, Any]]:
    """The configurations of a sweep section (without seeds), each ``{key: value}`` in axis order:
    grid product × zip groups × random points."""
    parts: list[list[dict]] = []
    for key, values in sc.grid.items():
        _check_key(key, "sweep.grid")
        if not values:
            raise ConfigError(f"sweep.grid.{key}: the list of values is empty")
        parts.append([{key: v} for v in values])
    for i, group in enumerate(sc.zip):
        where = f"sweep.zip[{i}]"
        if not group:
            raise ConfigError(f"{where}: an empty group")
        lengths = {k: len(v) for k, v in group.items()}
        for k in group:
            _check_key(k, where)
        if len(set(lengths.values())) != 1 or 0 in lengths.values():
            raise ConfigError(f"{where}: the lists must be non-empty and of one length, got "
                              + ", ".join(f"{k}: {n}" for k, n in lengths.items()))
        n = next(iter(lengths.values()))
        parts.append([{k: group[k][j] for k in group} for j in range(n)])
    r = sc.random
    if r.axes and r.samples == 0:
        raise ConfigError("sweep.random.axes given but sweep.random.samples is 0")
    if r.samples:
        if not r.axes:
            raise ConfigError("sweep.random.samples > 0 but sweep.random.axes is empty")
        for k in r.axes:
            _check_key(k, "sweep.random.axes")
        rng = np.random.default_rng(r.seed)
        parts.append([{k: _draw(rng, k, spec) for k, spec in r.axes.items()} for _ in range(r.samples)])
    keys_seen: dict[str, int] = {}
    for i, part in enumerate(parts):
        for k in part[0]:
            if k in keys_seen and keys_seen[k] != i:
                raise ConfigError(f"sweep: key {k!r} is varied by two axes; give it in one")
            keys_seen[k] = i
    if "run.rl_seed" in keys_seen and sc.seeds:
        raise ConfigError("sweep: run.rl_seed is both an axis and set by sweep.seeds; use one")
    points = [{}]
    for part in parts:
        points = [{**p, **q} for p in points for q in part]
    return points


def _value_text(v: Any) -> str:
    """A value as an override's right-hand side (YAML flow), e.g. ``1.0e-05``, ``[1, 2]``, ``null``."""
    return yaml.safe_dump(v, default_flow_style=True, width=10 ** 6).strip().removesuffix("\n...").strip()


def _name_part(key: str, v: Any, keys: list[str]) -> str:
    short = key.split(".")[-1]
    if sum(k.split(".")[-1] == short for k in keys) > 1:
        short = key
    text = f"{v:.4g}" if isinstance(v, float) else str(v)
    return f"{short}={re.sub(r'[^A-Za-z0-9_.+-]', '_', text)}"


@dataclasses.dataclass
class Trial:
    """One run of a sweep."""
    name: str
    params: dict[str, Any]        # the swept values (with run.rl_seed when seeds are given)
    seed: Optional[int]
    overrides: list[str]          # what makes this trial: sweep overrides + params + out_dir
    cfg: Any = None               # its ExperimentConfig (None when invalid)
    error: Optional[str] = None   # why its config is invalid
    group: Optional[str] = None   # its shared steps 1-2 run's id
    program: Optional[int] = None  # vectorised program index

    @property
    def config_name(self) -> str:
        return f"{self.name}.yaml"


@dataclasses.dataclass
class Sweep:
    path: str
    overrides: list[str]
    sc: SweepConfig
    trials: list[Trial]
    bases: dict[str, Any]         # group id -> the shared steps 1-2 run's ExperimentConfig

    @property
    def out_dir(self) -> str:
        return self.sc.out_dir

    def trial_dir(self, t: Trial) -> str:
        return os.path.join(self.out_dir, "trials", t.name)

    def base_dir(self, gid: str) -> str:
        return os.path.join(self.out_dir, "shared", gid)

    def config_path(self, name: str) -> str:
        return os.path.join(self.out_dir, "configs", f"{name}.yaml")


def _trial_names(points: list[dict], seeds: list) -> list[tuple[str, dict, Any]]:
    keys = [k for k in dict.fromkeys(k for p in points for k in p)  # those that vary name a trial
            if len({repr(p.get(k)) for p in points}) > 1]
    out, used = [], {}
    for p in points:
        stem = ",".join(_name_part(k, p[k], keys) for k in keys if k in p) or "base"
        if len(stem) > 120:
            stem = stem[:100] + "-" + hashlib.sha1(stem.encode()).hexdigest()[:8]
        for s in (seeds or [None]):
            name = stem if s is None else f"{stem},seed={s}"
            if name in used:
                used[name] += 1
                name = f"{name}-{used[name]}"
            else:
                used[name] = 0
            out.append((name, p, s))
    return out


def load_sweep(path: str, overrides: list[str] = ()) -> Sweep:
    """Read, expand and check a sweep file. Errors in the file itself raise ConfigError; a trial
    whose config is invalid is kept with its ``error`` set."""
    overrides = list(overrides)
    sf = load_config(SweepFile, path, overrides)
    sc = sf.sweep
    if sc.rank.judge is not None:
        from rlhf_jax.runner.rank import parse_judge

        try:
            parse_judge(sc.rank.judge)
        except ConfigError as e:
            raise ConfigError(f"{path}: sweep.rank.judge: {str(e).split(': ', 1)[1]}") from None
    exp_overrides = [o for o in overrides if not parse_override(o)[0].strip().startswith("sweep.")]
    points = expand(sc)
    swept = {k for p in points for k in p} | ({"run.rl_seed"} if sc.seeds else set())
    for o in exp_overrides:
        key = parse_override(o)[0].strip()
        if key in swept or key == "run.out_dir" or (key.startswith(tuple(f"{a}." for a in ALGORITHM_SECTIONS))
                                                    and "*." + key.split(".", 1)[1] in swept):
            raise ConfigError(f"override {o!r}: the sweep sets {key!r} for each trial"
                              + (" (give sweep.out_dir instead)" if key == "run.out_dir" else
                                 "; change the axis in the sweep file instead"))
    trials = []
    for name, p, seed in _trial_names(points, list(sc.seeds)):
        algorithm = p.get("algorithm", sf.algorithm)
        params = {(f"{algorithm}.{k[2:]}" if k.startswith("*.") else k): v for k, v in p.items()}
        if seed is not None:
            params["run.rl_seed"] = seed
        ov = [o for o in exp_overrides if parse_override(o)[0].strip() not in params]
        ov += [f"{k}={_value_text(v)}" for k, v in params.items()]
        ov.append(f"run.out_dir={os.path.join(sc.out_dir, 'trials', name)}")
        trials.append(Trial(name=name, params=params, seed=seed, overrides=ov))
    if not trials:
        raise ConfigError(f"{path}: the sweep has no trials")
    bases: dict[str, Any] = {}
    for t in trials:
        try:
            cfg = _experiment(load_config(SweepFile, path, t.overrides))
            check_overrides(cfg, [o for o in t.overrides if not o.startswith("run.out_dir=")])
            t.cfg = cfg
        except ConfigError as e:
            t.error = str(e)
    _check_trials(trials)
    if sc.share_steps:
        groups: dict[str, list[Trial]] = {}
        for t in trials:
            if t.cfg is not None and t.cfg.run.reuse_from is None:
                groups.setdefault(_steps12_id(t.cfg), []).append(t)
        for gid, members in groups.items():
            if len(members) < 2:
                continue
            base_dir = os.path.join(sc.out_dir, "shared", gid)
            bases[gid] = dataclasses.replace(
                members[0].cfg, run=dataclasses.replace(members[0].cfg.run, out_dir=base_dir,
                                                        rl_seed=None))
            for t in members:
                t.group = gid
                t.overrides.append(f"run.reuse_from={base_dir}")
                t.cfg = dataclasses.replace(t.cfg, run=dataclasses.replace(t.cfg.run, reuse_from=base_dir))
    return Sweep(path=path, overrides=overrides, sc=sc, trials=trials, bases=bases)


def _check_trials(trials: list[Trial]) -> None:
    """The algorithm-level checks of each valid trial (once per distinct data source)."""
    from rlhf_jax.algorithms.registry import ALGORITHMS
    from rlhf_jax.runner import sources

    counts: dict[str, tuple[int, bool]] = {}
    for t in trials:
        if t.cfg is None:
            continue
        cfg = t.cfg
        key = json.dumps([config_to_dict(cfg.task), config_to_dict(cfg.data)], sort_keys=True)
        try:
            if key not in counts:
                src = sources.Sources(cfg, cfg.run.out_dir)
                counts[key] = (len(src.rl_prompts()), bool(src.pretrain_texts()))
            n, has_texts = counts[key]
            ALGORITHMS.get(cfg.algorithm).check(algorithm_section(cfg), n_prompts=n,
                                                has_pretrain_texts=has_texts)
            if cfg.data.max_prompt_len + cfg.data.max_response_len > cfg.model.max_len:
                raise ValueError(f"data.max_prompt_len + data.max_response_len exceeds model.max_len "
                                 f"{cfg.model.max_len}")
        except ValueError as e:  # ConfigError and DataError are ValueErrors too
            t.cfg, t.error = None, f"algorithm {cfg.algorithm!r}: {e}" if not isinstance(e, ConfigError) else str(e)
        except OSError as e:
            t.cfg, t.error = None, f"{e.filename}: {e.strerror}"


# ----------------------------------------------------------------------------- command


def add_parser(sub) -> None:
    """Register ``sweep`` on the CLI's subparsers."""
    p = sub.add_parser("sweep", help="run a sweep file's trials (resumable); writes results.csv and report.md")
    p.add_argument("sweep_file", help="sweep YAML (an experiment config with a 'sweep' section)")
    p.add_argument("overrides", nargs="*", help="key.path=value for every trial, or sweep.* settings")
    p.add_argument("--workers", type=int, default=None, help="trials at once (default: sweep.workers)")
    p.add_argument("--launcher", choices=("local", "ray", "inline"), default=None,
                   help="local processes, Ray tasks, or one by one in this process (default: "
                        "sweep.launcher)")
    p.add_argument("--report-only", action="store_true",
                   help="rewrite results.csv and report.md from what has run so far; run nothing")
    p.add_argument("--dry-run", action="store_true", help="list the trials and their status; run nothing")
    p.set_defaults(handler=sweep_command)
    v = sub.add_parser("run-vectorized",
                       help="run configs that differ only in seeds / array hyperparameters as one "
                            "vmapped program (what `sweep` with sweep.vectorize does)")
    v.add_argument("configs", nargs="+", help="resolved trial configs (a sweep's out_dir/configs/*.yaml)")
    v.set_defaults(handler=_vectorized_command)


def _vectorized_command(args) -> int:
    from rlhf_jax.runner.vectorized import run_vectorized

    cfgs = [load_config(ExperimentConfig, p, []) for p in args.configs]
    results = run_vectorized(cfgs)
    failed = [c.run.out_dir for c, r in zip(cfgs, results) if r is None]
    for c, r in zip(cfgs, results):
        print(f"{'done' if r is not None else 'FAILED'}: {c.run.out_dir}")
    return EXIT_FAILED if failed else EXIT_OK


def sweep_command(args) -> int:
    from rlhf_jax.runner.sweep_jobs import _record, plan, run_local, trial_status

    sweep = load_sweep(args.sweep_file, args.overrides)
    sc = sweep.sc
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {args.workers}")
    invalid = [t for t in sweep.trials if t.cfg is None]
    for t in invalid:
        _log(f"trial {t.name}: {t.error}")
    if len(invalid) == len(sweep.trials):
        raise ConfigError(f"{args.sweep_file}: every trial's config is invalid; the first: "
                          f"trial {invalid[0].name}: {invalid[0].error}")
    if args.dry_run:
        for t in sweep.trials:
            st = trial_status(sweep, t)
            print(f"{st['status']:12s} {t.name}" + (f"  ({st.get('error')})" if st.get("error") else ""))
        return EXIT_OK
    from rlhf_jax.runner.sweep_report import write_sweep_report

    if not args.report_only:
        os.makedirs(sc.out_dir, exist_ok=True)
        write_yaml(os.path.join(sc.out_dir, "sweep.yaml"), {
            "sweep_file": os.path.abspath(args.sweep_file), "overrides": list(args.overrides),
            "sweep": config_to_dict(sc),
            "trials": [{"name": t.name, "params": t.params, "error": t.error} for t in sweep.trials]})
        for t in invalid:
            _record(sweep, t.name, {"status": "invalid", "exit": 2, "error": t.error})
        jobs = plan(sweep)
        n_done = sum(trial_status(sweep, t)["status"] == "done" for t in sweep.trials)
        _log(f"{len(sweep.trials)} trials: {n_done} done, {len(invalid)} invalid, "
             f"{sum(len(j.trials) for j in jobs)} to run in {len(jobs)} jobs")
        launcher = args.launcher or sc.launcher
        workers = args.workers or sc.workers
        try:
            if launcher == "ray":
                from rlhf_jax.runner.ray_launcher import run_ray

                run_ray(sweep, jobs, workers)
            elif launcher == "inline":
                from rlhf_jax.runner.sweep_jobs import run_inline

                run_inline(sweep, jobs)
            else:
                run_local(sweep, jobs, workers)
        finally:
            write_sweep_report(sweep)  # (also when interrupted or a trial raised)
    if sc.rank.judge is not None or args.report_only:
        if sc.rank.judge is not None:
            from rlhf_jax.runner.sweep_report import rank_sweep

            rank_sweep(sweep)
        write_sweep_report(sweep)
    statuses = [trial_status(sweep, t)["status"] for t in sweep.trials]
    print(f"results: {os.path.join(sc.out_dir, 'results.csv')}\nreport:  {os.path.join(sc.out_dir, 'report.md')}")
    print("  " + ", ".join(f"{s}: {statuses.count(s)}" for s in dict.fromkeys(statuses)))
    return EXIT_OK if all(s == "done" for s in statuses) else EXIT_FAILED
