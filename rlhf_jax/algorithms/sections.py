"""Config sections shared by the training stages and the RL algorithms (frozen dataclasses).

``OptimizerFields`` is the AdamW + clipping + warmup knob set every stage inherits; ``RLConfig`` the
fields every on-policy algorithm has (rollout budget, reward shaping, the policy-gradient choices,
KL); ``PPOConfig`` adds the critic (PPO, A2C), ``PGConfig`` the critic-free advantage estimators
(REINFORCE, RLOO, GRPO, Dr. GRPO, ReMax and their descendants). A named algorithm's section is one of
these with its own defaults (:func:`preset_section`).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import field
from typing import Literal, Optional

from rlhf_jax.losses.pg import AGGREGATIONS, CLIPS, RATIOS
from rlhf_jax.losses.registry import KL_ESTIMATORS


def ranged(default, lo=None, hi=None):
    """A field with an inclusive value range checked by the config loader (None: open)."""
    return field(default=default, metadata={"range": (lo, hi)})


def chosen(default, registry):
    """A string field whose value must be a name registered in ``registry``."""
    return field(default=default, metadata={"choices": tuple(registry.names())})


@dataclasses.dataclass(frozen=True)
class OptimizerFields:
    """AdamW with global-norm gradient clipping and a linear warmup (``train_state.make_optimizer``)."""
    lr: float = ranged(1e-3, 0.0)            # peak learning rate
    warmup: int = ranged(0, 0)               # linear warmup steps
    b1: float = ranged(0.9, 0.0, 1.0)        # Adam β1
    b2: float = ranged(0.95, 0.0, 1.0)       # Adam β2
    eps: float = ranged(1e-5, 0.0)           # Adam ε (1e-5 as in the JAX RLHF reproduction)
    weight_decay: float = ranged(0.0, 0.0)   # decoupled weight decay
    max_grad_norm: float = ranged(1.0, 0.0)  # clip the global gradient norm to this (0: off)


def optimizer_kwargs(section) -> dict:
    """The ``make_optimizer`` keyword arguments of a section (its lr is passed separately)."""
    return {k: getattr(section, k) for k in ("warmup", "b1", "b2", "eps", "weight_decay", "max_grad_norm")}


def section_optimizer(section):
    """``make_optimizer`` at the section's ``lr`` with its AdamW settings (no schedule length)."""
    from rlhf_jax.algorithms.train_state import make_optimizer

    return make_optimizer(section.lr, **optimizer_kwargs(section))


@dataclasses.dataclass(frozen=True)
class KLConfig:
    """KL(π‖π_ref): where it enters the objective, its estimator and its coefficient β."""
    placement: Literal["reward", "loss", "none"] = "reward"  # per-token penalty in the reward
    #   (Ziegler 2019), a separate loss term β·AGG(k) against the reference (GRPO), or none
    estimator: str = chosen("k1", KL_ESTIMATORS)  # k1 | k2 | k3 (Schulman's estimators)
    controller: Literal["adaptive", "fixed"] = "adaptive"  # adaptive: Ziegler et al. 2019, driven
    #   by the measured k1 KL per response; with placement 'none' β is unused and stays put
    beta: float = ranged(0.05, 0.0)          # initial / fixed KL coefficient
    target: float = ranged(3.0, 1e-6)        # adaptive: target KL (nats per response)
    horizon: int = ranged(2000, 1)           # adaptive: horizon in sampled responses


@dataclasses.dataclass(frozen=True)
class RLConfig(OptimizerFields):
    """What every on-policy algorithm reads: budget, updates, reward shaping, the PG objective, KL."""
    iterations: int = ranged(60, 0)          # rollout + update rounds
    batch_size: int = ranged(64, 1)          # sampled responses per iteration
    epochs: int = ranged(1, 1)               # passes over each rollout batch
    minibatches: int = ranged(1, 1)          # gradient steps per pass
    ratio: str = chosen("token", RATIOS)     # importance ratio: token | sequence (GSPO) | none
    clip: str = chosen("ppo", CLIPS)         # ppo (symmetric / clip-higher) | dual | cispo | none
    clip_eps: float = ranged(0.2, 0.0)       # ε (ε_low with clip-higher)
    clip_eps_high: Optional[float] = ranged(None, 0.0)  # ε_high (None: = clip_eps)
    dual_clip_c: float = ranged(3.0, 1.0)    # clip: dual, lower bound c·A for A < 0
    aggregation: str = chosen("token_mean", AGGREGATIONS)  # how token losses become one number
    ent_coef: float = ranged(0.0, 0.0)       # entropy bonus
    temperature: float = ranged(1.0, 1e-3)   # sampling temperature (the logprobs use it too)
    reward_clip: float = ranged(10.0, 0.0)   # clip the normalised score to ±this (0: off)
    no_eos_penalty: Optional[float] = -1.0   # score of a response with no EOS (None: keep RM score)
    ptx_coef: float = ranged(0.0, 0.0)       # γ·pretraining LM loss mixed in (PPO-ptx, InstructGPT)
    recompute_logprobs: bool = False         # behaviour logprobs from a full forward (else the sampler's)
    kl: KLConfig = KLConfig()
    eval_every: int = ranged(10, 1)          # held-out gold/KL evaluation every this many iterations


@dataclasses.dataclass(frozen=True)
class PPOConfig(RLConfig):
    """Actor-critic: GAE advantages from a learned value function (PPO, A2C)."""
    epochs: int = ranged(4, 1)
    minibatches: int = ranged(4, 1)
    critic: Literal["separate", "shared"] = "separate"  # own backbone from the RM, or a value head on the policy
    critic_lr: float = ranged(1e-3, 0.0)     # the critic's own learning rate
    vf_coef: float = ranged(0.1, 0.0)
    vf_clip: float = ranged(0.2, 0.0)
    gamma: float = ranged(1.0, 0.0, 1.0)
    lam: float = ranged(0.95, 0.0, 1.0)
    whiten_rewards: bool = False


GROUP_ESTIMATORS = ("rloo", "grpo", "dr_grpo")


@dataclasses.dataclass(frozen=True)
class PGConfig(RLConfig):
    """Critic-free: one score per response, a baseline from other samples (k per prompt)."""
    advantage: Literal["reinforce", "rloo", "grpo", "dr_grpo", "remax"] = "rloo"
    group_size: int = ranged(4, 1)           # k responses sampled per prompt (batch_size = prompts × k)
    baseline: Literal["batch_mean", "moving_average"] = "batch_mean"  # advantage: reinforce
    baseline_decay: float = ranged(0.9, 0.0, 1.0)  # baseline: moving_average
    adv_eps: float = ranged(1e-4, 0.0)       # advantage: grpo, A = (R − mean) / (std + adv_eps)
    whiten_advantages: bool = False          # whiten advantages over the whole batch (REINFORCE++)
    dynamic_sampling: bool = False           # mask groups whose k scores are all equal (DAPO)


def preset_section(base: type, name: str, doc: str, **defaults) -> type:
    """A subclass of ``base`` whose fields default to ``defaults`` (nested sections as dicts)."""
    hints = typing.get_type_hints(base)
    fields = []
    for f in dataclasses.fields(base):
        value = defaults.pop(f.name, f.default)
        if isinstance(value, dict):
            value = dataclasses.replace(f.default, **value)
        fields.append((f.name, hints[f.name], field(default=value, metadata=f.metadata)))
    if defaults:
        raise TypeError(f"preset {name!r}: {base.__name__} has no field(s) {sorted(defaults)}")
    cls_name = "".join(p.capitalize() for p in name.split("_")) + "Config"
    cls = dataclasses.make_dataclass(cls_name, fields, bases=(base,), frozen=True)
    cls.__doc__ = doc
    cls.__module__ = __name__
    return cls
