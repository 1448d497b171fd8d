"""The main job on a simulated (2, 2, 2) mesh of 8 CPU devices: steps 1-2 there, then the run
resumed on an (8, 1, 1) mesh (the checkpoints restore onto another mesh shape), against the same
tiny run on one device."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tiny_config import ROOT, TINY  # noqa: E402


def _run(args, devices, timeout=900):
    env = dict(os.environ, RLHF_JAX_NO_PROGRESS="1", PYTHONPATH=ROOT, PYTHONFAULTHANDLER="1",
               JAX_PLATFORMS="cpu")
    if devices > 1:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return subprocess.run([sys.executable, "-m", "rlhf_jax", "run", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    work = tmp_path_factory.mktemp("mesh_run")
    (work / "tiny.yaml").write_text(TINY)
    one = _run([work / "tiny.yaml", f"run.out_dir={work / 'one'}"], devices=1)
    assert one.returncode == 0, one.stderr[-3000:]
    first = _run([work / "tiny.yaml", f"run.out_dir={work / 'mesh'}", "mesh.data=2", "mesh.fsdp=2",
                  "mesh.tensor=2", "--stop-after", "reward"], devices=8)
    assert first.returncode == 0, first.stderr[-3000:]
    second = _run([work / "tiny.yaml", f"run.out_dir={work / 'mesh'}", "mesh.data=8"], devices=8)
    assert second.returncode == 0, second.stderr[-3000:]
    bad = _run([work / "tiny.yaml", f"run.out_dir={work / 'bad'}", "mesh.data=3"], devices=8, timeout=300)
    return {"one": json.loads((work / "one" / "summary.json").read_text()),
            "mesh": json.loads((work / "mesh" / "summary.json").read_text()),
            "second": second, "bad": bad}


def test_a_run_split_over_two_meshes_matches_one_device(runs):
    assert "resuming the run" in runs["second"].stderr
    one, mesh = runs["one"], runs["mesh"]
    for key in ("gold_reward_initial", "gold_reward_best_of_2", "rm_eval_accuracy", "gold_reward_final",
                "proxy_score_final", "kl_to_reference_final", "rm_gain", "rm_bias"):
        assert mesh[key] == pytest.approx(one[key], rel=1e-3, abs=1e-4), key


def test_a_mesh_that_does_not_fit_the_devices_fails_in_one_line(runs):
    bad = runs["bad"]
    assert bad.returncode == 2, bad.stderr[-2000:]
    line = bad.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and "mesh.data" in line and "8 devices" in line, line
