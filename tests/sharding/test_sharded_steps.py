"""Sharded steps equal the single-device ones, on 8 simulated CPU devices (one subprocess runs
``sharded_check.py``: the device count is fixed when JAX starts), and the mesh rules by hand."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
from jax.sharding import PartitionSpec

from rlhf_jax.sharding.mesh import logical_table, mesh_spec, resolve_shape

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = ("sft", "sft-scan", "rm", "ppo", "grpo")
# Metrics that count tokens (a ratio or value that lands on the other side of the clip boundary by a
# float32 rounding changes them by one token: 1/96 of the mean over 4 minibatches of 24 tokens); the rest are
# continuous and must agree to float tolerance.
COUNTS = ("policy/clipfrac", "val/clipfrac")


def _fake_mesh(**shape):
    return SimpleNamespace(shape=shape)


def test_mesh_shape_resolution():
    assert resolve_shape(-1, 1, 1, 8) == (8, 1, 1)
    assert resolve_shape(2, -1, 2, 8) == (2, 2, 2)
    assert resolve_shape(1, 1, 1, 1) == (1, 1, 1)
    for args, words in [((2, 2, 1, 8), "2 × 2 × 1 = 4, but there are 8 devices"),
                        ((-1, -1, 1, 8), "only one mesh axis"), ((3, -1, 1, 8), "do not divide"),
                        ((0, 1, 1, 1), "mesh.data=0")]:
        with pytest.raises(ValueError, match=words.replace("(", r"\(")):
            resolve_shape(*args)


def test_mesh_spec_by_hand():
    mesh = _fake_mesh(data=2, fsdp=4, tensor=2)
    assert mesh_spec(("batch", None), (16, 3), mesh) == PartitionSpec(("data", "fsdp"), None)
    assert mesh_spec(("batch", None), (6, 3), mesh) == PartitionSpec("data", None)  # 8 does not divide 6
    assert mesh_spec(("batch",), (3,), mesh) == PartitionSpec(None)
    assert mesh_spec(("mlp", "embed"), (256, 64), mesh) == PartitionSpec("tensor", "fsdp")
    assert mesh_spec(("vocab", "mlp"), (64, 64), mesh) == PartitionSpec("tensor", None)  # one use per axis
    assert mesh_spec(("kv_heads", None, "head_dim", "embed"), (1, 3, 16, 64), mesh) == \
        PartitionSpec(None, None, None, "fsdp")  # MQA: one KV head is not split
    assert mesh_spec(("embed",), (64,), _fake_mesh(data=8, fsdp=1, tensor=1)) == PartitionSpec(None)


def test_logical_table_names_every_transformer_parameter():
    from rlhf_jax.models import get_preset

    table = logical_table(get_preset("tiny"), get_preset("tiny-llama"))
    assert table[("attn", "qkv_kernel")] == ("kv_heads", None, "head_dim", "embed")
    # a config that scans stacks its layers: the same entries, without the leading layer axis
    assert logical_table(get_preset("tiny", scan_layers=True)) == logical_table(get_preset("tiny"))
    assert table[("mlp", "gate_kernel")] == ("mlp", "embed") and table[("params", "embedding")] == ("vocab", "embed")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("sharded") / "report.json"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu",
               PYTHONPATH=ROOT, PYTHONFAULTHANDLER="1")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "sharding", "sharded_check.py"), str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


MESHES = ["8x1x1", "2x4x1", "2x2x2"]


@pytest.mark.slow
@pytest.mark.parametrize("mesh", MESHES)
@pytest.mark.parametrize("step", STEPS)
def test_sharded_step_equals_one_device(report, mesh, step):
    rec = report[mesh][step]
    assert rec["n_devices_used"] == 8
    assert rec["params_diff"] < 1e-4, rec["params_diff"]
    for a, b in zip(rec["loss"], rec["loss_single"]):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-6)
    for key, diff in rec["metric_diffs"].items():
        if key in COUNTS:
            assert diff <= 1 / 96 + 1e-6, (key, diff)
        else:
            assert diff <= 1e-4 * max(1.0, rec["metric_scale"][key]), (key, diff)


@pytest.mark.slow
@pytest.mark.parametrize("mesh", MESHES)
def test_parameters_and_adam_moments_are_really_split(report, mesh):
    data, fsdp, tensor = map(int, mesh.split("x"))
    for step in ("sft", "ppo", "sft-scan"):
        for name, (shape, shard) in report[mesh][step]["shards"].items():
            full, part = 1, 1
            for n in shape:
                full *= n
            for n in shard:
                part *= n
            assert full == part * fsdp * tensor, (step, name, shape, shard)  # data replicates weights
    s = report["2x2x2"]["sft"]["shards"]
    assert s["qkv_kernel"] == [[4, 3, 16, 64], [2, 3, 16, 32]]  # kv heads over tensor, width over fsdp
    assert s["up_kernel"] == [[256, 64], [128, 32]] and s["embedding"] == [[64, 64], [32, 32]]
    stacked = report["2x2x2"]["sft-scan"]["shards"]  # the stacked layout: the layer axis stays whole
    assert stacked["qkv_kernel"] == [[2, 4, 3, 16, 64], [2, 2, 3, 16, 32]]
    assert stacked["adam_mu_up_kernel"] == [[2, 256, 64], [2, 128, 32]]


@pytest.mark.slow
@pytest.mark.parametrize("mesh", MESHES)
def test_greedy_sampling_is_the_same_sharded(report, mesh):
    assert report[mesh]["greedy_tokens_equal"] and report[mesh]["greedy_scan_tokens_equal"]
