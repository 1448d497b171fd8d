"""Metrics logging: one JSON line per ``log`` call in ``run_dir/metrics.jsonl`` (+ optional TensorBoard).

Line format: ``{"stage": "rl", "step": 12, "time": <unix seconds>, "objective/kl": 0.3, ...}``.
Non-finite floats are written as the strings ``"nan"``, ``"inf"``, ``"-inf"`` (the file stays strict
JSON) and :func:`read_metrics` turns them back into floats.

Resume: a restarted run calls ``MetricsLogger(run_dir, resume=True).truncate_after(stage, step)`` with
the stage and step of the checkpoint it restored, so lines logged after that checkpoint are not
duplicated (see :func:`truncate_metrics` for the exact rule).
"""

from __future__ import annotations

import difflib
import json
import math
import os
import pathlib
import sys
import time
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from tqdm import tqdm

from rlhf_jax.metrics.aggregate import to_python

__all__ = ["MetricsLogger", "read_metrics", "truncate_metrics", "progress", "PIPELINE_STAGES",
           "METRICS_FILE", "Progress"]

METRICS_FILE = "metrics.jsonl"
PIPELINE_STAGES = ("pretrain", "sft", "reward", "rl")
"""Stages in pipeline order: resuming stage s drops every line of a later one. Other stages
('eval', ...) are side stages: their lines are kept or dropped by their position in the file."""

_RESERVED = ("stage", "step", "time")
_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _metrics_path(run_dir: str | os.PathLike) -> pathlib.Path:
    path = pathlib.Path(run_dir)
    return path if path.suffix == ".jsonl" else path / METRICS_FILE


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    return value


def _encode(stage: str, step: int, metrics: Mapping[str, Any]) -> str:
    clash = [k for k in metrics if k in _RESERVED]
    if clash:
        raise ValueError(f"metric names {clash} clash with the reserved fields {_RESERVED}")
    arrays = {k: v for k, v in metrics.items() if hasattr(v, "shape") or isinstance(v, np.generic)}
    values = dict(metrics)
    if arrays:
        values.update(to_python(arrays))  # one device->host transfer for all array values
    record = {"stage": str(stage), "step": int(step), "time": time.time()}
    record.update({str(k): _json_value(v) for k, v in values.items()})
    return json.dumps(record, allow_nan=False)


def _decode(record: dict) -> dict:
    return {k: (_NONFINITE[v] if isinstance(v, str) and v in _NONFINITE and k not in _RESERVED else v)
            for k, v in record.items()}


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """All lines of ``run_dir/metrics.jsonl`` (or a ``.jsonl`` path) as dicts; NaN/inf restored.

    A missing file gives ``[]``; a torn last line (a crash mid-write) is ignored.
    """
    path = _metrics_path(run_dir)
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(_decode(json.loads(line)))
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path}:{i + 1}: not a JSON line ({e.msg})") from None
    return out


def truncate_metrics(run_dir: str | os.PathLike, stage: str, step: int) -> int:
    """Rewrite metrics.jsonl as it was when checkpoint (``stage``, ``step``) was taken; returns #dropped.

    The cut is at the first line that is either of ``stage`` with a step > ``step`` or of a pipeline
    stage (:data:`PIPELINE_STAGES`) after ``stage``; that line and every line after it are dropped
    (side stages such as 'eval' logged after the checkpoint go too), and so is any other line of
    ``stage`` with a step > ``step`` or of a later pipeline stage. The rewrite is atomic.
    """
    path = _metrics_path(run_dir)
    if not path.exists():
        return 0
    later = set(PIPELINE_STAGES[PIPELINE_STAGES.index(stage) + 1:]) if stage in PIPELINE_STAGES else set()
    raw = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    kept, cut = [], False
    for line in raw:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn line from a crash
        drop = (rec.get("stage") == stage and rec.get("step", -1) > step) or rec.get("stage") in later
        cut = cut or drop
        if not cut:
            kept.append(line)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    os.replace(tmp, path)
    return len(raw) - len(kept)


def _tensorboard_writer(logdir: pathlib.Path):
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ImportError(
                "the 'tensorboard' metrics backend needs the package 'tensorboardX' "
                "(pip install tensorboardX) or 'tensorboard' for torch.utils.tensorboard "
                "(pip install tensorboard); neither is importable") from None
    return SummaryWriter(str(logdir))


BACKENDS = ("jsonl", "tensorboard")


class MetricsLogger:
    """Append-only metrics log of a run directory.

    Args:
      run_dir: the run's output directory (created if missing).
      backends: any of 'jsonl' (``run_dir/metrics.jsonl``) and 'tensorboard' (``run_dir/tb``; needs
        tensorboardX or tensorboard installed, checked here).
      resume: keep an existing metrics.jsonl and append to it (call :meth:`truncate_after` with the
        restored checkpoint's stage and step); otherwise an existing file is started afresh.
    """

    def __init__(self, run_dir: str | os.PathLike, backends: Iterable[str] = ("jsonl",),
                 resume: bool = False):
        backends = (backends,) if isinstance(backends, str) else tuple(backends)
        for b in backends:
            if b not in BACKENDS:
                close = difflib.get_close_matches(b, BACKENDS, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f" (known: {', '.join(BACKENDS)})"
                raise ValueError(f"unknown metrics backend {b!r}{hint}")
        self.run_dir = pathlib.Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.backends = backends
        self.path = self.run_dir / METRICS_FILE
        self._tb = _tensorboard_writer(self.run_dir / "tb") if "tensorboard" in backends else None
        self._file = None
        if "jsonl" in backends:
            self._file = open(self.path, "a" if resume else "w", encoding="utf-8")

    def log(self, step: int, metrics: Mapping[str, Any], stage: str) -> None:
        """Write one line ``{"stage", "step", "time", **metrics}`` and flush it."""
        line = _encode(stage, step, metrics)
        if self._file is not None:
            self._file.write(line + "\n")
            self._file.flush()
        if self._tb is not None:
            for key, value in json.loads(line).items():
                if key in _RESERVED or isinstance(value, bool):
                    continue
                value = _NONFINITE.get(value, value) if isinstance(value, str) else value
                if isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, int(step))
            self._tb.flush()

    def truncate_after(self, stage: str, step: int) -> int:
        """Drop lines logged after checkpoint (``stage``, ``step``); see :func:`truncate_metrics`."""
        if self._file is not None:
            self._file.close()
        dropped = truncate_metrics(self.run_dir, stage, step)
        if self._file is not None:
            self._file = open(self.path, "a", encoding="utf-8")
        return dropped

    def read(self) -> list[dict]:
        return read_metrics(self.run_dir)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ----------------------------------------------------------------------------- progress bars


def _progress_enabled(force: bool | None) -> bool:
    if os.environ.get("RLHF_JAX_NO_PROGRESS", "").strip() not in ("", "0", "false", "False"):
        return False
    if force is not None:
        return bool(force)
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


class Progress(tqdm):
    """tqdm with :meth:`set_metrics` for live metrics in the postfix."""

    def set_metrics(self, metrics: Mapping[str, Any], refresh: bool = True) -> None:
        """Show ``metrics`` (one device->host transfer, 4 significant digits); no-op when disabled."""
        if self.disable or not metrics:
            return
        values = to_python(metrics)
        self.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in values.items()},
                         refresh=refresh)


def progress(iterable_or_total: Iterable | int | None = None, desc: str | None = None, *,
             force: bool | None = None, **kwargs) -> Progress:
    """A tqdm bar on stderr. ``progress(loader, 'rl')`` wraps an iterable; ``progress(1000, 'rl')``
    gives a manual bar (``bar.update(n)``). Disabled when ``RLHF_JAX_NO_PROGRESS=1`` or stderr is not a
    TTY, unless ``force=True`` (``force=False`` always disables; the variable always wins).
    ``bar.set_metrics(dict)`` shows live metrics.
    """
    if isinstance(iterable_or_total, int) and not isinstance(iterable_or_total, bool):
        kwargs.setdefault("total", iterable_or_total)
        iterable_or_total = None
    return Progress(iterable_or_total, desc=desc, file=sys.stderr,
                    disable=not _progress_enabled(force), dynamic_ncols=True, **kwargs)
