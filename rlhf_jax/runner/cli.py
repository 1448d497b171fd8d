"""Command line: ``python -m rlhf_jax COMMAND ...``.

* ``run CONFIG.yaml [key.path=value ...]`` — one experiment (resumed when its run dir has checkpoints);
* ``sweep SWEEP.yaml [key.path=value ...] [--workers N] [--launcher local|ray|inline]`` — many runs;
* ``sample RUN_DIR``, ``export RUN_DIR OUT_DIR``, ``eval RUN_DIR`` — on a finished (or running) run;
* ``rank RUN_DIR... [--judge gold|rm:RUN_DIR]`` — Elo ratings of several runs' policies.

``algorithm=NAME`` picks step 3's algorithm from the registry (default ``ppo``); its options live in
the section of the same name (``algorithm=grpo grpo.group_size=8``).

Exit status: 0 done (rerunning a finished run changes nothing and prints its summary); 2 bad input
(config, data, checkpoint, run directory, or a file that cannot be read or written), reported in
one line on stderr naming the file, line, key or value at fault, before any compute; 3 training
went non-finite or degenerate (the line names the stage, step and metric; fix the config and
rerun to resume from the newest good checkpoint); 130 / 143 interrupted by SIGINT / SIGTERM
(rerun the same command to resume).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import signal
import sys

from rlhf_jax import interrupts

EXIT_USER_ERROR, EXIT_TRAINING, EXIT_SIGINT, EXIT_SIGTERM = 2, 3, 130, 143


def _user_errors():
    from rlhf_jax.checkpoint.hf import HFCheckpointError
    from rlhf_jax.data.errors import DataError
    from rlhf_jax.runner.config_loader import ConfigError
    from rlhf_jax.runner.run_dir import RunDirError

    return (ConfigError, DataError, HFCheckpointError, RunDirError, OSError, UnicodeDecodeError)


def _message(e: BaseException) -> str:
    if isinstance(e, UnicodeDecodeError):
        return f"cannot decode text as {e.encoding} (byte 0x{e.object[e.start]:02x} at offset {e.start})"
    if isinstance(e, OSError) and e.strerror and not str(e).startswith(e.strerror):
        where = " -> ".join(str(p) for p in (e.filename, e.filename2) if p is not None)
        return f"{where}: {e.strerror}" if where else e.strerror
    msg = str(e) if not isinstance(e, KeyError) else e.args[0]
    return " ".join(str(msg).split("\n"))  # one line, whatever a library put in the message


def _settle() -> None:
    """Let work already queued on the devices finish (so no kernel thread outlives the exit)."""
    try:
        import jax

        for a in jax.live_arrays():
            a.block_until_ready()
    except BaseException:  # noqa: BLE001 -- best effort on the way out
        pass


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m rlhf_jax", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run an experiment config (resumes if its run dir has checkpoints)")
    run.add_argument("config", help="experiment YAML file")
    run.add_argument("overrides", nargs="*", help="key.path=value overrides, e.g. ppo.lr=1e-4")
    run.add_argument("--stop-after", choices=("reward",), default=None,
                     help="stop after step 2 and the initial evaluation: a run other runs can start "
                          "from with run.reuse_from (a sweep builds its shared steps 1-2 this way)")
    run.set_defaults(handler=_run_command)
    from rlhf_jax.runner import commands, overopt, rank, sweep

    sweep.add_parser(sub)
    commands.add_parsers(sub)
    rank.add_parser(sub)
    overopt.add_parser(sub)
    return parser


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    # The run checks its own inputs and says what is wrong in one line; library advice such as
    # transformers' config warnings would only add lines to read (set the variable to see it).
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    # Orbax logs a damaged checkpoint at ERROR level before raising; the run reports it itself.
    logging.getLogger("absl").setLevel(logging.CRITICAL)

    _compile_cache()
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    interrupts.install()
    try:
        return _guarded(args.handler, args)
    except KeyboardInterrupt as e:  # at any point, including while the imports run
        _settle()
        print("interrupted: rerun the same command to resume from the last checkpoint", file=sys.stderr)
        return EXIT_SIGTERM if isinstance(e, interrupts.Terminated) else EXIT_SIGINT
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


COMPILE_CACHE_BYTES = 8 << 30


def _compile_cache() -> None:
    """Keep XLA's compiled programs on disk (JAX's persistent compilation cache) under
    ``cache_root()/xla``, so a rerun, a resumed run, a sweep's next trial or a command on a run
    directory loads what an earlier process compiled instead of compiling it again (only programs
    that took a second or more; least recently used ones go past 8 GiB). ``JAX_COMPILATION_CACHE_DIR``
    chooses another place; ``RLHF_JAX_COMPILE_CACHE=0`` turns it off."""
    import jax

    if os.environ.get("RLHF_JAX_COMPILE_CACHE", "1") == "0" or jax.config.jax_compilation_cache_dir:
        return
    from rlhf_jax.models.cpu_kernels import cache_root

    path = cache_root() / "xla"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return  # nowhere to keep it: compile as without the cache
    jax.config.update("jax_compilation_cache_dir", str(path))
    if importlib.util.find_spec("filelock") is not None:  # what JAX evicts with
        jax.config.update("jax_compilation_cache_max_size", COMPILE_CACHE_BYTES)


def _guarded(handler, args) -> int:
    """Run a command; bad input ends as one line and exit 2, a training failure as one line and 3."""
    errors = _user_errors()
    from rlhf_jax.algorithms.step import TrainingError

    try:
        return handler(args)
    except errors as e:
        print(f"error: {_message(e)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except TrainingError as e:
        _settle()
        print(f"error: {_message(e)}", file=sys.stderr)
        return EXIT_TRAINING


def _run_command(args) -> int:
    from rlhf_jax.runner.config_loader import load_config
    from rlhf_jax.runner.pipeline import run_experiment
    from rlhf_jax.runner.schema import ExperimentConfig, check_overrides

    cfg = load_config(ExperimentConfig, args.config, args.overrides)
    check_overrides(cfg, args.overrides)
    _join_processes(cfg.distributed)
    summary = run_experiment(cfg, stop_after=args.stop_after)
    from rlhf_jax.sharding.distributed import is_primary

    if not is_primary():  # process 0 reports for a multi-host run
        return 0
    if summary is None:
        print(f"steps 1-2 done: {cfg.run.out_dir}")
        return 0
    out = os.path.join(cfg.run.out_dir, "summary.json")
    print(f"summary: {out}\nreport:  {os.path.join(cfg.run.out_dir, 'report.md')}")
    for k, v in summary.items():
        if isinstance(v, float):
            print(f"  {k:28s} {v:.4f}")
    return 0


def _join_processes(d) -> None:
    """``distributed.*``: form one runtime with the other processes, before any device is touched."""
    from rlhf_jax.runner.config_loader import ConfigError

    if not d.enabled:
        given = [k for k in ("coordinator", "num_processes", "process_id") if getattr(d, k) is not None]
        if given:
            raise ConfigError(f"distributed.{given[0]} is set but distributed.enabled is false "
                              f"(set distributed.enabled=true to run as several processes)")
        return
    if d.num_processes is not None and d.process_id is not None and d.process_id >= d.num_processes:
        raise ConfigError(f"distributed.process_id = {d.process_id} must be below distributed."
                          f"num_processes = {d.num_processes}")
    from rlhf_jax.sharding.distributed import initialize

    try:
        initialize(d.coordinator, d.num_processes, d.process_id)
    except (RuntimeError, ValueError) as e:
        raise ConfigError(f"distributed.enabled: cannot join the other processes ({_message(e)}); "
                          f"set distributed.coordinator, num_processes and process_id, or run under "
                          f"SLURM or on a TPU pod slice where JAX finds them") from None
