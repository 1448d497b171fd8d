"""Hardening through the real CLI: bad input of every kind fails in seconds with one line and
exit 2, before anything is written; a diverging run stops with exit 3 and resumes once fixed;
SIGINT in every stage exits 130 and the rerun resumes; a finished run rerun changes nothing.

One tiny run (module fixture) is the source of every run-directory case: each case works on a
copy of it. The bad-input cases go through the CLI's ``main`` one after another in one
interpreter (``cli_batch.py``), each with its own captured stdout and stderr.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

pytestmark = pytest.mark.slow

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tiny_config import ROOT, TINY  # noqa: E402


# The many short CLI processes share JAX's persistent compilation cache, so each restart of the
# same stage loads its programs instead of compiling them again (results are identical).
_CACHE = {"JAX_COMPILATION_CACHE_DIR": None, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
          "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def _env():
    # PYTHONFAULTHANDLER: a process that has to be stopped for running too long prints its stacks.
    return dict(os.environ, RLHF_JAX_NO_PROGRESS="1", PYTHONPATH=ROOT, PYTHONFAULTHANDLER="1",
                **{k: v for k, v in _CACHE.items() if v is not None})


def _run(cmd, timeout):
    """``subprocess.run`` that, past ``timeout``, stops the process with SIGABRT (so it dumps every
    thread's stack) and fails with the end of what it printed."""
    p = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGABRT)
        try:
            out, err = p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
        raise AssertionError(f"{' '.join(map(str, cmd))} ran past {timeout} s; its stderr ends:\n"
                             f"{err[-6000:]}") from None
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


def cli(*args, timeout=600):
    return _run([sys.executable, "-m", "rlhf_jax", "run", *map(str, args)], timeout)


def tree_digest(path) -> dict:
    """{relative path: sha256} of every file under ``path`` ({} when it does not exist)."""
    out = {}
    for dirpath, _, files in os.walk(path):
        for name in files:
            full = os.path.join(dirpath, name)
            with open(full, "rb") as f:
                out[os.path.relpath(full, path)] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("hardening")
    (root / "tiny.yaml").write_text(TINY)
    _CACHE["JAX_COMPILATION_CACHE_DIR"] = str(root / "jax_cache")
    return root


@pytest.fixture(scope="module")
def base_run(work):
    out = work / "base"
    proc = cli(work / "tiny.yaml", f"run.out_dir={out}")
    assert proc.returncode == 0, proc.stderr
    return out


# ----------------------------------------------------------------------------- case builders
def _jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _pairs(n=12):
    return [{"prompt": f"review {i}:", "chosen": f" great film number {i}", "rejected": f" bad {i}"}
            for i in range(n)]


def _hf_dir(work, name, *, vocab=64, tokenizer_from=None, edit=None):
    """A tiny GPT-2 Hugging Face directory written by our exporter (optionally a tokenizer copied
    in, optionally config.json edited)."""
    import jax

    from rlhf_jax.checkpoint.hf import save_pretrained
    from rlhf_jax.models import get_preset, init_params

    path = work / name
    if not path.exists():
        cfg = get_preset("tiny", vocab_size=vocab, max_len=32)
        save_pretrained(path, cfg, init_params(cfg, jax.random.PRNGKey(0)))
        if tokenizer_from is not None:
            for f in os.listdir(tokenizer_from):
                shutil.copy(os.path.join(tokenizer_from, f), path / f)
        if edit is not None:
            c = json.loads((path / "config.json").read_text())
            edit(c)
            (path / "config.json").write_text(json.dumps(c) if not isinstance(c, str) else c)
    return path


def _copy_run(base_run, work, name, damage):
    dst = work / name
    if not dst.exists():
        shutil.copytree(base_run, dst)
        damage(dst)
    return dst


def _truncate_checkpoints(stage):
    def damage(run):
        for dirpath, _, files in os.walk(run / "checkpoints" / stage):
            for f in files:
                open(os.path.join(dirpath, f), "wb").close()
        os.remove(run / "summary.json")
    return damage


def _write(rel, data):
    def damage(run):
        p = run / rel
        if p.is_dir():
            for f in os.listdir(p):
                (p / f).write_bytes(data)
        else:
            p.write_bytes(data)
    return damage


# Each case: id -> (build(work, base_run) -> (args, run dir to watch or None), words the line names).
def _cfg_file(text, name):
    def build(work, base):
        p = work / f"{name}.yaml"
        p.write_bytes(text if isinstance(text, bytes) else text.encode())
        return [p, f"run.out_dir={work / ('out_' + name)}"], work / f"out_{name}"
    return build


def _over(*overrides):
    def build(work, base):
        out = work / ("out_" + hashlib.md5(repr(overrides).encode()).hexdigest()[:8])
        return [work / "tiny.yaml", f"run.out_dir={out}", *overrides], out
    return build


def _data(key, name, content, *extra):
    def build(work, base):
        p = work / name
        if callable(content):
            content(p)
        else:
            p.write_bytes(content if isinstance(content, bytes) else content.encode())
        out = work / f"out_data_{name}"
        return [work / "tiny.yaml", f"run.out_dir={out}", f"data.{key}={p}", *extra], out
    return build


def _model(key, make, *extra):
    def build(work, base):
        path = make(work, base)
        out = work / f"out_model_{os.path.basename(str(path))}"
        return [work / "tiny.yaml", f"run.out_dir={out}", f"model.{key}={path}", *extra], out
    return build


def _rundir(name, damage, *extra):
    def build(work, base):
        run = _copy_run(base, work, name, damage)
        return [work / "tiny.yaml", f"run.out_dir={run}", *extra], run
    return build


def _outdir(make):
    def build(work, base):
        out = make(work)
        return [work / "tiny.yaml", f"run.out_dir={out}"], None
    return build


def _file_at(work, name):
    p = work / name
    p.write_text("not a directory")
    return p


def _tok(base):
    return base / "tokenizer"


TRL = "prompts.jsonl"
CASES = {
    # --- config files
    "cfg-typo": (_cfg_file("model:\n  preset: tiny\nppo:\n  iteratons: 3\n", "typo"), ["typo.yaml:4", "ppo.iteratons"]),
    "cfg-type": (_cfg_file("ppo:\n  epochs: two\n", "type"), ["type.yaml:2", "ppo.epochs"]),
    "cfg-not-utf8": (_cfg_file(b"ppo:\n  lr: 1e-4 \xff\n", "utf8"), ["utf8.yaml:2", "UTF-8"]),
    "cfg-recursive-alias": (_cfg_file("a: &x\n  b: *x\n", "alias"), ["alias.yaml", "recursive"]),
    "cfg-bad-yaml": (_cfg_file("ppo: [1, 2\n", "syntax"), ["syntax.yaml", "invalid YAML"]),
    "cfg-duplicate-key": (_cfg_file("ppo:\n  lr: 1\n  lr: 2\n", "dup"), ["dup.yaml:3", "duplicate key"]),
    "cfg-top-level-list": (_cfg_file("- 1\n- 2\n", "toplist"), ["toplist.yaml", "mapping"]),
    "cfg-missing-base": (_cfg_file("base: nowhere.yaml\n", "nobase"), ["nobase.yaml", "nowhere.yaml"]),
    "cfg-section-is-value": (_cfg_file("ppo: 5\n", "secval"), ["secval.yaml:1", "'ppo'"]),
    "cfg-inf-in-file": (_cfg_file("reward:\n  lr: .inf\n", "inffile"), ["inffile.yaml:2", "reward.lr", "finite"]),
    "cfg-missing-file": (lambda w, b: ([w / "nope.yaml"], None), ["nope.yaml"]),
    "cfg-is-directory": (lambda w, b: ([w], None), [str("hardening")]),
    # --- overrides
    "ovr-lr-inf": (_over("ppo.lr=.inf"), ["ppo.lr", "finite"]),
    "ovr-lr-nan": (_over("ppo.lr=.nan"), ["ppo.lr", "finite"]),
    "ovr-tau-inf": (_over("reward.tau=.inf"), ["reward.tau", "finite"]),
    "ovr-negative-lr": (_over("ppo.lr=-1"), ["ppo.lr", ">= 0"]),
    "ovr-empty-section": (_over("ppo.kl="), ["ppo.kl", "section"]),
    "ovr-given-twice": (_over("ppo.lr=1e-3", "ppo.lr=2e-3"), ["ppo.lr=1e-3", "ppo.lr=2e-3"]),
    "ovr-no-equals": (_over("ppo.lr"), ["ppo.lr", "missing '='"]),
    "ovr-typo": (_over("ppo.lrr=1"), ["ppo.lrr", "did you mean 'ppo.lr'"]),
    "ovr-unknown-algorithm": (_over("algorithm=zzz"), ["algorithm", "zzz", "'grpo'"]),
    "ovr-other-algorithm": (_over("grpo.group_size=4"), ["grpo.group_size", "'ppo'"]),
    "ovr-negative-width": (_over("model.d_model=-3"), ["model.d_model", ">= 1"]),
    "ovr-zero-layers": (_over("model.n_layers=0"), ["model.n_layers", ">= 1"]),
    "ovr-width-not-heads": (_over("model.d_model=30"), ["model.d_model=30", "heads"]),
    "ovr-preferences-format": (_over("data.preferences_format=hhh"), ["data.preferences_format", "'hh'"]),
    "ovr-k-too-small": (_over("reward.k=1"), ["reward.k"]),
    "ovr-minibatches": (_over("ppo.minibatches=3"), ["minibatches"]),
    "ovr-too-long": (_over("data.max_prompt_len=40"), ["max_prompt_len", "max_len"]),
    "ovr-preset": (_over("model.preset=tinyy"), ["model.preset", "tiny"]),
    "ovr-task": (_over("task.name=sentiment_review"), ["task.name", "sentiment_reviews"]),
    "ovr-group-of-one": (_over("algorithm=grpo", "grpo.group_size=1"), ["grpo", "group_size"]),
    "ovr-temperature": (_over("eval.temperature=0"), ["eval.temperature"]),
    "ovr-float-for-int": (_over("ppo.epochs=1.5"), ["ppo.epochs", "int"]),
    "ovr-string-seed": (_over("run.seed=x"), ["run.seed", "int"]),
    "ovr-reward-preset": (_over("reward.init=scratch", "reward.preset=hugee"), ["reward.preset"]),
    "ovr-mesh-size": (_over("mesh.data=3"), ["mesh.data", "there is 1 device"]),
    "ovr-mesh-two-free": (_over("mesh.fsdp=-1", "mesh.tensor=-1"), ["mesh.fsdp", "mesh.tensor"]),
    "ovr-attention": (_over("model.attention=flash"), ["model.attention", "'xla'"]),
    "ovr-remat": (_over("model.remat=all"), ["model.remat", "'full'"]),
    "ovr-micro-batches": (_over("pretrain.micro_batches=3"), ["pretrain.micro_batches", "pretrain.batch_size"]),
    "ovr-lora-target": (_over("lora.rank=4", "lora.targets=[qkv,o_kernel]"),
                        ["lora.targets", "'qkv'", "qkv_kernel"]),
    "ovr-lora-algorithm": (_over("lora.rank=4", "algorithm=trpo"), ["lora.rank", "'trpo'", "rloo", "lora.rank=0"]),
    "ovr-lora-rank": (_over("lora.rank=-1"), ["lora.rank", "-1"]),
    "ovr-distributed-off": (_over("distributed.process_id=1"), ["distributed.process_id", "distributed.enabled"]),
    "ovr-distributed-id": (_over("distributed.enabled=true", "distributed.num_processes=2",
                                 "distributed.process_id=2"), ["distributed.process_id = 2", "num_processes = 2"]),
    # --- data files
    "data-missing": (lambda w, b: ([w / "tiny.yaml", f"run.out_dir={w / 'out_dm'}",
                                    f"data.preferences={w / 'missing.jsonl'}"], w / "out_dm"),
                     ["data.preferences", "missing.jsonl"]),
    "data-not-utf8": (_data("preferences", "u8.jsonl", b'{"prompt": "a", "chosen": "b\xff", "rejected": "c"}\n'),
                      ["u8.jsonl:1", "UTF-8"]),
    "data-bad-json": (_data("preferences", "bj.jsonl", '{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": \n'), ["bj.jsonl:2", "invalid JSON"]),
    "data-not-object": (_data("preferences", "no.jsonl", '[1, 2]\n'), ["no.jsonl:1", "JSON object"]),
    "data-missing-field": (_data("preferences", "mf.jsonl",
                                 lambda p: _jsonl(p, [{"prompt": "a", "chosen": "b"}] * 3)), ["mf.jsonl:1"]),
    "data-identical-pairs": (_data("preferences", "same.jsonl", lambda p: _jsonl(
        p, [{"prompt": f"p{i}", "chosen": " same", "rejected": " same"} for i in range(5)])),
        ["same.jsonl", "chosen == rejected"]),
    "data-empty": (_data("preferences", "empty.jsonl", ""), ["empty.jsonl", "no records"]),
    "data-extension": (_data("preferences", "prefs.txt", "hello"), ["prefs.txt", "extension"]),
    "data-wrong-type": (_data("preferences", "wt.jsonl", lambda p: _jsonl(
        p, [{"prompt": "a", "chosen": 5, "rejected": "c"}])), ["wt.jsonl:1", "chosen"]),
    "data-format-mismatch": (_data("preferences", "fm.jsonl", lambda p: _jsonl(p, _pairs()),
                                   "data.preferences_format=tldr"), ["fm.jsonl:1"]),
    "data-json-number": (_data("preferences", "num.json", "42"), ["num.json", "list"]),
    "data-prompts-field": (_data("prompts", "pf.jsonl", lambda p: _jsonl(p, [{"question": "x"}] * 3)),
                           ["pf.jsonl:1"]),
    "data-one-prompt": (_data("prompts", "one.jsonl", lambda p: _jsonl(p, [{"prompt": "x"}])),
                        ["one.jsonl", "at least 2"]),
    "data-sft-field": (_data("sft", "sft.jsonl", lambda p: _jsonl(p, [{"prompt": "x"}] * 3), "sft.steps=2"),
                       ["sft.jsonl:1"]),
    "data-text-type": (_data("pretrain_text", "tt.jsonl", lambda p: _jsonl(p, [{"text": 3}])),
                       ["tt.jsonl:1", "text"]),
    "data-text-empty": (_data("pretrain_text", "te.jsonl", lambda p: _jsonl(p, [{"text": "  "}] * 3)),
                        ["te.jsonl", "non-empty"]),
    # --- tokenizers and Hugging Face directories
    "tok-missing": (_model("tokenizer", lambda w, b: w / "no_tok"), ["model.tokenizer", "no_tok"]),
    "tok-no-files": (_model("tokenizer", lambda w, b: (w / "empty_tok").mkdir(exist_ok=True) or w / "empty_tok"),
                     ["empty_tok", "no tokenizer files"]),
    "tok-is-file": (_model("tokenizer", lambda w, b: _file_at(w, "tok_file")), ["tok_file"]),
    "tok-bigger-than-model": (_model("pretrained", lambda w, b: _hf_dir(w, "hf_small_vocab", vocab=64,
                                                                        tokenizer_from=_tok(b))),
                              ["hf_small_vocab", "tokens", "64"]),
    "hf-no-tokenizer": (_model("pretrained", lambda w, b: _hf_dir(w, "hf_no_tok")),
                        ["hf_no_tok", "no tokenizer files"]),
    "hf-no-config": (_model("pretrained", lambda w, b: (w / "hf_empty").mkdir(exist_ok=True) or w / "hf_empty",
                            "model.tokenizer=__TOK__"), ["hf_empty", "config.json"]),
    "hf-zero-heads": (_model("pretrained", lambda w, b: _hf_dir(w, "hf_zero_heads", vocab=512, tokenizer_from=_tok(b),
                                                              edit=lambda c: c.update(n_head=0))),
                      ["hf_zero_heads", "n_head"]),
    "hf-string-width": (_model("pretrained", lambda w, b: _hf_dir(w, "hf_str_width", vocab=512, tokenizer_from=_tok(b),
                                                                edit=lambda c: c.update(n_embd="64"))),
                        ["hf_str_width", "n_embd"]),
    "hf-unknown-arch": (_model("pretrained", lambda w, b: _hf_dir(w, "hf_arch", vocab=512, tokenizer_from=_tok(b),
                                                                edit=lambda c: c.update(model_type="bert"))),
                        ["hf_arch", "bert"]),
    "hf-bad-json": (_model("pretrained", lambda w, b: _hf_dir(w, "hf_badjson", vocab=512, tokenizer_from=_tok(b),
                                                            edit=lambda c: c.clear())),
                    ["hf_badjson"]),
    # --- run directories
    "out-is-file": (_outdir(lambda w: _file_at(w, "out_file")), ["run.out_dir", "out_file", "is a file"]),
    "out-under-file": (_outdir(lambda w: _file_at(w, "out_parent") / "run"), ["run.out_dir", "out_parent"]),
    "out-unwritable": (_outdir(lambda w: "/proc/rlhf_jax_run"), ["run.out_dir", "/proc"]),
    "run-other-config": (_rundir("other_cfg", lambda r: None, "ppo.lr=1e-4"), ["different config", "ppo.lr"]),
    "run-config-corrupt": (_rundir("c_cfg", _write("config.yaml", b"ppo: [\x00")), ["config.yaml", "unreadable"]),
    "run-rm-json-corrupt": (_rundir("c_rm", _write("reward_model.json", b"{\"gain\": ")), ["reward_model.json", "delete it"]),
    "run-npz-corrupt": (_rundir("c_npz", _write("reward_data.npz", b"PK\x03\x04 broken")), ["reward_data.npz", "delete it"]),
    "run-eval-json-corrupt": (_rundir("c_eval", _write("eval_initial.json", b"[1, 2]")), ["eval_initial.json"]),
    "run-summary-corrupt": (_rundir("c_sum", _write("summary.json", b"\xff\xfe")), ["summary.json", "delete it"]),
    "run-tokenizer-corrupt": (_rundir("c_tok", _write("tokenizer", b"garbage")), ["tokenizer", "delete"]),
    "run-reuse-missing": (_over("run.reuse_from=/nonexistent/run"), ["run.reuse_from", "/nonexistent/run"]),
    "run-reuse-other-config": (lambda w, b: ([w / "tiny.yaml", f"run.out_dir={w / 'out_reuse'}",
                                              f"run.reuse_from={b}", "pretrain.lr=0.002"], w / "out_reuse"),
                               ["run.reuse_from", "pretrain.lr"]),
    "run-checkpoint-truncated": (_rundir("c_ckpt", _truncate_checkpoints("pretrain")),
                                 ["checkpoints/pretrain", "unreadable checkpoint"]),
}
LATE = {"run-checkpoint-truncated"}  # found when the stage restores: its progress lines come first


@pytest.fixture(scope="module")
def results(work, base_run):
    """Every case through the CLI's ``main``, one after another in one interpreter (cli_batch.py:
    what each prints is captured at the descriptor level); {id: (proc, digest before, digest
    after, dir)}."""
    built = {}
    for name, (build, _) in CASES.items():
        args, watch = build(work, base_run)
        args = [str(a).replace("__TOK__", str(_tok(base_run))) for a in args]
        built[name] = (args, watch, tree_digest(watch) if watch else None)
    spec, out = work / "cases.json", work / "case_results.json"
    spec.write_text(json.dumps([[name, args] for name, (args, _, _) in built.items()]))
    batch = _run([sys.executable, os.path.join(ROOT, "tests", "runner", "cli_batch.py"), spec, out, "120"],
                 timeout=900)
    assert batch.returncode == 0, batch.stderr[-6000:]
    got = json.loads(out.read_text())
    return {name: (subprocess.CompletedProcess(args, got[name]["rc"], got[name]["stdout"], got[name]["stderr"]),
                   before, tree_digest(watch) if watch else None, watch)
            for name, (args, watch, before) in built.items()}


def test_there_are_at_least_60_cases():
    assert len(CASES) >= 60


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_fails_in_one_line(results, name):
    proc, before, after, watch = results[name]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    if name in LATE:
        lines = [ln for ln in lines if not ln.startswith("[rlhf_jax] ")]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    for word in CASES[name][1]:
        assert word in lines[0], (word, lines[0])
    if before is not None:
        assert after == before, "the run directory changed"
    if before == {}:
        assert not os.path.exists(watch), "a run directory was created for bad input"


def test_finished_run_rerun_changes_nothing(base_run, work):
    before = tree_digest(base_run)
    proc = cli(work / "tiny.yaml", f"run.out_dir={base_run}")
    assert proc.returncode == 0, proc.stderr
    assert tree_digest(base_run) == before
    summary = json.loads((base_run / "summary.json").read_text())
    assert f"{summary['gold_reward_final']:.4f}" in proc.stdout


def test_unreadable_newest_checkpoint_falls_back_to_the_previous(base_run, work):
    run = work / "fallback"
    shutil.copytree(base_run, run)
    os.remove(run / "summary.json")
    steps = sorted(int(s) for s in os.listdir(run / "checkpoints" / "rl") if s.isdigit())
    assert len(steps) == 2, steps
    for dirpath, _, files in os.walk(run / "checkpoints" / "rl" / str(steps[-1])):
        for f in files:
            open(os.path.join(dirpath, f), "wb").close()
    proc = cli(work / "tiny.yaml", f"run.out_dir={run}")
    assert proc.returncode == 0, proc.stderr
    assert f"resumed rl from step {steps[0]}" in proc.stderr
    assert os.path.isdir(run / "checkpoints" / "rl" / f"{steps[-1]}.unreadable")
    ref = json.loads((base_run / "summary.json").read_text())
    got = json.loads((run / "summary.json").read_text())
    assert got["gold_reward_final"] == ref["gold_reward_final"]  # resume is bitwise
    assert_logged_once(run, ("pretrain", "reward", "rl"))


def test_diverging_run_stops_at_exit_3_and_resumes_once_fixed(base_run, work):
    run = work / "diverge"
    proc = cli(work / "tiny.yaml", f"run.out_dir={run}", f"run.reuse_from={base_run}", "ppo.lr=1e9")
    assert proc.returncode == 3, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr
    assert last.startswith("error: rl step ") and "is not finite" in last, last
    stopped = json.loads((run / "stopped.json").read_text())
    assert stopped["stage"] == "rl" and stopped["step"] >= 1
    assert not os.path.exists(run / "summary.json")
    rl_ckpts = os.listdir(run / "checkpoints" / "rl") if (run / "checkpoints" / "rl").exists() else []
    assert all(int(s) < stopped["step"] for s in rl_ckpts if s.isdigit()), rl_ckpts

    fixed = cli(work / "tiny.yaml", f"run.out_dir={run}", f"run.reuse_from={base_run}")
    assert fixed.returncode == 0, fixed.stderr
    assert "resuming it with the changed ppo.lr" in fixed.stderr
    assert not os.path.exists(run / "stopped.json")
    summary = json.loads((run / "summary.json").read_text())
    assert np.isfinite(summary["gold_reward_final"]) and np.isfinite(summary["kl_to_reference_final"])
    lines = [json.loads(x) for x in open(run / "metrics.jsonl")]
    rl_steps = [r["step"] for r in lines if r["stage"] == "rl"]
    assert rl_steps == list(range(1, 5)), rl_steps  # the failed attempt's lines were dropped
    # A stage other than the one that diverged may not be changed under a kept run.
    assert "different config" in cli(work / "tiny.yaml", f"run.out_dir={run}", "model.max_len=48").stderr


SIGINT_STAGES = [("pretrain", "step 1: pretraining"), ("sft", "step 1b: SFT"),
                 ("reward", "step 2: training the reward model"), ("rl", "step 3:")]


def interrupt_once(args, needle, delay, sig=signal.SIGINT):
    """Start the CLI, wait for ``needle`` on stderr, wait ``delay`` s, send ``sig``; (rc, stderr)."""
    env = _env()
    p = subprocess.Popen([sys.executable, "-m", "rlhf_jax", "run", *map(str, args)], cwd=ROOT, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in p.stderr:
        seen.append(line)
        if needle in line:
            break
    else:
        p.wait()
        raise AssertionError(f"never reached {needle!r}: {''.join(seen)[-2000:]}")
    time.sleep(delay)
    p.send_signal(sig)
    rest = p.communicate(timeout=120)[1]
    return p.returncode, "".join(seen) + rest


def test_sigint_in_every_stage_exits_130_and_the_rerun_resumes(work):
    run = work / "sigint"
    args = [work / "tiny.yaml", f"run.out_dir={run}", "pretrain.steps=300", "sft.steps=100",
            "sft.n_demonstrations=64", "sft.batch_size=8", "reward.epochs=20", "ppo.iterations=100"]
    for stage, needle in SIGINT_STAGES:
        for attempt, delay in enumerate((0.5, 3.0)):  # early in the stage, and well into it
            sig = signal.SIGTERM if (stage, attempt) == ("rl", 1) else signal.SIGINT
            rc, err = interrupt_once(args, needle, delay, sig)
            want = 143 if sig == signal.SIGTERM else 130
            assert rc == want, (stage, attempt, rc, err[-3000:])
            assert "Traceback" not in err and "rerun the same command to resume" in err, err[-3000:]
    done = cli(*args)
    assert done.returncode == 0, done.stderr
    assert "resuming the run" in done.stderr
    assert_logged_once(run, ("pretrain", "sft", "reward", "rl"))


def assert_logged_once(run, stages):
    """Every stage logged, in step order, and no line twice (a resume drops what it repeats)."""
    lines = [json.loads(x) for x in open(run / "metrics.jsonl")]
    for stage in stages:
        keys = [(r["step"], tuple(sorted(set(r) - {"time"}))) for r in lines if r["stage"] == stage]
        steps = [k[0] for k in keys]
        assert keys and steps == sorted(steps) and len(set(keys)) == len(keys), (stage, steps)
