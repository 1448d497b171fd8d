"""Command line: ``python -m rlhf_jax run CONFIG.yaml [key.path=value ...]``.

``algorithm=NAME`` picks step 3's algorithm from the registry (default ``ppo``); its options live in
the section of the same name (``algorithm=grpo grpo.group_size=8``).

A bad config (unknown key, wrong type, out-of-range value), a missing file or malformed data ends
the command with one line on stderr naming the culprit and exit status 2, before any compute.
"""

from __future__ import annotations

import argparse
import os
import sys


def _user_errors():
    from rlhf_jax.data.errors import DataError
    from rlhf_jax.runner.config_loader import ConfigError

    errors = [ConfigError, DataError, FileNotFoundError]
    try:
        from rlhf_jax.checkpoint.hf import HFCheckpointError

        errors.append(HFCheckpointError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlhf_jax", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run an experiment config (resumes if its run dir has checkpoints)")
    run.add_argument("config", help="experiment YAML file")
    run.add_argument("overrides", nargs="*", help="key.path=value overrides, e.g. ppo.lr=1e-4")
    args = parser.parse_args(argv)

    errors = _user_errors()
    try:
        from rlhf_jax.runner.config_loader import load_config
        from rlhf_jax.runner.schema import ExperimentConfig, check_overrides

        cfg = load_config(ExperimentConfig, args.config, args.overrides)
        check_overrides(cfg, args.overrides)
        from rlhf_jax.runner.pipeline import run_experiment

        summary = run_experiment(cfg)
    except errors as e:
        msg = str(e) if not isinstance(e, KeyError) else e.args[0]
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume from the last checkpoint", file=sys.stderr)
        return 130
    out = os.path.join(cfg.run.out_dir, "summary.json")
    print(f"summary: {out}\nreport:  {os.path.join(cfg.run.out_dir, 'report.md')}")
    for k, v in summary.items():
        if isinstance(v, float):
            print(f"  {k:28s} {v:.4f}")
    return 0
