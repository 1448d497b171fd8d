"""Logging backends that mirror ``metrics.jsonl``: TensorBoard (tensorboardX) and Weights & Biases.

``metrics.jsonl`` is the source of truth; a backend holds a copy of its lines. The
:class:`~rlhf_jax.metrics.logger.MetricsLogger` calls ``backend.sync(records)`` to make a backend
hold exactly ``records`` (the lines of metrics.jsonl) and ``backend.write(index, record)`` to append
line ``index``. It syncs when a run starts (no lines), when a resumed run logs its first line or
closes (after ``truncate_after`` dropped the lines logged after the restored checkpoint), and after
any truncation that dropped lines. So after a crash and resume every (stage, step, metric) is in
each backend once, with the value of the attempt that metrics.jsonl kept.

Why a rebuild rather than the backends' own resume mechanisms:

* TensorBoard: ``SummaryWriter(purge_step=N)`` writes a restart event that makes TensorBoard hide,
  when it *loads* the files, the events of every tag at step >= N. The files keep the old events,
  and there is one global step while the pipeline's steps restart at each stage: purging rl step 4
  would also hide pretrain steps >= 4. The backend instead rewrites ``run_dir/tensorboard`` from
  metrics.jsonl (a new event file, then the old ones deleted).
* W&B offline: every ``wandb.init`` writes a new ``run_dir/wandb/offline-run-<time>-<id>``
  directory, and an offline run cannot be rewound. The backend deletes the run's offline
  directories and replays metrics.jsonl into a fresh one with the same id: ``run_dir/wandb`` holds
  one offline run, to ``wandb sync`` once the run is done.
* W&B online: the server holds the history. Line ``i`` of metrics.jsonl is logged at W&B step
  ``i``; the backend resumes the run (``resume="allow"``) and, when the server holds lines that
  metrics.jsonl no longer has, rewinds it with ``wandb.init(resume_from=f"{id}?_step={P}")``
  (W&B's rewind, a preview feature W&B enables per account), P being the lines both still share.
  If W&B refuses the rewind, the backend continues in a new W&B run (same name and group) with the
  whole of metrics.jsonl replayed, and says so on stderr; the old run keeps the crashed attempt.
"""

from __future__ import annotations

import abc
import dataclasses
import importlib
import json
import logging
import os
import pathlib
import secrets
import shutil
import string
import struct
import sys
import time
import uuid
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["Backend", "TensorBoardBackend", "WandbBackend", "MissingBackendError", "BACKEND_NAMES",
           "make_backend", "logging_backends", "check_backends", "REQUIREMENTS", "TENSORBOARD_DIR"]

REQUIREMENTS = "requirements-logging.txt"
TENSORBOARD_DIR = "tensorboard"
BACKEND_NAMES = ("jsonl", "tensorboard", "wandb")
_RESERVED = ("stage", "step", "time")
_PACKAGES = {"tensorboard": ("tensorboardX", "logging.tensorboard"), "wandb": ("wandb", "logging.wandb")}
WANDB_MODES = ("offline", "online")


class MissingBackendError(ImportError):
    """A logging backend's package is not installed (one line naming the requirements file)."""


def _missing(backend: str) -> str:
    package, key = _PACKAGES[backend]
    return (f"{key}: the {backend!r} logging backend needs the package {package!r}, which is not "
            f"installed; pip install -r {REQUIREMENTS}")


def _import(backend: str):
    try:
        return importlib.import_module(_PACKAGES[backend][0])
    except ImportError:
        raise MissingBackendError(_missing(backend)) from None


def _metrics(record: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in _RESERVED}


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, Mapping):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): tree}


def _atomic_write(path: pathlib.Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class Backend(abc.ABC):
    """A copy of metrics.jsonl in another format: the interface the backends below implement."""

    name = ""

    @abc.abstractmethod
    def open(self, run_dir: pathlib.Path, config: Mapping | None, resume: bool) -> None:
        """Bind to ``run_dir`` (the package is imported here); ``resume=False``: a fresh start."""

    @abc.abstractmethod
    def sync(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Hold exactly ``records`` (all of metrics.jsonl, in order) and nothing else."""

    @abc.abstractmethod
    def write(self, index: int, record: Mapping[str, Any]) -> None:
        """Append ``record``, line ``index`` (0-based) of metrics.jsonl."""

    @abc.abstractmethod
    def close(self) -> None:
        """Flush and release the backend's files (or W&B run)."""


class _DropNonFiniteWarning(logging.Filter):
    """tensorboardX warns at every NaN/inf scalar; metrics.jsonl keeps them on purpose (the guard)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "NaN or Inf found" not in record.getMessage()


_NONFINITE_FILTER = _DropNonFiniteWarning()


class TensorBoardBackend(Backend):
    """Event files in ``run_dir/tensorboard``: scalar ``f"{stage}/{metric}"`` at the record's step,
    with the record's wall time; the resolved config as the text summary ``config`` and as the
    HParams plugin's session hparams (flattened dotted keys), so TensorBoard compares sweep runs."""

    name = "tensorboard"

    def __init__(self, subdir: str = TENSORBOARD_DIR):
        self.subdir = subdir
        self._writer = None

    def open(self, run_dir, config, resume):
        self._tbx = _import("tensorboard")
        logging.getLogger("tensorboardX.x2num").addFilter(_NONFINITE_FILTER)  # once: same object
        self.logdir = pathlib.Path(run_dir) / self.subdir
        self.config = dict(config) if config else None

    def _event_files(self) -> list[pathlib.Path]:
        return sorted(self.logdir.glob("events.out.tfevents.*")) if self.logdir.is_dir() else []

    def sync(self, records):
        self.close()
        old = self._event_files()
        self.logdir.mkdir(parents=True, exist_ok=True)
        self._writer = self._tbx.SummaryWriter(str(self.logdir), flush_secs=30,
                                               filename_suffix=f".{uuid.uuid4().hex[:8]}")
        if self.config is not None:
            self._write_config(self.config)
        for record in records:
            self._add(record)
        self._writer.flush()
        for path in old:  # only once the new file holds everything
            path.unlink(missing_ok=True)

    def _write_config(self, config: Mapping) -> None:
        import yaml
        from tensorboardX.summary import hparams

        text = yaml.safe_dump(config, sort_keys=False, default_flow_style=False)
        self._writer.add_text("config", "".join("    " + line + "\n" for line in text.splitlines()), 0)
        flat = {k: (v if isinstance(v, (bool, int, float, str)) else json.dumps(v))
                for k, v in _flatten(config).items()}
        _, session_start, _ = hparams(flat, {})  # metrics: TensorBoard infers them from the scalars
        self._writer.file_writer.add_summary(session_start)

    def _add(self, record: Mapping[str, Any]) -> None:
        stage, step, walltime = record["stage"], int(record["step"]), record.get("time")
        for key, value in _metrics(record).items():
            tag = f"{stage}/{key}"
            if isinstance(value, (bool, int, float)):
                self._writer.add_scalar(tag, float(value), step, walltime=walltime)
            else:  # a string (or list) metric: a text summary, so it is not lost
                self._writer.add_text(tag, value if isinstance(value, str) else json.dumps(value), step,
                                      walltime=walltime)

    def write(self, index, record):
        self._add(record)
        self._writer.flush()

    def close(self):
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class WandbBackend(Backend):
    """A W&B run: ``wandb.init(dir=run_dir, id=<kept in run_dir/wandb>, resume="allow",
    config=<resolved config>, mode=...)``; one x-axis per stage (``define_metric(f"{stage}/*",
    step_metric=f"{stage}/step")``); line ``i`` of metrics.jsonl is W&B step ``i``."""

    name = "wandb"
    STATE = "rlhf_jax_run.json"      # {"id": W&B run id}: a resumed run continues the same W&B run
    SENT = "rlhf_jax_sent.txt"       # online: the 'time' of each line the server holds, in order

    def __init__(self, mode: str = "offline", project: str | None = None, entity: str | None = None,
                 name: str | None = None, group: str | None = None, tags: Sequence[str] = ()):
        if mode not in WANDB_MODES:
            raise ValueError(f"W&B mode must be one of {', '.join(WANDB_MODES)}, got {mode!r} "
                             f"(mode 'disabled' means no W&B backend)")
        self.mode, self.project, self.entity = mode, project, entity
        self.run_name, self.group, self.tags = name, group, tuple(tags)
        self.run = None
        self._sent = None

    # ---------------------------------------------------------------- state in run_dir/wandb
    def open(self, run_dir, config, resume):
        self._wandb = _import("wandb")
        self.run_dir = pathlib.Path(run_dir)
        self.root = self.run_dir / "wandb"
        self.root.mkdir(parents=True, exist_ok=True)
        self.config = dict(config) if config else None
        state = self._read_state()
        if resume and state.get("id"):
            self.id = state["id"]
        else:  # a fresh start: a new W&B run; the offline files of an earlier attempt go
            if state.get("id"):
                self._delete_offline(state["id"])
            self._new_id()

    def _read_state(self) -> dict:
        try:
            return json.loads((self.root / self.STATE).read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def _new_id(self) -> None:
        self.id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
        _atomic_write(self.root / self.STATE, json.dumps({"id": self.id}) + "\n")
        (self.root / self.SENT).unlink(missing_ok=True)

    def _delete_offline(self, run_id: str) -> None:
        for path in self.root.glob(f"offline-run-*-{run_id}"):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)

    # ---------------------------------------------------------------- the W&B run
    def _init(self, **how):
        kwargs = dict(dir=str(self.run_dir), mode=self.mode, project=self.project, entity=self.entity,
                      name=self.run_name or self.run_dir.resolve().name, group=self.group,
                      tags=list(self.tags) or None, config=self.config, reinit="create_new")
        kwargs.update(how)
        self.run = self._wandb.init(**kwargs)
        self._stages: set[str] = set()

    def _log(self, index: int, record: Mapping[str, Any]) -> None:
        stage = str(record["stage"])
        if stage not in self._stages:
            self.run.define_metric(f"{stage}/step")
            self.run.define_metric(f"{stage}/*", step_metric=f"{stage}/step")
            self._stages.add(stage)
        data = {f"{stage}/step": int(record["step"])}
        data.update({f"{stage}/{k}": v for k, v in _metrics(record).items()})
        self.run.log(data, step=index)
        if self._sent is not None:
            self._sent.write(json.dumps(record.get("time")) + "\n")
            self._sent.flush()

    def sync(self, records):
        self.close()
        if self.mode == "offline":
            self._delete_offline(self.id)
            self._init(id=self.id, resume="allow")
            start = 0
        else:
            start = self._resume_online([r.get("time") for r in records])
            self._sent = open(self.root / self.SENT, "a", encoding="utf-8")
        for i in range(start, len(records)):
            self._log(i, records[i])

    def _resume_online(self, times: list) -> int:
        """Resume the online run; rewind it to the lines it shares with metrics.jsonl. Returns the
        first line the server does not hold (replayed from there)."""
        self._init(id=self.id, resume="allow")
        held = self.run.starting_step  # the server's next step: it holds lines 0 .. held - 1
        sent_path = self.root / self.SENT
        sent = [json.loads(x) for x in sent_path.read_text(encoding="utf-8").splitlines()] \
            if sent_path.exists() else []
        shared = 0
        for a, b in zip(sent[:held], times):
            if a != b:
                break
            shared += 1
        if shared < held:  # the server holds lines that metrics.jsonl no longer has (or unknown ones)
            self.run.finish()
            self.run = None
            try:
                self._init(resume_from=f"{self.id}?_step={shared}")
                rewound = self.run.starting_step == shared
            except Exception as e:  # noqa: BLE001 -- the server's refusal, whatever its type
                rewound, why = False, f"{type(e).__name__}: {e}".splitlines()[0]
            else:
                why = f"it resumed at step {self.run.starting_step}"
            if not rewound:
                if self.run is not None:
                    self.run.finish()
                old = self.id
                self._new_id()
                print(f"rlhf_jax: W&B did not rewind run {old} to step {shared} ({why}); logging the "
                      f"whole of metrics.jsonl to a new W&B run {self.id}", file=sys.stderr)
                self._init(id=self.id, resume="allow")
                shared = 0
        _atomic_write(sent_path, "".join(json.dumps(t) + "\n" for t in sent[:shared]))
        return shared

    def write(self, index, record):
        self._log(index, record)

    def close(self):
        if self._sent is not None:
            self._sent.close()
            self._sent = None
        if self.run is not None:
            run, self.run = self.run, None
            path = run.settings.sync_file if self.mode == "offline" else None
            run.finish()
            if path:
                _wait_for_exit_record(pathlib.Path(path))


def _last_wandb_record(path: pathlib.Path):
    """The last complete record of a ``.wandb`` file (W&B's LevelDB-log datastore: 32 KiB blocks of
    chunks ``crc32 | length | type | data`` after a 7-byte header), or None."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    pos, parts, last = 7, b"", None
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # block trailer
            pos += 32768 - pos % 32768
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        if len(chunk) < length or zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF != crc:
            break  # being written
        pos += 7 + length
        parts = chunk if kind in (1, 2) else parts + chunk
        if kind in (1, 4):  # FULL, LAST
            last = parts
    return wandb_internal_pb2.Record.FromString(last) if last is not None else None


def _wait_for_exit_record(path: pathlib.Path, timeout: float = 60.0) -> None:
    """``run.finish()`` returns before W&B's service has written an offline run's ``.wandb`` file
    out (wandb 0.31): wait for its final record, so the files are complete when close() returns
    (a rebuild deletes and rewrites them; a user may ``wandb sync`` them at once)."""
    from google.protobuf.message import Error as ProtobufError  # wandb depends on protobuf

    deadline = time.monotonic() + timeout
    while True:
        try:
            rec = _last_wandb_record(path)
            if rec is not None and rec.WhichOneof("record_type") == "exit":
                return
        except (OSError, ProtobufError):  # not there yet
            pass
        if time.monotonic() > deadline:
            print(f"rlhf_jax: W&B has not finished writing {path} after {timeout:.0f} s", file=sys.stderr)
            return
        time.sleep(0.05)


def make_backend(spec: str | Backend) -> Backend | None:
    """A backend object for a name ('tensorboard', 'wandb': offline with defaults) or itself;
    None for 'jsonl' (written by the logger itself)."""
    if isinstance(spec, Backend):
        return spec
    return {"jsonl": lambda: None, "tensorboard": TensorBoardBackend, "wandb": WandbBackend}[spec]()


def _wandb_kwargs(section) -> dict:
    if dataclasses.is_dataclass(section):
        section = dataclasses.asdict(section)
    return dict(section)


def logging_backends(cfg_logging) -> tuple:
    """The ``backends`` argument of MetricsLogger for the config's ``logging`` section (None: jsonl)."""
    out: list = ["jsonl"]
    if cfg_logging is None:
        return tuple(out)
    if cfg_logging.tensorboard:
        out.append(TensorBoardBackend())
    wandb_cfg = cfg_logging.wandb
    if wandb_cfg is not None:
        kwargs = _wandb_kwargs(wandb_cfg)
        if kwargs.get("mode", "offline") != "disabled":
            out.append(WandbBackend(**kwargs))
    return tuple(out)


def check_backends(cfg_logging) -> None:
    """Before any compute: every backend the ``logging`` section turns on can be imported.

    Raises the config loader's ``ConfigError`` (one line, exit status 2 from the CLI) naming the
    config key, the missing package and ``pip install -r requirements-logging.txt``.
    """
    from rlhf_jax.runner.config_loader import ConfigError  # here: runner imports metrics

    for backend in logging_backends(cfg_logging)[1:]:
        try:
            _import(backend.name)
        except MissingBackendError as e:
            raise ConfigError(str(e)) from None
