"""Benchmark: N seeds of the quickstart's RL stage as one vectorised program against N sequential
runs of the same stage, each its own process (as a user would run them), from one shared steps 1-2.

    python experiments/bench_sweep.py [--seeds 8] [--base DIR] [--work DIR] [key=value ...]

Prints each mode's wall time (process start to exit, everything a user waits for), the ratio, the
steady-state RL throughput of both (responses per second, from the runs' median iteration times),
and how far the two modes' final metrics are apart (they must agree within float tolerance).
Extra ``key=value`` overrides apply to every run (e.g. ``ppo.iterations=20`` for a shorter check).
The CLI keeps compiled programs on disk (``cache_root()/xla``): each mode starts from an empty
cache of its own, so the first sequential run compiles and the next ones load what it compiled,
as they would for a user; ``--no-cache`` runs both modes without one.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
QUICKSTART = os.path.join(ROOT, "experiments", "quickstart.yaml")


def _cli(args: list[str], log: str, cache: str | None = None) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
    env.update(RLHF_JAX_NO_PROGRESS="1", PYTHONPATH=ROOT)
    if cache is None:
        env["RLHF_JAX_COMPILE_CACHE"] = "0"
    else:
        env["JAX_COMPILATION_CACHE_DIR"] = cache
    t0 = time.perf_counter()
    with open(log, "a") as f:
        code = subprocess.call([sys.executable, "-m", "rlhf_jax"] + args, stdout=f, stderr=subprocess.STDOUT,
                               env=env, cwd=ROOT)
    if code != 0:
        sys.exit(f"{' '.join(args)} failed (exit {code}); see {log}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--base", help="an existing steps 1-2 run of the quickstart (else built here)")
    ap.add_argument("--work", help="directory for the runs (default: a temporary one)")
    ap.add_argument("--no-cache", action="store_true", help="no compilation cache in either mode")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    work = a.work or tempfile.mkdtemp(prefix="bench_sweep_")
    os.makedirs(work, exist_ok=True)
    log = os.path.join(work, "bench.log")
    base = a.base or os.path.join(work, "base")
    if not os.path.exists(os.path.join(base, "eval_initial.json")):
        t = _cli(["run", QUICKSTART, f"run.out_dir={base}", *a.overrides, "--stop-after", "reward"], log)
        print(f"shared steps 1-2 built in {t:.0f} s ({base})")

    from rlhf_jax.runner.config_loader import load_config
    from rlhf_jax.runner.run_dir import write_yaml
    from rlhf_jax.runner.schema import ExperimentConfig, resolved_config

    def trial(mode: str, seed: int) -> tuple[str, str]:
        out = os.path.join(work, mode, f"seed{seed}")
        cfg = load_config(ExperimentConfig, QUICKSTART, [*a.overrides, f"run.out_dir={out}",
                                                         f"run.reuse_from={base}", f"run.rl_seed={seed}"])
        path = os.path.join(work, f"{mode}_seed{seed}.yaml")
        write_yaml(path, resolved_config(cfg))
        return path, out

    seeds = range(a.seeds)
    seq = [trial("sequential", s) for s in seeds]
    vec = [trial("vectorized", s) for s in seeds]

    def cache(mode):
        if a.no_cache:
            return None
        path = os.path.join(work, f"xla_cache_{mode}")
        shutil.rmtree(path, ignore_errors=True)  # cold
        return path

    t_seq = []
    seq_cache = cache("sequential")
    for path, _ in seq:
        t_seq.append(_cli(["run", path], log, seq_cache))
        print(f"  sequential run {len(t_seq)}/{a.seeds}: {t_seq[-1]:.1f} s", flush=True)
    t_vec = _cli(["run-vectorized"] + [p for p, _ in vec], log, cache("vectorized"))
    summaries = {m: [json.load(open(os.path.join(out, "summary.json"))) for _, out in runs]
                 for m, runs in (("sequential", seq), ("vectorized", vec))}
    s_seq, s_vec = summaries["sequential"], summaries["vectorized"]
    B = load_config(ExperimentConfig, QUICKSTART, a.overrides).ppo.batch_size
    it_seq = sum(s["rl_iteration_time_s"] for s in s_seq) / len(s_seq)
    it_vec = s_vec[0]["rl_iteration_time_s"]

    def gap(key):
        return max(abs(x[key] - y[key]) for x, y in zip(s_seq, s_vec))

    print(f"\n{a.seeds} seeds of the quickstart's RL stage ({s_seq[0].get('algorithm', 'ppo')}, "
          f"{B} responses per iteration; {'no' if a.no_cache else 'a cold'} compilation cache)")
    print(f"  sequential, {a.seeds} processes: {sum(t_seq):7.1f} s  ({sum(t_seq) / a.seeds:.1f} s per run)")
    print(f"  vectorised, 1 process:        {t_vec:7.1f} s")
    print(f"  ratio (sequential / vectorised): {sum(t_seq) / t_vec:.2f}x")
    print(f"  steady-state RL throughput: sequential {B / it_seq:.0f} responses/s, vectorised "
          f"{a.seeds * B / it_vec:.0f} responses/s ({a.seeds * it_seq / it_vec:.2f}x)")
    print(f"  final metrics, largest gap between the modes: gold {gap('gold_reward_final'):.2e}, "
          f"KL {gap('kl_to_reference_final'):.2e}")
    print("  gold reward final per seed: "
          + " ".join(f"{s['gold_reward_final']:.3f}" for s in s_vec))
    print(f"(runs in {work})")


if __name__ == "__main__":
    main()
