"""Sharded against one device, on simulated CPU devices (run by test_sharded_steps.py).

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/sharding/sharded_check.py OUT.json

For each mesh (8,1,1), (2,4,1), (2,2,2): two SFT steps (with the layers per layer, and stacked as a
config that scans over them holds them), two reward-model steps, one PPO and one GRPO iteration,
and greedy sampling (both layouts), each run once on device 0 alone and once on the mesh from the
same inputs. Writes, per mesh and step, the largest absolute difference of the loss/metrics and of
the updated parameters, and the per-device shard shapes of a few parameters and Adam moments.
"""

from __future__ import annotations

import dataclasses
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.algorithms.base import RLSetup, frozen_inputs
from rlhf_jax.algorithms.registry import ALGORITHMS
from rlhf_jax.algorithms.reward_model import init_reward_model, make_rm_loss
from rlhf_jax.algorithms.sft import make_lm_loss
from rlhf_jax.algorithms.step import make_train_step
from rlhf_jax.algorithms.train_state import create_state, make_optimizer
from rlhf_jax.sharding.jit import sharded_init
from rlhf_jax.models import get_preset, init_params, to_layout
from rlhf_jax.sampling import generate
from rlhf_jax.sharding.mesh import batch_shardings, logical_table, make_mesh, path_names, place, tree_shardings

MESHES = [(8, 1, 1), (2, 4, 1), (2, 2, 2)]
V, P, N, EOS, PAD, B = 64, 4, 6, 1, 0, 8


def max_diff(a, b) -> float:
    leaves = jax.tree_util.tree_leaves(jax.tree_util.tree_map(
        lambda x, y: float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)), initial=0.0)),
        a, b))
    return max(leaves, default=0.0)


WATCH_STACKED = {"qkv_kernel": ("params", "layers", "attn", "qkv_kernel"),
                 "adam_mu_up_kernel": ("mu", "layers", "mlp", "up_kernel")}
WATCH = {"qkv_kernel": ("params", "layer_0", "attn", "qkv_kernel"),
         "up_kernel": ("params", "layer_0", "mlp", "up_kernel"),
         "embedding": ("params", "params", "embedding"),
         "adam_mu_up_kernel": ("mu", "layer_0", "mlp", "up_kernel"),
         "adam_nu_embedding": ("nu", "params", "embedding")}


def find_shards(tree, first, *suffix):
    """[global shape, shard shape] of the first leaf whose path holds ``first`` and ends with
    ``suffix`` (a parameter under ``params``, or Adam's ``mu`` / ``nu`` of it)."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        names = path_names(path)
        if first in names and tuple(names[-len(suffix):]) == suffix and hasattr(leaf, "sharding"):
            return [list(leaf.shape), list(leaf.sharding.shard_shape(leaf.shape))]
    raise KeyError((first, suffix))


def host(tree):
    return jax.tree_util.tree_map(np.asarray, tree)


def supervised(mesh, table, loss_fn, params, batches, hparams):
    """Two steps from ``params``: (metrics per step, final params), host arrays."""
    tx = make_optimizer(1e-2, warmup=0)
    step = make_train_step(loss_fn, tx, mesh=mesh, table=table)
    params = jax.tree_util.tree_map(jnp.copy, params)
    if mesh is None:
        state = create_state(params, tx)
    else:  # created sharded: the moments never exist whole on one device
        params = place(params, tree_shardings(params, mesh, table))
        state = sharded_init(lambda p: create_state(p, tx), mesh, table, params)
    metrics = []
    for batch in batches:
        state, m = step(state, batch, hparams)
        metrics.append(host(m))
    return metrics, state


def main(out_path):
    assert len(jax.devices()) == 8, jax.devices()
    cfg = get_preset("tiny", vocab_size=V, max_len=16, n_layers=2)
    table = logical_table(cfg)
    policy = init_params(cfg, jax.random.PRNGKey(0))
    rm = init_reward_model(cfg, init_params(cfg, jax.random.PRNGKey(1)), jax.random.PRNGKey(2))
    rng = np.random.default_rng(0)
    ids = rng.integers(2, V, (B, 12)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[::3, :3] = 0
    lm_batches = [{"input_ids": ids, "attention_mask": mask, "loss_mask": mask},
                  {"input_ids": ids[::-1].copy(), "attention_mask": mask[::-1].copy(), "loss_mask": mask[::-1].copy()}]
    pair_ids = rng.integers(2, V, (B, 2, 10)).astype(np.int32)
    rm_batches = [{"input_ids": pair_ids, "attention_mask": np.ones_like(pair_ids),
                   "mu": np.linspace(0, 1, B).astype(np.float32)}] * 2
    rm_hp = {"margin": jnp.float32(0.0), "center_coef": jnp.float32(0.0)}
    prompts = rng.integers(2, V, (16, P)).astype(np.int32)
    pmask = np.ones_like(prompts)
    pmask[::3, :2] = 0
    prompts[pmask == 0] = PAD
    setup = RLSetup(model_cfg=cfg, rm_cfg=cfg, policy_params=policy, rm_params=rm, prompt_ids=prompts,
                    prompt_mask=pmask, response_len=N, eos_id=EOS, pad_id=PAD, seed=0)

    def rl(name, mesh):
        algo = ALGORITHMS.get(name)
        sec = dataclasses.replace(algo.section(), batch_size=B, epochs=2, minibatches=2, no_eos_penalty=None)
        s = dataclasses.replace(setup, mesh=mesh)
        iteration = algo.make_iteration(s, sec)
        state = algo.init(s, sec, jax.random.PRNGKey(3))
        frozen = frozen_inputs(s, jax.tree_util.tree_map(jnp.copy, policy), {"gain": 1.0, "bias": 0.0})
        hp = algo.hparams(sec)
        metrics = []
        for it in range(2):
            state, m = iteration(state, frozen, algo.batch(s, sec, it), hp)
            metrics.append(host(m))
        return metrics, state

    scfg = cfg.replace(scan_layers=True)  # the same weights, stacked (models.layout)
    spolicy = to_layout(scfg, policy)

    def greedy(mesh, cfg=cfg, policy=policy):
        params, p_ids, p_mask = policy, jnp.asarray(prompts), jnp.asarray(pmask)
        if mesh is not None:
            params = place(policy, tree_shardings(policy, mesh, table))
            p_ids, p_mask = place((p_ids, p_mask), batch_shardings((p_ids, p_mask), mesh))
        out = generate(cfg, params, p_ids, p_mask, rng=jax.random.PRNGKey(0), max_new_tokens=N,
                       temperature=0.0, eos_id=EOS, pad_id=PAD)
        return np.asarray(out.tokens)

    runs = {
        "sft": lambda mesh: supervised(mesh, table, make_lm_loss(cfg), policy, lm_batches, {}),
        "sft-scan": lambda mesh: supervised(mesh, table, make_lm_loss(scfg), spolicy, lm_batches, {}),
        "rm": lambda mesh: supervised(mesh, table, make_rm_loss(cfg), rm, rm_batches, rm_hp),
        "ppo": lambda mesh: rl("ppo", mesh),
        "grpo": lambda mesh: rl("grpo", mesh),
    }
    single = {name: run(None) for name, run in runs.items()}
    tokens_single = greedy(None)
    assert np.array_equal(greedy(None, scfg, spolicy), tokens_single)
    report = {}
    for shape in MESHES:
        mesh = make_mesh(shape)
        rec = {}
        for name, run in runs.items():
            metrics, state = run(mesh)
            ref_metrics, ref_state = single[name]
            train = state.train if hasattr(state, "train") else state
            ref_train = ref_state.train if hasattr(ref_state, "train") else ref_state
            rec[name] = {
                "metrics_diff": max_diff(metrics, ref_metrics),
                "metric_diffs": {k: max(abs(float(a[k]) - float(b[k])) for a, b in zip(metrics, ref_metrics))
                                 for k in metrics[0]},
                "metric_scale": {k: max(abs(float(b[k])) for b in ref_metrics) for k in metrics[0]},
                "params_diff": max_diff(host(train.params), host(ref_train.params)),
                "loss": [float(m["optim/loss"]) for m in metrics],
                "loss_single": [float(m["optim/loss"]) for m in ref_metrics],
                "n_devices_used": len(jax.tree_util.tree_leaves(train.params)[0].sharding.device_set),
            }
            if name in ("sft", "ppo", "sft-scan"):
                watch = WATCH_STACKED if name == "sft-scan" else WATCH
                rec[name]["shards"] = {what: find_shards(train, *path) for what, path in watch.items()}
        toks = greedy(mesh)
        rec["greedy_tokens_equal"] = bool(np.array_equal(toks, tokens_single))
        rec["greedy_scan_tokens_equal"] = bool(np.array_equal(greedy(mesh, scfg, spolicy), tokens_single))
        report["x".join(map(str, shape))] = rec
        print(shape, json.dumps({k: {kk: vv for kk, vv in v.items() if kk in ("metrics_diff", "params_diff")}
                                 if isinstance(v, dict) else v for k, v in rec.items()}), flush=True)
    with open(out_path, "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
