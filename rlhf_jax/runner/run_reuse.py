"""A run directory against its config: which keys a rerun may change (and after a non-finite stop,
which), which keys only step 3 reads (runs differing only in those share steps 1-2, and
``run.reuse_from`` copies them), and the copy itself."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

from rlhf_jax.runner.config_loader import ConfigError, config_to_dict
from rlhf_jax.runner.run_dir import read_json, read_yaml
from rlhf_jax.runner.schema import ALGORITHM_SECTIONS


def _diff_keys(a, b, ignore=(), prefix="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            key = f"{prefix}{k}"
            if key in ignore:
                continue
            out += _diff_keys(a.get(k), b.get(k), ignore, key + ".")
        return out
    return [] if a == b else [prefix.rstrip(".")]


_STEP1 = ("tokenizer", "checkpoints/pretrain", "checkpoints/sft")
_REUSED = _STEP1 + ("reward_data.npz", "reward_model.json", "eval_initial.json", "checkpoints/reward")


def _check_reusable(src: str, resolved: dict) -> tuple[str, ...]:
    """Run ``src`` must have finished steps 1-2 with a config that agrees on them; returns what
    ``run.reuse_from`` copies: steps 1-2 (configs that differ only in step 3's keys), or step 1
    alone (configs that differ also in ``reward.*`` keys: the reward model is trained again, on
    the same LM, as a study over reward-model data sizes needs)."""
    src_cfg = os.path.join(src, "config.yaml")
    old = read_yaml(src_cfg, f"run.reuse_from cannot use {src}")
    if old is None:
        raise ConfigError(f"run.reuse_from: no run at {src} (no config.yaml)")
    diff = [k for k in _diff_keys(old, resolved, ignore={"mesh", "distributed"}) if not _step3_key(k)]
    before = [k for k in diff if not k.startswith("reward.")]
    if before:
        raise ConfigError(f"run.reuse_from: {src} was made with a different config before step 3 "
                          f"(differs at {', '.join(before[:5])})")
    trains_rm = (old.get("reward") or {}).get("train", True)
    done = "reward_model.json" if trains_rm else "reward_data.npz"
    if not os.path.exists(os.path.join(src, done)) or (
            trains_rm and read_json(os.path.join(src, done), f"run.reuse_from cannot use {src}") is None):
        raise ConfigError(f"run.reuse_from: {src} has not finished step 2 yet (no {done})")
    return _STEP1 if diff else _REUSED


def _step3_key(key: str) -> bool:
    """A key that only step 3 reads (runs differing only in these can share steps 1-2)."""
    head = key.split(".")[0]
    if head == "run":
        return key != "run.seed"  # the seed of steps 1-2 (run.rl_seed is step 3's own)
    return head in ("algorithm", "lora", "logging", "online") + ALGORITHM_SECTIONS


def _steps12_id(cfg) -> str:
    """A short id of everything steps 1-2 of ``cfg`` depend on (all keys but step 3's)."""
    flat = {}

    def walk(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            elif not _step3_key(f"{prefix}{k}"):
                flat[f"{prefix}{k}"] = v

    walk(config_to_dict(cfg))
    return hashlib.sha1(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _reuse_stages(src: str, dst: str, names: tuple[str, ...] = _REUSED) -> None:
    """Copy the finished artifacts ``names`` (what :func:`_check_reusable` said) of run ``src``
    into the new run ``dst`` (process 0 copies; every process returns once they are there)."""
    from rlhf_jax.sharding.distributed import on_primary

    def copy():
        for name in names:
            a, b = os.path.join(src, name), os.path.join(dst, name)
            if os.path.isdir(a):
                shutil.copytree(a, b, dirs_exist_ok=True)
            elif os.path.exists(a):
                os.makedirs(os.path.dirname(b), exist_ok=True)
                shutil.copy2(a, b)

    on_primary(f"reuse {dst}", copy)


_MAY_DIFFER = {"run.progress", "run.plots", "run.out_dir", "logging", "mesh", "distributed"}
"""Keys a rerun may change freely: progress display, where the directory is (it may be moved), the
logging backends (each is rebuilt from metrics.jsonl), the device mesh (checkpoints restore
onto any mesh) and the processes it spans."""

_REWARD_TRAINING = tuple(f"reward.{k}" for k in ("lr", "warmup", "b1", "b2", "eps", "weight_decay",
                                                  "max_grad_norm", "epochs", "batch_size", "margin",
                                                  "center_coef"))
_STAGE_KEYS = {"pretrain": ("pretrain", "sft", "reward"), "sft": ("sft", "reward"),
               "reward": _REWARD_TRAINING, "rl": ()}


def _may_change(stage: str, diff: list[str], algorithm: str) -> bool:
    """After a non-finite stop in ``stage``, a rerun may change that stage's training settings and
    later stages' (not the model, the data, the comparisons already sampled, or the algorithm's
    name: the kept checkpoints and files depend on them)."""
    if stage not in _STAGE_KEYS:
        return False
    allowed = _STAGE_KEYS[stage] + (algorithm, "eval")
    return all(any(k == a or k.startswith(a + ".") for a in allowed) for k in diff)
