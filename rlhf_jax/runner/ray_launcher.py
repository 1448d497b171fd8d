"""``sweep.launcher: ray`` (or ``--launcher ray``): a sweep's jobs as Ray tasks.

Each job (a shared steps 1-2 run, a trial, a vectorised program) is one Ray task that runs the same
``python -m rlhf_jax ...`` command a local worker would, asking Ray for ``sweep.ray.num_cpus`` /
``num_gpus``; a trial's task takes its shared steps 1-2 task's result as an argument, so Ray itself
starts it only after that one has finished. Ray's scheduler places the tasks: on a cluster its
resources decide how many run at once; a local instance (no ``sweep.ray.address`` and no
``RAY_ADDRESS``) is started on 127.0.0.1 with ``workers × num_cpus`` CPUs. The sweep directory
must be on a filesystem every node sees. Ray is optional: ``pip install -r requirements-ray.txt``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from rlhf_jax.runner.config_loader import ConfigError


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("--launcher ray needs Ray, which is not installed: "
                          "pip install -r requirements-ray.txt") from None
    return ray


def _run_job(args: list[str], log_path: str, cwd: str, env: dict, dependency=None) -> int:
    """The body of a Ray task: the job's command, its output appended to its log."""
    if dependency is not None and dependency != 0:
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(f"error: its shared steps 1-2 run failed (exit {dependency})\n")
        return -1
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as log:
        argv = [sys.executable, "-m", "rlhf_jax"] + args
        log.write(f"$ {' '.join(argv)}\n")
        log.flush()
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, env=env)
        try:
            return proc.wait()
        except BaseException:  # cancelled: let the run checkpoint and stop
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise


def run_ray(sweep, jobs: list, workers: int) -> dict[str, int]:
    """Run ``jobs`` as Ray tasks; records each trial's outcome as it completes."""
    from rlhf_jax import interrupts
    from rlhf_jax.runner.sweep_jobs import _finish_job, _last_error, _locks, _log, _record, child_env

    ray = _import_ray()
    rc = sweep.sc.ray
    address = rc.address or os.environ.get("RAY_ADDRESS")
    kwargs = dict(include_dashboard=False, log_to_driver=False, ignore_reinit_error=True,
                  configure_logging=False)
    if address:
        ray.init(address=address, **kwargs)
        _log(f"ray: connected to {address}")
    else:
        ray.init(num_cpus=max(1, int(round(workers * max(rc.num_cpus, 1.0)))),
                 num_gpus=None if rc.num_gpus == 0 else int(rc.num_gpus * workers),
                 _node_ip_address="127.0.0.1", **kwargs)
        _log(f"ray: started a local instance for {workers} trial(s) at a time")
    task = ray.remote(num_cpus=rc.num_cpus, num_gpus=rc.num_gpus, max_retries=0)(_run_job)
    env, cwd = child_env(), os.getcwd()
    refs: dict = {}
    by_name: dict = {}
    finished: dict[str, int] = {}
    held = {}
    try:
        for job in jobs:  # bases come first in the plan, so their refs exist for their trials
            locks = _locks(sweep, job)
            if locks is None:
                _log(f"{job.name}: another sweep process is running it; skipped")
                continue
            dep = by_name.get(job.after)
            ref = task.remote(job.args, os.path.abspath(job.log), cwd, env, dep)
            refs[ref] = (job, time.time())
            by_name[job.name] = ref
            held[job.name] = locks
        pending = list(refs)
        while pending:
            interrupts.check()
            done, pending = ray.wait(pending, num_returns=1, timeout=0.5)
            for ref in done:
                job, t0 = refs[ref]
                try:
                    code = ray.get(ref)
                except ray.exceptions.RayError as e:
                    code = -1
                    with open(job.log, "a", encoding="utf-8") as log:
                        log.write(f"error: the Ray task failed: {type(e).__name__}\n")
                seconds = time.time() - t0
                if job.trials:
                    ok = _finish_job(sweep, job, code, seconds)
                else:
                    ok = code == 0
                finished[job.name] = code
                for lk in held.pop(job.name, []):
                    lk.release()
                _log(f"{'done' if ok else 'FAILED'} {job.name} ({seconds:.0f} s)"
                     + ("" if ok else f": {_last_error(job.log)}"))
    except KeyboardInterrupt:
        for ref in refs:
            ray.cancel(ref)
        for ref, (job, t0) in refs.items():
            if job.name not in finished and job.trials:
                for t in job.trials:
                    _record(sweep, t.name, {"status": "interrupted", "exit": 130,
                                            "error": "the sweep was interrupted"})
        raise
    finally:
        for locks in held.values():
            for lk in locks:
                lk.release()
        ray.shutdown()
    return finished
