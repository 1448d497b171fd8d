"""The run directory: checked before a run writes to it, every kept file written atomically and
verified when read back.

A run keeps, between stages, ``config.yaml`` (the resolved config), ``reward_data.npz`` (the
comparisons), ``reward_model.json`` (held-out accuracy, normalisation), ``eval_initial.json``,
``summary.json`` (written last: its presence means the run finished) and, after a non-finite stop,
``stopped.json`` (stage, step and metric; a rerun may then change that stage's settings). Writes go
to a temporary file renamed over the target (by process 0 alone in a multi-host run), so a crash
leaves the old file or the new one, never half of one; a file that cannot be read back raises
:class:`RunDirError` naming it and what to do.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile

import numpy as np

from rlhf_jax.interrupts import deferred_interrupts
from rlhf_jax.sharding.distributed import on_primary

__all__ = ["RunDirError", "check_out_dir", "write_json", "write_yaml", "save_npz", "read_json",
           "read_yaml", "load_npz", "STOPPED_FILE"]

STOPPED_FILE = "stopped.json"


class RunDirError(ValueError):
    """A run directory that cannot be used, or a file in it that cannot be read back (one line)."""


def check_out_dir(path: str) -> None:
    """``run.out_dir`` must be a directory, or creatable, and writable; nothing is created here."""
    path = os.path.abspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise RunDirError(f"run.out_dir: {path} is a file, not a directory")
    probe = path
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        raise RunDirError(f"run.out_dir: {path} cannot be created: {probe} is a file")
    try:  # a real write: permission bits say nothing for root or a read-only mount
        os.rmdir(tempfile.mkdtemp(prefix=".rlhf_jax_probe_", dir=probe))
    except OSError as e:
        raise RunDirError(f"run.out_dir: {path} cannot be written ({probe}: "
                          f"{e.strerror or e})") from None


def _atomic_write(path: str, write) -> None:
    """In a multi-host run process 0 writes, and every process returns once the file is there."""
    def once():
        tmp = f"{path}.tmp"
        with deferred_interrupts():
            with open(tmp, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)

    on_primary(f"write {os.path.abspath(path)}", once)


def write_json(path: str, obj) -> None:
    _atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2, sort_keys=True).encode()))


def write_yaml(path: str, obj) -> None:
    import yaml

    text = yaml.safe_dump(obj, sort_keys=False, default_flow_style=False, allow_unicode=True)
    _atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def save_npz(path: str, arrays: dict) -> None:
    _atomic_write(path, lambda f: np.savez(f, **arrays))


def _corrupt(path: str, why, fix: str) -> RunDirError:
    reason = str(why).splitlines()[0] if str(why) else type(why).__name__
    return RunDirError(f"{path}: unreadable ({reason}); {fix}")


def _read_text(path: str, fix: str, parse, errors: tuple, kind: type, what: str):
    """``parse`` of the UTF-8 text in ``path``; None when there is none; RunDirError when the file
    cannot be read, decoded or parsed, or holds something other than a ``kind``."""
    if not os.path.exists(path):
        return None
    try:
        with open(path, "rb") as f:
            obj = parse(f.read().decode("utf-8"))
    except (OSError, UnicodeDecodeError) + errors as e:
        raise _corrupt(path, e, fix) from None
    if not isinstance(obj, kind):
        raise _corrupt(path, f"expected {what}, got {type(obj).__name__}", fix)
    return obj


def read_json(path: str, fix: str, kind: type = dict):
    """The JSON object in ``path``; None when there is none; RunDirError when it is corrupt."""
    return _read_text(path, fix, json.loads, (json.JSONDecodeError,), kind, f"a JSON {kind.__name__}")


def read_yaml(path: str, fix: str):
    """The mapping in a YAML file the run wrote; None when there is none; RunDirError if corrupt."""
    import yaml

    return _read_text(path, fix, yaml.safe_load, (yaml.YAMLError,), dict, "a mapping")


def load_npz(path: str, required: tuple[str, ...], fix: str) -> dict | None:
    """The arrays of an ``.npz`` the run wrote, all of ``required`` present and of one length."""
    if not os.path.exists(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise _corrupt(path, e, fix) from None
    missing = [k for k in required if k not in data]
    if missing:
        raise _corrupt(path, f"no array {missing[0]!r}", fix)
    lengths = {len(v) for v in data.values() if v.ndim}
    if len(lengths) > 1:
        raise _corrupt(path, f"arrays of different lengths {sorted(lengths)}", fix)
    return data


def headless_pyplot():
    """``matplotlib.pyplot`` for writing plot files: the non-interactive Agg backend unless pyplot
    is already in use (a notebook's inline backend, a user's own), which is then left as it is;
    callers close their figures, so nothing they draw is shown."""
    import sys

    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
