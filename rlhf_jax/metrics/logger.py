"""Metrics logging: one JSON line per ``log`` call in ``run_dir/metrics.jsonl`` (+ TensorBoard, W&B).

Line format: ``{"stage": "rl", "step": 12, "time": <unix seconds>, "objective/kl": 0.3, ...}``.
Non-finite floats are written as the strings ``"nan"``, ``"inf"``, ``"-inf"`` (the file stays strict
JSON) and :func:`read_metrics` turns them back into floats.

Resume: a restarted run calls ``MetricsLogger(run_dir, resume=True).truncate_after(stage, step)`` with
the stage and step of the checkpoint it restored, so lines logged after that checkpoint are not
duplicated (see :func:`truncate_metrics` for the exact rule). The other backends (TensorBoard,
W&B: ``metrics/backends.py``) mirror metrics.jsonl and are brought back in line with it, so they do
not duplicate those steps either.
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
from rlhf_jax.metrics.backends import BACKEND_NAMES, Backend, logging_backends, make_backend

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


def _record(stage: str, step: int, metrics: Mapping[str, Any]) -> dict:
    clash = [k for k in metrics if k in _RESERVED]
    if clash:
        raise ValueError(f"metric names {clash} clash with the reserved fields {_RESERVED}")
    arrays = {k: v for k, v in metrics.items() if hasattr(v, "shape") or isinstance(v, np.generic)}
    values = dict(metrics)
    if arrays:
        values.update(to_python(arrays))  # one device->host transfer for all array values
    record = {"stage": str(stage), "step": int(step), "time": time.time()}
    record.update({str(k): v for k, v in values.items()})
    return record


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


BACKENDS = BACKEND_NAMES


class MetricsLogger:
    """Append-only metrics log of a run directory, mirrored to TensorBoard / W&B if asked.

    Args:
      run_dir: the run's output directory (created if missing).
      backends: any of 'jsonl' (``run_dir/metrics.jsonl``), 'tensorboard' (``run_dir/tensorboard``)
        and 'wandb' (an offline W&B run in ``run_dir/wandb``), or backend objects
        (:class:`~rlhf_jax.metrics.backends.TensorBoardBackend`, ``WandbBackend(mode=..., ...)``).
        TensorBoard and W&B mirror metrics.jsonl, so they need 'jsonl' too; their packages
        (requirements-logging.txt) are imported here.
      resume: keep an existing metrics.jsonl and append to it (call :meth:`truncate_after` with the
        restored checkpoint's stage and step); otherwise an existing file is started afresh. On
        resume the mirrors are rebuilt from metrics.jsonl at the first :meth:`log` (or at
        :meth:`close`), after the truncation, so no step is in them twice.
      config: the resolved config (a plain dict): W&B's run config, TensorBoard's text summary
        'config' and hparams.
    """

    def __init__(self, run_dir: str | os.PathLike, backends: Iterable[str | Backend] = ("jsonl",),
                 resume: bool = False, config: Mapping[str, Any] | None = None):
        backends = (backends,) if isinstance(backends, (str, Backend)) else tuple(backends)
        for b in backends:
            if not isinstance(b, Backend) and b not in BACKENDS:
                close = difflib.get_close_matches(str(b), BACKENDS, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f" (known: {', '.join(BACKENDS)})"
                raise ValueError(f"unknown metrics backend {b!r}{hint}")
        mirrors = [m for m in (make_backend(b) for b in backends) if m is not None]
        if mirrors and "jsonl" not in backends:
            raise ValueError(f"the {mirrors[0].name!r} backend mirrors metrics.jsonl (what a resumed "
                             f"run rebuilds it from): add the 'jsonl' backend")
        self.run_dir = pathlib.Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.backends = tuple(b if isinstance(b, str) else b.name for b in backends)
        self.mirrors = mirrors
        self.path = self.run_dir / METRICS_FILE
        self._file = None
        for m in mirrors:  # imports the packages: a missing one fails here, before any line
            m.open(self.run_dir, config, resume)
        if "jsonl" in backends:
            self._file = open(self.path, "a" if resume else "w", encoding="utf-8")
        self._lines = len(read_metrics(self.run_dir)) if resume else 0
        self._stale = bool(resume and mirrors)  # the mirrors may hold lines metrics.jsonl lost
        if mirrors and not resume:
            self._sync()

    @classmethod
    def from_config(cls, run_dir: str | os.PathLike, cfg_logging, resume: bool = False,
                    config: Mapping[str, Any] | None = None) -> MetricsLogger:
        """The logger for the experiment config's ``logging`` section (jsonl + what it turns on)."""
        return cls(run_dir, backends=logging_backends(cfg_logging), resume=resume, config=config)

    def _sync(self) -> None:
        records = read_metrics(self.run_dir)
        for m in self.mirrors:
            m.sync(records)
        self._lines = len(records)
        self._stale = False

    def log(self, step: int, metrics: Mapping[str, Any], stage: str) -> None:
        """Write one line ``{"stage", "step", "time", **metrics}`` and flush it (then the mirrors)."""
        record = _record(stage, step, metrics)
        line = json.dumps({k: _json_value(v) for k, v in record.items()}, allow_nan=False)
        if self._file is not None:
            self._file.write(line + "\n")
            self._file.flush()
        if not self.mirrors:
            return
        if self._stale:
            self._sync()  # includes the line just written
            return
        record = _decode(json.loads(line))  # what metrics.jsonl holds, and what a rebuild replays
        for m in self.mirrors:
            m.write(self._lines, record)
        self._lines += 1

    def truncate_after(self, stage: str, step: int) -> int:
        """Drop lines logged after checkpoint (``stage``, ``step``); see :func:`truncate_metrics`.
        The mirrors drop them too (rebuilt at the next :meth:`log` or :meth:`close`). A logger
        without the jsonl backend (another host's, in a multi-host run) leaves the file alone."""
        if "jsonl" not in self.backends:
            return 0
        if self._file is not None:
            self._file.close()
        dropped = truncate_metrics(self.run_dir, stage, step)
        if self._file is not None:
            self._file = open(self.path, "a", encoding="utf-8")
        if dropped and self.mirrors:
            self._stale = True
        return dropped

    def read(self) -> list[dict]:
        return read_metrics(self.run_dir)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        try:
            if self._stale:
                self._sync()
        except Exception as e:  # noqa: BLE001 -- never mask the error a run may be closing on
            print(f"rlhf_jax: could not bring {', '.join(m.name for m in self.mirrors)} in line with "
                  f"metrics.jsonl ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                  f"the next resume rebuilds them", file=sys.stderr)
        finally:
            for m in self.mirrors:
                m.close()
            self._stale = False

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
