"""TensorBoard and W&B backends: a crash and resume never duplicates a step in any backend; the
resolved config reaches both; a missing package is one line; the ``logging`` config section.

Everything is local: W&B runs in offline mode (files read back from ``run_dir/wandb``), the online
path against a fake ``wandb`` module that keeps a server's history in memory.
"""

from __future__ import annotations

import json
import os
import pathlib
import struct
import subprocess
import sys
import textwrap
import types
import zlib
from collections import defaultdict

import pytest

pytest.importorskip("tensorboardX", reason="needs requirements-logging.txt")
pytest.importorskip("wandb", reason="needs requirements-logging.txt")
pytest.importorskip("tensorboard", reason="reads event files with tensorboard (requirements-logging.txt)")

from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader  # noqa: E402
from tensorboard.plugins.hparams import plugin_data_pb2  # noqa: E402
from wandb.proto import wandb_internal_pb2  # noqa: E402

from rlhf_jax.metrics import MetricsLogger, read_metrics  # noqa: E402
from rlhf_jax.metrics.backends import (  # noqa: E402
    Backend,
    MissingBackendError,
    TensorBoardBackend,
    WandbBackend,
    check_backends,
    logging_backends,
)
from rlhf_jax.runner.config_loader import ConfigError, load_config  # noqa: E402
from rlhf_jax.runner.schema import ExperimentConfig, LoggingConfig, WandbConfig  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
QUIET_WANDB = {"WANDB_SILENT": "true", "WANDB_CONSOLE": "off", "WANDB__DISABLE_STATS": "true",
               "WANDB__DISABLE_META": "true", "WANDB_DISABLE_GIT": "true", "WANDB_DISABLE_CODE": "true",
               "WANDB_MODE": "offline"}
CONFIG = {"ppo": {"lr": 1e-5, "kl": {"beta": 0.05}}, "run": {"out_dir": "runs/x", "seed": 3},
          "logging": {"tensorboard": True, "wandb": {"mode": "offline", "tags": ["a"]}}}


@pytest.fixture(scope="module")
def wandb_env(tmp_path_factory):
    """W&B offline, silent, no system metrics / git / code capture; its own config and cache dirs."""
    home = tmp_path_factory.mktemp("wandb_home")
    with pytest.MonkeyPatch.context() as mp:
        for k, v in dict(QUIET_WANDB, WANDB_CONFIG_DIR=home / "config", WANDB_CACHE_DIR=home / "cache",
                         WANDB_DATA_DIR=home / "data").items():
            mp.setenv(k, str(v))
        mp.delenv("WANDB_API_KEY", raising=False)
        yield


# ----------------------------------------------------------------------------- readers


def tensorboard_events(run_dir):
    """{(tag, step): [values]} of the scalars and texts in every event file, the last text of each
    tag, and the hparams."""
    scalars, text, hparams = defaultdict(list), {}, {}
    files = sorted((pathlib.Path(run_dir) / "tensorboard").glob("events.out.tfevents.*"))
    for path in files:
        for event in LegacyEventFileLoader(str(path)).Load():
            for v in event.summary.value:
                plugin = v.metadata.plugin_data.plugin_name
                if v.WhichOneof("value") == "simple_value":
                    scalars[(v.tag, event.step)].append(v.simple_value)
                elif plugin == "text":
                    text[v.tag] = b"".join(v.tensor.string_val).decode()
                    scalars[(v.tag, event.step)].append(text[v.tag])  # text events counted too
                elif plugin == "hparams" and v.tag == "_hparams_/session_start_info":
                    data = plugin_data_pb2.HParamsPluginData.FromString(v.metadata.plugin_data.content)
                    for k, hv in data.session_start_info.hparams.items():
                        hparams[k] = getattr(hv, hv.WhichOneof("kind"))
    return files, scalars, text, hparams


def wandb_records(path):
    """The protobuf records of a ``.wandb`` file: W&B's LevelDB-log datastore (32 KiB blocks of
    chunks ``crc32 | length | type | data``, after the 7-byte header ``:W&B`` 0xBEE1 0)."""
    data = pathlib.Path(path).read_bytes()
    assert struct.unpack("<4sHB", data[:7]) == (b":W&B", 0xBEE1, 0)
    pos, chunks, out = 7, b"", []
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:  # block trailer
            pos += left
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF == crc, "corrupt record"
        pos += 7 + length
        if kind == 1:  # FULL
            out.append(chunk)
        elif kind == 2:  # FIRST
            chunks = chunk
        elif kind == 3:  # MIDDLE
            chunks += chunk
        elif kind == 4:  # LAST
            out.append(chunks + chunk)
    return [wandb_internal_pb2.Record.FromString(b) for b in out]


def wandb_offline_run(run_dir):
    """(run dirs, history rows, config, metric definitions) of the W&B offline run(s) in run_dir/wandb."""
    dirs = sorted(p for p in (pathlib.Path(run_dir) / "wandb").glob("offline-run-*") if not p.is_symlink())
    rows, config, metrics = [], {}, {}
    for d in dirs:
        for rec in wandb_records(next(d.glob("run-*.wandb"))):
            kind = rec.WhichOneof("record_type")
            if kind == "history":
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                             for item in rec.history.item})
            elif kind == "run":
                config.update({u.key: json.loads(u.value_json) for u in rec.run.config.update})
            elif kind == "config":
                config.update({u.key: json.loads(u.value_json) for u in rec.config.update})
            elif kind == "metric":
                metrics[rec.metric.glob_name or rec.metric.name] = rec.metric.step_metric
    return dirs, rows, config, metrics


def wandb_triples(rows):
    """{(stage, step, metric): [values]} of W&B history rows (each row: one metrics.jsonl line)."""
    out = defaultdict(list)
    for row in rows:
        stage = next(k[:-len("/step")] for k in row if k.endswith("/step") and not k.startswith("_"))
        for k, v in row.items():
            if k.startswith("_") or k == f"{stage}/step":
                continue
            assert k.startswith(stage + "/")
            out[(stage, row[f"{stage}/step"], k[len(stage) + 1:])].append(v)
    return out


# ----------------------------------------------------------------------------- crash and resume

FIRST_ATTEMPT = """
import os, sys
from rlhf_jax.metrics import MetricsLogger, TensorBoardBackend, WandbBackend
log = MetricsLogger(sys.argv[1], backends=("jsonl", TensorBoardBackend(), WandbBackend(project="p")),
                    config={"first": "attempt"})
for s in range(1, 11):
    log.log(s, {"lm/loss": 10.0 - s, "lm/nan": float("nan")}, "pretrain")
for s in range(1, 7):
    log.log(s, {"objective/kl": float(s), "note": "old"}, "rl")
    if s in (2, 6):
        log.log(s, {"eval/gold": s / 10}, "eval")
os._exit(1)  # a crash: nothing closed or finished
"""


def expected():
    """(stage, step, metric) -> the value metrics.jsonl keeps: pretrain 1-10, rl 1-4 of the crashed
    attempt (the checkpoint was rl step 4), rl 5-8 re-done with new values; eval 2 old, eval 8 new."""
    out = {}
    for s in range(1, 11):
        out[("pretrain", s, "lm/loss")] = 10.0 - s
        out[("pretrain", s, "lm/nan")] = float("nan")
    for s in range(1, 9):
        out[("rl", s, "objective/kl")] = float(s) if s <= 4 else 100.0 + s
        out[("rl", s, "note")] = "old" if s <= 4 else "new"
    out[("eval", 2, "eval/gold")] = 0.2
    out[("eval", 8, "eval/gold")] = 0.8
    return out


@pytest.fixture(scope="module")
def resumed(tmp_path_factory, wandb_env):
    run_dir = tmp_path_factory.mktemp("crash") / "run"
    proc = subprocess.run([sys.executable, "-c", FIRST_ATTEMPT, str(run_dir)], cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 1, proc.stderr
    state = json.loads((run_dir / "wandb" / WandbBackend.STATE).read_text())
    before = {"wandb_dirs": wandb_offline_run(run_dir)[0], "tb_files": tensorboard_events(run_dir)[0],
              "wandb_id": state["id"]}
    assert len(before["wandb_dirs"]) == 1 and len(before["tb_files"]) == 1

    log = MetricsLogger(run_dir, backends=("jsonl", "tensorboard", WandbBackend(project="p")),
                        resume=True, config=CONFIG)
    assert log.truncate_after("rl", 4) == 3  # rl 5, rl 6, eval 6
    assert log.truncate_after("eval", 4) == 0
    for s in range(5, 9):
        log.log(s, {"objective/kl": 100.0 + s, "note": "new"}, "rl")
    log.log(8, {"eval/gold": 0.8}, "eval")
    log.close()
    return run_dir, before


def assert_once_with_newest(triples, want):
    dup = {k: v for k, v in triples.items() if len(v) != 1}
    assert not dup, f"duplicated: {sorted(dup)[:5]}"
    assert set(triples) == set(want)
    for key, value in want.items():
        got = triples[key][0]
        if isinstance(value, float) and value != value:
            assert got != got, key
        elif isinstance(value, float):
            assert got == pytest.approx(value, rel=1e-6), key
        else:
            assert got == value, key


def test_metrics_jsonl_is_the_reference(resumed):
    run_dir, _ = resumed
    triples = defaultdict(list)
    for r in read_metrics(run_dir):
        for k, v in r.items():
            if k not in ("stage", "step", "time"):
                triples[(r["stage"], r["step"], k)].append(v)
    assert_once_with_newest(triples, expected())


def test_tensorboard_event_files_hold_each_step_once_with_the_newest_value(resumed):
    run_dir, before = resumed
    files, scalars, text, _ = tensorboard_events(run_dir)
    triples = defaultdict(list)
    for (tag, step), values in scalars.items():
        if tag.startswith(("config/", "_hparams_/")):
            continue
        stage, metric = tag.removesuffix("/text_summary").split("/", 1)  # strings: text summaries
        triples[(stage, step, metric)] += values
    assert_once_with_newest(triples, expected())
    assert len(files) == 1 and files[0] not in before["tb_files"]  # rebuilt: the old file is gone


def test_wandb_offline_run_holds_each_step_once_with_the_newest_value(resumed):
    run_dir, before = resumed
    dirs, rows, _, metrics = wandb_offline_run(run_dir)
    assert_once_with_newest(wandb_triples(rows), expected())
    assert [row["_step"] for row in rows] == list(range(len(read_metrics(run_dir))))  # step = line
    assert len(dirs) == 1 and dirs[0] not in before["wandb_dirs"]  # one offline run, rebuilt
    assert dirs[0].name.endswith("-" + before["wandb_id"])  # the same W&B run id after the resume
    last = wandb_records(next(dirs[0].glob("run-*.wandb")))[-1]
    assert last.WhichOneof("record_type") == "exit"  # written out completely when close() returned
    for stage in ("pretrain", "rl", "eval"):  # one x-axis per stage
        assert metrics[f"{stage}/*"] == f"{stage}/step"


def test_resolved_config_reaches_wandb_and_tensorboard(resumed):
    run_dir, _ = resumed
    config = wandb_offline_run(run_dir)[2]
    assert config["ppo"] == {"lr": 1e-5, "kl": {"beta": 0.05}} and config["run"]["seed"] == 3
    assert "first" not in config  # the rebuilt run carries this session's config
    _, _, text, hparams = tensorboard_events(run_dir)
    assert "lr: 1.0e-05" in text["config/text_summary"] and "beta: 0.05" in text["config/text_summary"]
    assert hparams["ppo.lr"] == pytest.approx(1e-5) and hparams["run.out_dir"] == "runs/x"
    assert hparams["logging.tensorboard"] is True and hparams["logging.wandb.tags"] == '["a"]'


def test_fresh_start_replaces_the_earlier_attempt(tmp_path, wandb_env):
    """resume=False (no checkpoint to resume): metrics.jsonl starts afresh and so do the mirrors:
    TensorBoard's old events and the old W&B offline run are gone; a new W&B run id."""
    ids = []
    for attempt in range(2):
        with MetricsLogger(tmp_path, backends=("jsonl", "tensorboard", "wandb")) as log:
            log.log(1, {"loss": float(attempt)}, "sft")
        ids.append(json.loads((tmp_path / "wandb" / WandbBackend.STATE).read_text())["id"])
    assert ids[0] != ids[1]
    files, scalars, _, _ = tensorboard_events(tmp_path)
    assert len(files) == 1 and {k: v for k, v in scalars.items() if k[0] == "sft/loss"} == {
        ("sft/loss", 1): [1.0]}
    dirs, rows, _, _ = wandb_offline_run(tmp_path)
    assert len(dirs) == 1 and dirs[0].name.endswith(ids[1])
    assert dict(wandb_triples(rows)) == {("sft", 1, "loss"): [1.0]}


def test_a_backend_turned_on_in_a_rerun_is_filled_from_metrics_jsonl(tmp_path):
    with MetricsLogger(tmp_path) as log:  # the first attempt: jsonl only
        for s in range(1, 4):
            log.log(s, {"loss": float(s)}, "pretrain")
    with MetricsLogger(tmp_path, backends=("jsonl", "tensorboard"), resume=True) as log:
        log.truncate_after("pretrain", 2)
        log.log(3, {"loss": 30.0}, "pretrain")
    _, scalars, _, _ = tensorboard_events(tmp_path)
    assert dict(scalars) == {("pretrain/loss", 1): [1.0], ("pretrain/loss", 2): [2.0],
                             ("pretrain/loss", 3): [30.0]}  # no config given: no config text


def test_close_reports_a_failed_rebuild_in_one_line_instead_of_raising(tmp_path, capsys):
    class Flaky(Backend):
        name = "flaky"
        open = write = close = lambda self, *a: None

        def sync(self, records):
            raise OSError("disk full\nmore")

    with MetricsLogger(tmp_path) as log:
        log.log(1, {"a": 1.0}, "rl")
    log = MetricsLogger(tmp_path, backends=("jsonl", Flaky()), resume=True)
    log.close()  # e.g. in a `finally` while the run fails for another reason: that error wins
    err = capsys.readouterr().err.strip()
    assert err == ("rlhf_jax: could not bring flaky in line with metrics.jsonl (OSError: disk full); "
                   "the next resume rebuilds them")


# ----------------------------------------------------------------------------- W&B online (fake)


class FakeWandb(types.ModuleType):
    """Enough of the ``wandb`` module for the backend, with a server: {run id: history rows}.
    A row's W&B step is its position; a step below the run's next one is ignored (as W&B does)."""

    def __init__(self, rewind=True):
        super().__init__("wandb")
        self.server, self.inits, self.rewind = {}, [], rewind

    def init(self, **kw):
        self.inits.append({k: kw.get(k) for k in ("id", "resume", "resume_from", "mode")})
        if kw.get("resume_from"):
            run_id, step = kw["resume_from"].split("?_step=")
            if not self.rewind:
                raise RuntimeError("run rewind is not enabled for this account\nsecond line")
            del self.server[run_id][int(step):]
        else:
            run_id = kw["id"]
            assert kw["resume"] == "allow"
            self.server.setdefault(run_id, [])
        return FakeRun(self.server[run_id], run_id)


class FakeRun:
    def __init__(self, rows, run_id):
        self.rows, self.id, self.starting_step, self.finished = rows, run_id, len(rows), False
        self.axes = {}

    def define_metric(self, name, step_metric=None):
        self.axes[name] = step_metric

    def log(self, data, step):
        assert not self.finished
        if step < len(self.rows):
            return  # W&B: "steps must be monotonically increasing, so this data will be ignored"
        assert step == len(self.rows)
        self.rows.append(dict(data))

    def finish(self):
        self.finished = True


def online_attempt(run_dir, resume, rl_values, truncate=None):
    """One attempt that 'crashes' (never closes): pretrain 1-3 (fresh only), then rl steps."""
    log = MetricsLogger(run_dir, backends=("jsonl", WandbBackend(mode="online", project="p")),
                        resume=resume, config={"a": 1})
    if truncate is not None:
        log.truncate_after("rl", truncate)
    if not resume:
        for s in range(1, 4):
            log.log(s, {"loss": float(s)}, "pretrain")
    for s, v in rl_values:
        log.log(s, {"kl": v}, "rl")
    return log


def online_want():
    """pretrain 1-3, rl 1-4 of the first attempt, rl 5-8 re-done: each once."""
    want = {("pretrain", s, "loss"): [float(s)] for s in range(1, 4)}
    want.update({("rl", s, "kl"): [float(s) if s <= 4 else 100.0 + s] for s in range(1, 9)})
    return want


def test_online_resume_rewinds_the_server_run_to_the_shared_lines(tmp_path, monkeypatch):
    fake = FakeWandb(rewind=True)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    online_attempt(tmp_path, False, [(s, float(s)) for s in range(1, 7)])  # crash after rl 6
    run_id = fake.inits[0]["id"]
    assert len(fake.server[run_id]) == 9
    log = online_attempt(tmp_path, True, [(s, 100.0 + s) for s in range(5, 9)], truncate=4)
    log.close()
    # resumed (the server said: 9 lines), then rewound to the 7 lines metrics.jsonl kept
    assert fake.inits[1:] == [{"id": run_id, "resume": "allow", "resume_from": None, "mode": "online"},
                              {"id": None, "resume": None, "resume_from": f"{run_id}?_step=7",
                               "mode": "online"}]
    want = online_want()
    assert wandb_triples(fake.server[run_id]) == want

    # a resume that dropped nothing: continues the run, no rewind, nothing sent twice
    n_inits = len(fake.inits)
    online_attempt(tmp_path, True, [(9, 109.0)], truncate=8).close()
    assert [i["resume_from"] for i in fake.inits[n_inits:]] == [None]
    want[("rl", 9, "kl")] = [109.0]
    assert wandb_triples(fake.server[run_id]) == want


def test_online_refused_rewind_continues_in_a_new_run_with_the_whole_history(tmp_path, monkeypatch,
                                                                              capsys):
    fake = FakeWandb(rewind=False)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    online_attempt(tmp_path, False, [(s, float(s)) for s in range(1, 7)])
    old_id = fake.inits[0]["id"]
    online_attempt(tmp_path, True, [(s, 100.0 + s) for s in range(5, 9)], truncate=4).close()
    new_id = json.loads((tmp_path / "wandb" / WandbBackend.STATE).read_text())["id"]
    assert new_id != old_id and set(fake.server) == {old_id, new_id}
    err = capsys.readouterr().err
    assert f"W&B did not rewind run {old_id} to step 7 (RuntimeError: run rewind is not enabled" in err
    assert f"to a new W&B run {new_id}" in err
    assert wandb_triples(fake.server[new_id]) == online_want()
    assert len(fake.server[old_id]) == 9  # the crashed attempt's run, as it was


# ----------------------------------------------------------------------------- errors and config


@pytest.mark.parametrize("backend, package", [("tensorboard", "tensorboardX"), ("wandb", "wandb")])
def test_missing_package_is_one_line_naming_the_requirements_file(tmp_path, monkeypatch, backend,
                                                                  package):
    monkeypatch.setitem(sys.modules, package, None)  # import fails
    with pytest.raises(MissingBackendError) as info:
        MetricsLogger(tmp_path / "run", backends=("jsonl", backend))
    msg = str(info.value)
    assert "\n" not in msg and f"needs the package {package!r}" in msg
    assert msg.endswith("pip install -r requirements-logging.txt")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()

    section = LoggingConfig(tensorboard=backend == "tensorboard",
                            wandb=WandbConfig() if backend == "wandb" else None)
    with pytest.raises(ConfigError) as info:
        check_backends(section)
    assert str(info.value) == msg and msg.startswith(f"logging.{backend}: ")
    check_backends(LoggingConfig())  # nothing turned on: nothing to import
    check_backends(LoggingConfig(wandb=WandbConfig(mode="disabled")))


def test_mirrors_need_jsonl_and_names_are_checked(tmp_path):
    with pytest.raises(ValueError, match="mirrors metrics.jsonl .* add the 'jsonl' backend"):
        MetricsLogger(tmp_path, backends=("tensorboard",))
    with pytest.raises(ValueError, match="unknown metrics backend 'wandbb'; did you mean 'wandb'?"):
        MetricsLogger(tmp_path, backends=("jsonl", "wandbb"))
    with pytest.raises(ValueError, match="W&B mode must be one of offline, online"):
        WandbBackend(mode="disabled")


def write(tmp_path, text):
    path = tmp_path / "exp.yaml"
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def test_logging_section_from_yaml_and_overrides(tmp_path):
    cfg = load_config(ExperimentConfig)
    assert cfg.logging == LoggingConfig(tensorboard=False, wandb=None)
    assert logging_backends(cfg.logging) == ("jsonl",)

    path = write(tmp_path, """
        logging:
          tensorboard: true
          wandb: {mode: offline, project: x, tags: [a, b]}
        """)
    cfg = load_config(ExperimentConfig, path)
    assert cfg.logging == LoggingConfig(True, WandbConfig(mode="offline", project="x", tags=("a", "b")))
    names = logging_backends(cfg.logging)
    assert names[0] == "jsonl" and isinstance(names[1], TensorBoardBackend)
    assert isinstance(names[2], WandbBackend) and (names[2].mode, names[2].project) == ("offline", "x")

    cfg = load_config(ExperimentConfig, path, ["logging.wandb.mode=online", "logging.wandb.group=g",
                                               "logging.tensorboard=false"])
    assert cfg.logging == LoggingConfig(False, WandbConfig("online", "x", group="g", tags=("a", "b")))
    cfg = load_config(ExperimentConfig, overrides=["logging.wandb.mode=offline"])  # creates the section
    assert cfg.logging.wandb == WandbConfig(mode="offline")
    cfg = load_config(ExperimentConfig, path, ["logging.wandb=null"])
    assert cfg.logging.wandb is None
    cfg = load_config(ExperimentConfig, overrides=["logging.wandb.mode=disabled"])
    assert logging_backends(cfg.logging) == ("jsonl",)

    def error(*overrides, file=path):
        with pytest.raises(ConfigError) as info:
            load_config(ExperimentConfig, file, list(overrides))
        assert "\n" not in str(info.value)
        return str(info.value)

    assert error("logging.wandb.mode=onlin") == (
        "override 'logging.wandb.mode=onlin': 'logging.wandb.mode' must be one of 'offline', "
        "'online', 'disabled', got 'onlin'; did you mean 'online'?")
    assert "unknown key 'logging.wandb.projct'; did you mean 'logging.wandb.project'?" in error(
        "logging.wandb.projct=x")
    assert "'logging.tensorboard' expects bool, got 1 (int)" in error("logging.tensorboard=1")
    assert "'logging.wandb.tags' expects tuple[str, ...], got 'a' (str)" in error("logging.wandb.tags=a")
    bad = write(tmp_path, """
        logging:
          wandb: true
        """)
    assert error(file=bad).startswith(f"{bad}:2: 'logging.wandb' expects a section (WandbConfig) or None")


# ----------------------------------------------------------------------------- pipeline wiring


def test_pipeline_setup_creates_the_backends(tmp_path, wandb_env):
    from rlhf_jax.runner.pipeline import Pipeline

    out = tmp_path / "run"
    cfg = load_config(ExperimentConfig, ROOT / "experiments" / "quickstart.yaml", [
        "task.corpus_size=200", "task.n_eval_prompts=2", "model.vocab_size=64", f"run.out_dir={out}",
        "run.progress=false", "logging.tensorboard=true", "logging.wandb.mode=offline",
        "logging.wandb.project=rlhf-test", "logging.wandb.group=g"])
    check_backends(cfg.logging)
    pipe = Pipeline(cfg)
    assert pipe.validate() is None
    # only the logger is under test: skip the tokenizer training and model init that follow it
    pipe.src.tokenizer = lambda: None
    pipe.src.model = lambda tok, key, init=None: (None, None)
    pipe.setup()
    try:
        assert pipe.logger.backends == ("jsonl", "tensorboard", "wandb")
        wb = pipe.logger.mirrors[1]
        assert (wb.mode, wb.project, wb.group, wb.run.name) == ("offline", "rlhf-test", "g", "run")
    finally:
        pipe.logger.close()
        pipe.ckpt.close()
    files, _, text, hparams = tensorboard_events(out)
    assert len(files) == 1 and f"out_dir: {out}" in text["config/text_summary"]
    assert hparams["logging.wandb.project"] == "rlhf-test"
    dirs, rows, config, _ = wandb_offline_run(out)
    assert len(dirs) == 1 and rows == [] and config["logging"]["wandb"]["group"] == "g"
