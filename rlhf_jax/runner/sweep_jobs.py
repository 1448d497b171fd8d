"""Running a sweep's trials: their status on disk, the jobs still to do (shared steps 1-2 runs,
trials, vectorised programs), per-trial locks, and the local launcher (``workers`` processes at a
time). ``runner/sweep.py`` reads and checks the sweep; ``runner/ray_launcher.py`` is the other
launcher."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from typing import Any, Optional

from rlhf_jax import interrupts
from rlhf_jax.runner.run_dir import read_json, write_json, write_yaml
from rlhf_jax.runner.schema import resolved_config
from rlhf_jax.runner.sweep import Sweep, Trial, _log


# ----------------------------------------------------------------------------- status of trials


STATUS_DIR = "status"


def trial_status(sweep: Sweep, t: Trial) -> dict:
    """``{'status': 'done' | 'failed' | 'invalid' | 'interrupted' | 'pending', ...}``."""
    if t.cfg is None:
        return {"status": "invalid", "error": t.error}
    if os.path.exists(os.path.join(sweep.trial_dir(t), "summary.json")):
        return {"status": "done"}
    rec = read_json(os.path.join(sweep.out_dir, STATUS_DIR, f"{t.name}.json"), "delete it") or {}
    return rec if rec.get("status") in ("failed", "interrupted") else {"status": "pending"}


def _record(sweep: Sweep, name: str, rec: dict) -> None:
    os.makedirs(os.path.join(sweep.out_dir, STATUS_DIR), exist_ok=True)
    write_json(os.path.join(sweep.out_dir, STATUS_DIR, f"{name}.json"), rec)


def _last_error(log_path: str, tag: str | None = None) -> str:
    """The last ``error:`` line of a log (one naming ``tag``, when given and present)."""
    try:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            lines = [ln.strip() for ln in f.read().splitlines() if ln.strip()]
    except OSError:
        return "no log"
    errors = [ln for ln in lines if ln.startswith("error:")]
    tagged = [ln for ln in errors if tag and f"[{tag}]" in ln]
    return (tagged or errors or lines or ["no output"])[-1]


# ----------------------------------------------------------------------------- jobs


@dataclasses.dataclass
class Job:
    """One process to run: a shared steps 1-2 run, a trial, or a vectorised program of trials."""
    name: str                     # for logs and status
    args: list[str]               # the command line after ``python -m rlhf_jax``
    trials: list[Trial]           # the trials it completes (empty for a shared base)
    after: Optional[str] = None   # the job that must succeed first (its name)
    log: str = ""

    @property
    def argv(self) -> list[str]:
        return [sys.executable, "-m", "rlhf_jax"] + self.args


def child_env() -> dict[str, str]:
    """The environment of a trial's process: this one, no progress bars, rlhf_jax importable."""
    import rlhf_jax

    root = os.path.dirname(os.path.dirname(os.path.abspath(rlhf_jax.__file__)))
    path = os.environ.get("PYTHONPATH", "")
    return dict(os.environ, RLHF_JAX_NO_PROGRESS="1",
                PYTHONPATH=root + (os.pathsep + path if path else ""))


def plan(sweep: Sweep) -> list[Job]:
    """Write each config the sweep runs (``out_dir/configs``) and list the jobs still to do."""
    todo = [t for t in sweep.trials if trial_status(sweep, t)["status"] not in ("done", "invalid")]
    jobs: list[Job] = []
    logs = os.path.join(sweep.out_dir, "logs")
    os.makedirs(os.path.join(sweep.out_dir, "configs"), exist_ok=True)
    needed = {t.group for t in todo if t.group is not None}
    for gid in sorted(needed):
        base = sweep.bases[gid]
        name = f"shared-{gid}"
        path = sweep.config_path(name)
        write_yaml(path, resolved_config(base))
        if read_json(os.path.join(sweep.base_dir(gid), "eval_initial.json"), "delete it") is None:
            jobs.append(Job(name, ["run", path, "--stop-after", "reward"], [],
                            log=os.path.join(logs, f"{name}.log")))
    done_bases = {j.name for j in jobs}
    for t in todo:
        write_yaml(sweep.config_path(t.name), resolved_config(t.cfg))
    if sweep.sc.vectorize:
        from rlhf_jax.runner.vectorized import programs

        groups = programs([t for t in todo], _log)
    else:
        groups = [[t] for t in todo]
    for i, members in enumerate(groups):
        after = f"shared-{members[0].group}" if members[0].group is not None else None
        after = after if after in done_bases else None
        if len(members) == 1:
            t = members[0]
            jobs.append(Job(t.name, ["run", sweep.config_path(t.name)], [t], after,
                            log=os.path.join(logs, f"{t.name}.log")))
        else:
            name = f"vectorized-{i}-{members[0].name}"
            jobs.append(Job(name, ["run-vectorized"] + [sweep.config_path(t.name) for t in members],
                            members, after, log=os.path.join(logs, f"vectorized-{i}.log")))
    return jobs


def _finish_job(sweep: Sweep, job: Job, code: int, seconds: float) -> bool:
    """Record the outcome of a finished job's trials; True when it succeeded."""
    err = _last_error(job.log)
    ok = code == 0
    for t in job.trials:
        if os.path.exists(os.path.join(sweep.trial_dir(t), "summary.json")):
            _record(sweep, t.name, {"status": "done", "exit": 0, "wall_s": seconds})
            continue
        ok = False
        status = "interrupted" if code in (130, 143, -2, -15) else "failed"
        own = _last_error(job.log, tag=sweep.trial_dir(t)) if len(job.trials) > 1 else err
        _record(sweep, t.name, {"status": status, "exit": code, "error": own, "wall_s": seconds})
    return ok


def _fail_dependents(sweep: Sweep, jobs: list[Job], failed: str, why: str) -> list[Job]:
    keep = []
    for j in jobs:
        if j.after == failed:
            for t in j.trials:
                _record(sweep, t.name, {"status": "failed", "exit": None,
                                        "error": f"its shared steps 1-2 ({failed}) failed: {why}"})
        else:
            keep.append(j)
    return keep


class TrialLock:
    """An exclusive lock on a trial for the life of this sweep process (released by the OS on
    exit, kill -9 included), so two sweep processes never run the same trial."""

    def __init__(self, path: str):
        import fcntl

        os.makedirs(os.path.dirname(path), exist_ok=True)
        self.f = open(path, "a+")
        try:
            fcntl.flock(self.f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.held = True
        except OSError:
            self.held = False
            self.f.close()

    def release(self) -> None:
        if self.held:
            import fcntl

            fcntl.flock(self.f, fcntl.LOCK_UN)
            self.f.close()
            self.held = False


def _locks(sweep: Sweep, job: Job) -> list[TrialLock] | None:
    names = [job.name] if not job.trials else [t.name for t in job.trials]
    locks = [TrialLock(os.path.join(sweep.out_dir, "locks", f"{n}.lock")) for n in names]
    if all(lk.held for lk in locks):
        return locks
    for lk in locks:
        lk.release()
    return None


def _die_with_parent() -> None:
    """In a trial's process before exec (Linux): SIGTERM when the sweep process dies."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # elsewhere a killed sweep's trials finish on their own (their locks still hold)


def run_local(sweep: Sweep, jobs: list[Job], workers: int) -> dict[str, int]:
    """Run the jobs as local processes, ``workers`` at a time, dependencies first."""
    from rlhf_jax.metrics.logger import progress

    pending = list(jobs)
    running: dict[str, tuple[subprocess.Popen, Job, float, list, Any]] = {}
    finished: dict[str, int] = {}
    env = child_env()
    bar = progress(sum(max(1, len(j.trials)) for j in jobs), "sweep")
    try:
        while pending or running:
            interrupts.check()
            for job in list(pending):
                if len(running) >= workers:
                    break
                if job.after is not None and job.after not in finished:
                    continue  # its shared steps 1-2 are still to come (a failed one drops it)
                locks = _locks(sweep, job)
                pending.remove(job)
                if locks is None:
                    _log(f"{job.name}: another sweep process is running it; skipped")
                    if not job.trials:  # and its trials wait for that process too
                        waiting = [j for j in pending if j.after == job.name]
                        pending = [j for j in pending if j.after != job.name]
                        if waiting:
                            _log(f"{len(waiting)} job(s) wait for {job.name}: rerun when it is done")
                    continue
                os.makedirs(os.path.dirname(job.log), exist_ok=True)
                log = open(job.log, "a", encoding="utf-8")
                log.write(f"$ {' '.join(job.argv)}\n")
                log.flush()
                _log(f"start {job.name}")
                # The trial's process holds its locks too (an inherited descriptor), so a sweep
                # killed with -9 leaves no trial a rerun could start twice; and it is told to stop
                # (SIGTERM: checkpoint and exit) when the sweep process dies.
                proc = subprocess.Popen(job.argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True, preexec_fn=_die_with_parent,
                                        pass_fds=[lk.f.fileno() for lk in locks])
                running[job.name] = (proc, job, time.time(), locks, log)
            for name, (proc, job, t0, locks, log) in list(running.items()):
                code = proc.poll()
                if code is None:
                    continue
                log.close()
                del running[name]
                seconds = time.time() - t0
                ok = _finish_job(sweep, job, code, seconds)
                for lk in locks:
                    lk.release()
                finished[name] = code
                _log(f"{'done' if ok else 'FAILED'} {name} ({seconds:.0f} s)"
                     + ("" if ok else f": {_last_error(job.log)}"))
                if not job.trials:  # a shared steps 1-2 run
                    if code != 0:
                        pending = _fail_dependents(sweep, pending, name, _last_error(job.log))
                        del finished[name]
                else:
                    bar.update(len(job.trials))
            time.sleep(0.2)
    except KeyboardInterrupt:
        for name, (proc, job, t0, locks, log) in running.items():
            proc.send_signal(2)  # SIGINT: the run checkpoints and exits 130
        for name, (proc, job, t0, locks, log) in running.items():
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
            _finish_job(sweep, job, 130, time.time() - t0)
            for lk in locks:
                lk.release()
        raise
    finally:
        bar.close()
    return finished


def run_inline(sweep: Sweep, jobs: list[Job]) -> dict[str, int]:
    """Run the jobs one after another in this process (``sweep.launcher: inline``): each is the
    CLI command a local worker would run, its output in the job's log, its outcome recorded as
    theirs. An interrupt stops the sweep after recording the running job as interrupted."""
    import contextlib

    from rlhf_jax.metrics.logger import progress
    from rlhf_jax.runner.cli import main

    finished: dict[str, int] = {}
    failed_bases: dict[str, str] = {}
    bar = progress(sum(max(1, len(j.trials)) for j in jobs), "sweep")
    old = os.environ.get("RLHF_JAX_NO_PROGRESS")
    os.environ["RLHF_JAX_NO_PROGRESS"] = "1"
    try:
        for job in jobs:
            interrupts.check()
            if job.after is not None and job.after in failed_bases:
                _fail_dependents(sweep, [job], job.after, failed_bases[job.after])
                continue
            locks = _locks(sweep, job)
            if locks is None:
                _log(f"{job.name}: another sweep process is running it; skipped")
                if not job.trials:
                    failed_bases[job.name] = "another sweep process is running it"
                continue
            os.makedirs(os.path.dirname(job.log), exist_ok=True)
            _log(f"start {job.name}")
            t0 = time.time()
            code = 130
            try:
                with open(job.log, "a", encoding="utf-8") as log, contextlib.redirect_stderr(log), \
                        contextlib.redirect_stdout(log):
                    log.write(f"$ python -m rlhf_jax {' '.join(job.args)}  (inline)\n")
                    log.flush()
                    try:
                        code = main(job.args)
                    except Exception as e:  # noqa: BLE001 -- a crashing trial must not stop the sweep
                        import traceback

                        traceback.print_exc()
                        print(f"error: {type(e).__name__}: {e}", file=log)
                        code = 1
            finally:
                ok = _finish_job(sweep, job, code, time.time() - t0)
                for lk in locks:
                    lk.release()
            finished[job.name] = code
            _log(f"{'done' if ok else 'FAILED'} {job.name} ({time.time() - t0:.0f} s)"
                 + ("" if ok else f": {_last_error(job.log)}"))
            if code in (130, 143):
                raise KeyboardInterrupt
            if not job.trials and code != 0:
                failed_bases[job.name] = _last_error(job.log)
            else:
                bar.update(max(1, len(job.trials)))
    finally:
        bar.close()
        if old is None:
            os.environ.pop("RLHF_JAX_NO_PROGRESS", None)
        else:
            os.environ["RLHF_JAX_NO_PROGRESS"] = old
    return finished
