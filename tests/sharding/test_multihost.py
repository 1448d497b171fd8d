"""Two processes on localhost form one mesh (jax.distributed, CPU collectives), run data-parallel
SFT steps with each feeding only its own rows, and match one process on one device."""

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
import multihost_check  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    out = tmp_path / "two.json"
    port = _free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT, PYTHONFAULTHANDLER="1")
    env.pop("XLA_FLAGS", None)
    procs = [subprocess.Popen([sys.executable, os.path.join(HERE, "multihost_check.py"), str(port), str(i), str(out)],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    errs = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        errs.append(err)
        assert p.returncode == 0, err[-3000:]
    two = json.loads(out.read_text())
    assert two["processes"] == 2
    losses, params = multihost_check.train(None)
    np.testing.assert_allclose(two["losses"], losses, rtol=1e-5)
    flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(params)[0]}
    assert flat.keys() == two["params"].keys()
    for k, v in flat.items():
        np.testing.assert_allclose(np.asarray(two["params"][k]), v, atol=2e-5, err_msg=k)  # Adam, lr 1e-2
