"""Interrupt a tiny run N times in each stage through the real CLI and count the exit statuses.

    python experiments/interrupt_soak.py [--n 10] [--signal INT|TERM] [--out /tmp/soak]

Each attempt starts ``python -m rlhf_jax run`` on a small config, waits for the stage's first log
line, waits a delay that grows with the attempt (so the signal lands in compiles, steps, logging and
checkpoint saves), sends the signal and records the exit status. After the last stage the run is
completed and must resume (exit 0). Expected: every status 130 (SIGINT) or 143 (SIGTERM), never
139 (a crash) or a hang. The runs share JAX's persistent compilation cache (under ``--out``).
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = [("pretrain", "step 1: pretraining"), ("sft", "step 1b: SFT"),
          ("reward", "step 2: training the reward model"), ("rl", "step 3:")]
OVERRIDES = ["task.corpus_size=300", "task.n_eval_prompts=4", "pretrain.steps=400", "pretrain.batch_size=16",
             "sft.steps=150", "sft.n_demonstrations=64", "sft.batch_size=8", "reward.n_prompts=40",
             "reward.k=2", "reward.epochs=30", "reward.batch_size=8", "ppo.iterations=150",
             "ppo.batch_size=8", "ppo.minibatches=1", "ppo.epochs=1", "eval.samples_per_prompt=1",
             "eval.best_of_n=2", "run.checkpoint_every=2", "run.progress=false"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--signal", choices=("INT", "TERM"), default="INT")
    ap.add_argument("--out", default="/tmp/rlhf_jax_interrupt_soak")
    args = ap.parse_args()
    sig = getattr(signal, f"SIG{args.signal}")
    shutil.rmtree(args.out, ignore_errors=True)
    run_dir = os.path.join(args.out, "run")
    env = dict(os.environ, RLHF_JAX_NO_PROGRESS="1", PYTHONPATH=ROOT,
               JAX_COMPILATION_CACHE_DIR=os.path.join(args.out, "jax_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    cmd = [sys.executable, "-m", "rlhf_jax", "run", os.path.join(ROOT, "experiments", "quickstart.yaml"),
           f"run.out_dir={run_dir}", *OVERRIDES]
    table = collections.OrderedDict()
    for stage, needle in STAGES:
        codes, latency = [], []
        for i in range(args.n):
            p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                 text=True)
            for line in p.stderr:
                if needle in line:
                    break
            time.sleep(0.2 + 0.45 * i)
            t0 = time.time()
            p.send_signal(sig)
            try:
                err = p.communicate(timeout=120)[1]
            except subprocess.TimeoutExpired:
                p.kill()
                err = "HUNG"
                p.returncode = "hung"
            codes.append(p.returncode)
            latency.append(time.time() - t0)
            if "Traceback" in err:
                print(f"{stage} attempt {i}: traceback\n{err[-2000:]}", file=sys.stderr)
        table[stage] = (codes, latency)
        print(f"{stage:9s} exit statuses {codes}  seconds to exit: median "
              f"{sorted(latency)[len(latency) // 2]:.1f}, max {max(latency):.1f}", flush=True)
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    resumed = "resuming the run" in done.stderr
    print(f"final rerun: exit {done.returncode}, resumed: {resumed}")
    want = 130 if sig == signal.SIGINT else 143
    ok = all(c == want for codes, _ in table.values() for c in codes) and done.returncode == 0 and resumed
    print("all clean" if ok else "NOT all clean")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
