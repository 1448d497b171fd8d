"""Two processes on localhost form one mesh (jax.distributed, CPU collectives): data-parallel SFT
steps with each feeding only its own rows match one process on one device, and the ``run`` command
with ``distributed.*`` runs the whole pipeline as two processes, with the summary of one process on
two devices and every file written once, by process 0."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
import multihost_check  # noqa: E402
from tiny_config import TINY  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env(devices: int = 1) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT, PYTHONFAULTHANDLER="1")
    env.pop("XLA_FLAGS", None)
    if devices > 1:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def _both(commands: list[list[str]]) -> list[tuple[str, str]]:
    """Run the commands at once (one process each); their (stdout, stderr), all exited 0."""
    procs = [subprocess.Popen(c, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for c in commands]
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=400))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        assert p.returncode == 0, outs[-1][1][-3000:]
    return outs


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    out = tmp_path / "two.json"
    port = _free_port()
    _both([[sys.executable, os.path.join(HERE, "multihost_check.py"), str(port), str(i), str(out)]
           for i in range(2)])
    two = json.loads(out.read_text())
    assert two["processes"] == 2
    losses, params = multihost_check.train(None)
    np.testing.assert_allclose(two["losses"], losses, rtol=1e-5)
    flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(params)[0]}
    assert flat.keys() == two["params"].keys()
    for k, v in flat.items():
        np.testing.assert_allclose(np.asarray(two["params"][k]), v, atol=2e-5, err_msg=k)  # Adam, lr 1e-2


@pytest.mark.slow
def test_run_command_as_two_processes(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    port = _free_port()
    run = [sys.executable, "-m", "rlhf_jax", "run", str(cfg), "mesh.data=2"]
    outs = _both([run + [f"run.out_dir={tmp_path / 'two'}", "distributed.enabled=true",
                         f"distributed.coordinator=localhost:{port}", "distributed.num_processes=2",
                         f"distributed.process_id={i}"] for i in range(2)])
    one = subprocess.run(run + [f"run.out_dir={tmp_path / 'one'}"], cwd=ROOT, env=_env(devices=2),
                         capture_output=True, text=True, timeout=400)
    assert one.returncode == 0, one.stderr[-3000:]
    assert "summary:" in outs[0][0] and "[rlhf_jax] done" in outs[0][1]
    assert "summary" not in outs[1][0] and "[rlhf_jax]" not in outs[1][1]  # one voice: process 0's
    a, b = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("two", "one"))
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], float) and not k.endswith("time_s"):
            np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-5, err_msg=k)
        elif not k.endswith("time_s"):
            assert a[k] == b[k], k
    lines = {d: [json.loads(x) for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
             for d in ("two", "one")}
    assert [(r["stage"], r["step"], sorted(r)) for r in lines["two"]] == [  # every line written once
        (r["stage"], r["step"], sorted(r)) for r in lines["one"]]
    assert (tmp_path / "two" / "report.md").exists()
