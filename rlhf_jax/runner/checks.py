"""Cross-checks of an experiment config that no single section can make (run before any compute
by ``Pipeline.validate``): what the chosen algorithm needs from steps 1-2, and micro-batches that
divide their batches."""

from __future__ import annotations

from rlhf_jax.algorithms.registry import ALGORITHMS
from rlhf_jax.runner.config_loader import ConfigError
from rlhf_jax.runner.schema import algorithm_section


def _offline_names() -> list[str]:
    return [n for n in ALGORITHMS.names() if "reward_model" not in ALGORITHMS.get(n).needs(
        ALGORITHMS.get(n).section())]


def check_needs(cfg, algo) -> None:
    """What the chosen algorithm needs from steps 1-2, before anything is read."""
    needs = algo.needs(algorithm_section(cfg))
    if "reward_model" in needs and not cfg.reward.train:
        raise ConfigError(f"algorithm {cfg.algorithm!r} needs a reward model, but reward.train is "
                          f"false: set reward.train=true or choose an algorithm that learns from "
                          f"comparisons directly ({', '.join(_offline_names())})")
    if "gold rewards" in needs and (cfg.task.name is None or cfg.data.preferences):
        raise ConfigError(f"algorithm {cfg.algorithm!r} is set to learn from gold rewards "
                          f"({cfg.algorithm}.reward: gold), which only the built-in task's labeler "
                          f"gives (task.name set, no data.preferences); use {cfg.algorithm}.reward="
                          f"reward_model")
    if {"preferences", "logged responses"} & set(needs) and cfg.task.name is None and not cfg.data.preferences:
        what = "preference pairs" if "preferences" in needs else "step 2's logged responses"
        raise ConfigError(f"algorithm {cfg.algorithm!r} learns from {what}, and this run "
                          f"has no source of them: set data.preferences to a TRL / HH / TL;DR "
                          f"preference file, or task.name to a built-in task (its simulated "
                          f"labelers compare the step-2 samples)")


def check_micro_batches(cfg) -> None:
    """Each supervised stage's ``micro_batches`` must divide its ``batch_size``."""
    for name in ("pretrain", "sft", "reward"):
        sc = getattr(cfg, name)
        if sc.batch_size % sc.micro_batches:
            raise ConfigError(f"{name}.micro_batches ({sc.micro_batches}) must divide {name}.batch_size "
                              f"({sc.batch_size}): gradients are accumulated over equal slices")


def check_lora(cfg, algo) -> None:
    """``lora.*``: known kernel names, and an algorithm that can train adapters."""
    from rlhf_jax.models.lora import TARGETS

    lc = cfg.lora
    bad = [t for t in lc.targets if t not in TARGETS]
    if bad:
        raise ConfigError(f"lora.targets: unknown kernel {bad[0]!r}; the kernels are "
                          f"{', '.join(TARGETS)}")
    if lc.rank > 0 and not lc.targets:
        raise ConfigError("lora.targets is empty: name the kernels that get adapters")
    if lc.rank > 0 and not algo.trains_adapters:
        from rlhf_jax.algorithms.base import ALGORITHMS

        ok = [n for n in ALGORITHMS.names() if ALGORITHMS.get(n).trains_adapters]
        raise ConfigError(f"lora.rank = {lc.rank}: algorithm {cfg.algorithm!r} trains the whole "
                          f"policy (LoRA adapters: {', '.join(ok)}); set lora.rank=0")


def check_run(cfg, algo) -> None:
    """Every cross-key check of a run's config that needs no file (before any compute)."""
    check_needs(cfg, algo)
    check_micro_batches(cfg)
    check_lora(cfg, algo)
    if cfg.reward.init == "scratch" and cfg.reward.preset is not None:
        from rlhf_jax.models import get_preset

        try:
            get_preset(cfg.reward.preset)
        except KeyError as e:
            raise ConfigError(f"reward.preset: {e.args[0]}") from None
