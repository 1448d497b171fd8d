"""Vectorised trials: runs that differ only in seeds and array-valued hyperparameters as one
jitted, vmapped step 3 (purejaxrl style), each run still writing its own run directory.

The runs must share steps 1-2 (``run.reuse_from`` one run, as a sweep arranges) and agree on every
key but ``run.out_dir``, ``run.rl_seed`` and their algorithm's vectorisable keys
(``Algorithm.vector_keys``: learning rates, KL β/target/horizon, clip ranges, entropy coefficient,
temperature, reward shaping, GAE γ/λ, ...). Their states are stacked along a leading axis, each
iteration is ``jax.vmap(iteration)`` over (state, batch, hyperparameters) with the frozen reference
and reward model shared, and each run's slice goes through the same per-iteration bookkeeping as a
single run (``pipeline.RLStage``: guard, metrics, evaluation, checkpoints), then its own final
evaluation, summary and report. A run that goes non-finite stops alone (its ``stopped.json`` and
an ``error: [run_dir] ...`` line); the others go on.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax import interrupts
from rlhf_jax.algorithms.registry import ALGORITHMS
from rlhf_jax.algorithms.step import TrainingError
from rlhf_jax.metrics.aggregate import to_python
from rlhf_jax.runner.config_loader import ConfigError, config_to_dict
from rlhf_jax.runner.report import _flatten as _flat
from rlhf_jax.runner.run_dir import STOPPED_FILE, write_json
from rlhf_jax.sharding.jit import jit_step


def _log(msg: str) -> None:
    print(f"[rlhf_jax] {msg}", file=sys.stderr, flush=True)


def program_key(cfg) -> tuple[str, list[str]]:
    """What must agree for runs to share one vmapped program, as a string, and the keys left out
    (the vectorisable ones)."""
    algo = ALGORITHMS.get(cfg.algorithm)
    free = {f"{cfg.algorithm}.{k}" for k in algo.vector_keys()} | {"run.out_dir", "run.rl_seed",
                                                                    "run.progress"}
    flat = _flat(config_to_dict(cfg))
    kept = {k: v for k, v in flat.items() if k not in free}
    ptx = flat.get(f"{cfg.algorithm}.ptx_coef")
    kept["ptx_on"] = bool(ptx) and ptx > 0  # PPO-ptx on or off changes the program
    return json.dumps(kept, sort_keys=True, default=str), sorted(free)


def programs(trials: list, log: Callable[[str], None] = _log) -> list[list]:
    """Partition a sweep's trials into vmapped programs (a list of trials each); says which keys
    forced separate programs."""
    groups: dict[str, list] = {}
    online = [t.name for t in trials if t.cfg.online.rounds > 1]
    for t in trials:  # (an iterated online run retrains its reward model between rounds: alone)
        groups.setdefault(program_key(t.cfg)[0] if t.name not in online else json.dumps({"online.rounds": t.name}), []).append(t)
    if online:
        log(f"vectorize: {len(online)} trial(s) with online.rounds > 1 run on their own")
    out = list(groups.values())
    if len(out) > 1:
        ref = _flat(json.loads(next(iter(groups))))
        differ = set()
        for key in list(groups)[1:]:
            other = _flat(json.loads(key))
            differ |= {k for k in set(ref) | set(other) if ref.get(k) != other.get(k)}
        differ -= {"run.reuse_from"}
        log(f"vectorize: {len(trials)} trials in {len(out)} programs; these keys change shapes or code "
            f"paths, so their values run as separate programs: {', '.join(sorted(differ)) or 'steps 1-2'}")
    for i, g in enumerate(out):
        for t in g:
            t.program = i
    return out


def _stack(trees: list) -> Any:
    return jax.tree_util.tree_map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *trees)


def _slice(tree, j: int) -> Any:
    return jax.tree_util.tree_map(lambda x: x[j], tree)


def run_vectorized(cfgs: list) -> list[dict | None]:
    """Run ``cfgs`` (ExperimentConfigs) as one vmapped step 3; returns each run's summary (None for
    a run that failed: its reason is logged as ``error: [run_dir] ...``). Runs already finished
    are skipped; interrupted ones resume from their checkpoints (runs resumed at different
    iterations go as separate programs)."""
    from rlhf_jax.runner.pipeline import Pipeline
    from rlhf_jax.runner.run_reuse import _steps12_id

    if len(cfgs) > 1 and any(c.online.rounds > 1 for c in cfgs):
        raise ConfigError("run-vectorized: online.rounds > 1 (iterated online RLHF) cannot be "
                          "vectorised: each run retrains its own reward model between rounds")
    keys = {program_key(c)[0] for c in cfgs}
    if len(keys) > 1:
        raise ConfigError("run-vectorized: the configs differ in keys that cannot be vectorised "
                          "(only run.out_dir, run.rl_seed and the algorithm's array hyperparameters may)")
    if len(cfgs) > 1 and (cfgs[0].run.reuse_from is None or len({_steps12_id(c) for c in cfgs}) > 1):
        raise ConfigError("run-vectorized: the runs must share steps 1-2: give them one run.reuse_from "
                          "(`python -m rlhf_jax run CONFIG --stop-after reward` builds one)")
    t_start = time.time()
    results: list[dict | None] = [None] * len(cfgs)
    pipes, todo = [], []
    for i, cfg in enumerate(cfgs):
        p = Pipeline(cfg)
        finished = p.validate()
        if finished is not None:
            _log(f"{cfg.run.out_dir} holds a finished run: nothing to do")
            results[i] = finished
            continue
        pipes.append(p)
        todo.append(i)
    opened = []
    try:
        stages, prepared = [], []
        shared = None
        for p in pipes:
            p.setup()
            opened.append(p)
            if shared is None:
                shared = p.prepare()  # steps 1-2 of the one run they all reuse: read once
                first = p
            else:  # the same steps 1-2 (checked above): its parameters and files, not a re-read
                for name in ("rm_cfg", "rm_params", "rm_norm", "pretrain_data", "comparisons"):
                    setattr(p, name, getattr(first, name, None))
            sft, rm, rm_info, initial = shared
            stages.append(p.rl_stage(sft, rm, rm_info))
            prepared.append((rm_info, initial))
        by_start: dict[int, list[int]] = {}
        for j, st in enumerate(stages):
            by_start.setdefault(st.start, []).append(j)
        for start, members in sorted(by_start.items()):
            states = _run_program([stages[j] for j in members], start)
            for j, state in zip(members, states):
                if state is None:
                    continue
                p = pipes[j]
                rm_info, initial = prepared[j]
                try:
                    results[todo[j]] = p.finish(state, stages[j].ref_params, rm_info, initial, t_start)
                except TrainingError as e:
                    _stopped(p, e)
    finally:
        for p in opened:
            p.logger.close()
            p.ckpt.close()
    return results


def _stopped(p, e: TrainingError) -> None:
    write_json(os.path.join(p.run_dir, STOPPED_FILE), {"stage": e.stage, "step": e.step, "metric": e.metric})
    print(f"error: [{p.run_dir}] {' '.join(str(e).split())}", file=sys.stderr, flush=True)


def _run_program(stages: list, start: int) -> list:
    """Iterations ``start..`` of ``stages`` (one vmapped program); each run's final state or None."""
    s0 = stages[0]
    n = len(stages)
    raw = s0.algo.make_iteration(s0.setup, s0.sec)
    step = raw if n == 1 else jit_step(jax.vmap(raw, in_axes=(0, None, 0, 0)))  # state donated
    state = s0.state if n == 1 else _stack([s.state for s in stages])
    hp = s0.hp if n == 1 else _stack([s.hp for s in stages])
    alive = [True] * n
    _log(f"vectorised step 3: {n} runs, iterations {start + 1}..{s0.sec.iterations}")
    for it in range(start, s0.sec.iterations):
        interrupts.check()
        t0 = time.time()
        batches = [s.batch(it) for s in stages]
        batch = batches[0] if n == 1 else {k: np.stack([b[k] for b in batches]) for k in batches[0]}
        state, metrics = step(state, s0.frozen, batch, hp)
        metrics = to_python(metrics) if n == 1 else jax.device_get(metrics)  # one transfer
        seconds = time.time() - t0
        for j, st in enumerate(stages):
            if not alive[j]:
                continue
            mj = metrics if n == 1 else to_python({k: v[j] for k, v in metrics.items()})
            get = (lambda: state) if n == 1 else (lambda j=j: _slice(state, j))
            try:
                st.after_iteration(it, get, mj, seconds)
            except TrainingError as e:
                alive[j] = False
                st.bar.close()
                _stopped(st.pipe, e)
    out = []
    for j, st in enumerate(stages):
        if alive[j]:
            st.close()
            out.append(state if n == 1 else _slice(state, j))
        else:
            out.append(None)
    return out
