"""The experiment config: frozen dataclasses, one docstring comment per field.

A YAML file maps onto ``ExperimentConfig`` (``runner/config_loader.py`` checks keys, types and
ranges before any compute); ``key.path=value`` overrides on the command line replace fields.
"""

from __future__ import annotations

import dataclasses
from dataclasses import field
from typing import Literal, Optional


def _r(default, lo=None, hi=None):
    return field(default=default, metadata={"range": (lo, hi)})


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    preset: str = "tiny"                 # named TransformerConfig preset (models/config.py)
    pretrained: Optional[str] = None     # a Hugging Face directory to start from instead of a preset
    tokenizer: Optional[str] = None      # AutoTokenizer directory; None: train one on the task corpus
    vocab_size: int = _r(512, 16)        # vocab of the tokenizer trained for the built-in task
    d_model: Optional[int] = None        # override the preset's width (head_dim follows n_heads)
    n_layers: Optional[int] = None       # override the preset's depth
    max_len: int = _r(64, 8)             # longest sequence the pipeline uses


@dataclasses.dataclass(frozen=True)
class TaskConfig:
    name: Optional[str] = "sentiment_reviews"  # built-in task (tasks/registry.py); None with real data
    corpus_size: int = _r(20000, 10)     # generated pretraining texts
    n_eval_prompts: int = _r(32, 1)      # held-out prompts for evaluation
    gold: Optional[str] = None           # gold reward name; None: the task's own


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Real data instead of the built-in task's generated data (local files only)."""
    preferences: Optional[str] = None    # TRL / HH / TL;DR preference file for the reward model
    preferences_format: Optional[str] = None  # 'trl' | 'hh' | 'tldr'; None: detect
    prompts: Optional[str] = None        # prompt file for PPO (None: prompts of the preference file)
    sft: Optional[str] = None            # demonstrations for SFT
    pretrain_text: Optional[str] = None  # jsonl with a 'text' field for step 1 (else the task corpus)
    eval_fraction: float = _r(0.1, 0.0, 0.9)
    max_prompt_len: int = _r(16, 1)      # prompt tokens (left-truncated)
    max_response_len: int = _r(16, 1)    # response tokens (new tokens in PPO)


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    steps: int = _r(600, 0)              # LM steps on the corpus (0: skip)
    batch_size: int = _r(64, 1)
    lr: float = _r(3e-3, 0.0)
    warmup: int = _r(50, 0)
    weight_decay: float = _r(0.0, 0.0)


@dataclasses.dataclass(frozen=True)
class SFTConfig:
    steps: int = _r(0, 0)                # SFT steps on demonstrations (0: skip)
    batch_size: int = _r(32, 1)
    lr: float = _r(1e-3, 0.0)
    n_demonstrations: int = _r(2000, 1)  # built-in task: generated demonstrations


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    n_prompts: int = _r(1500, 2)         # built-in task: prompts sampled for comparisons
    k: int = _r(2, 2, 9)                 # responses per prompt; k > 2 ranks them (InstructGPT)
    tau: float = _r(0.1, 1e-6)           # labeler noise: P(a > b) = sigmoid((g_a - g_b) / tau)
    tie_eps: float = _r(0.02, 0.0)       # |g_a - g_b| below this is a tie (uniform target)
    eval_fraction: float = _r(0.15, 0.01, 0.9)
    sample_temperature: float = _r(1.0, 0.0)
    epochs: int = _r(2, 1)
    batch_size: int = _r(32, 1)
    lr: float = _r(1e-3, 0.0)
    margin: float = _r(0.0, 0.0)
    center_coef: float = _r(0.01, 0.0)   # c·(r_a + r_b)^2 pins the free offset
    init: Literal["policy", "scratch"] = "policy"  # warm-start from the LM, or a fresh backbone
    preset: Optional[str] = None         # own size when init='scratch' (None: the policy's)
    normalize: Literal["mean_std", "reference_zero", "none"] = "mean_std"


@dataclasses.dataclass(frozen=True)
class KLConfig:
    controller: Literal["adaptive", "fixed"] = "adaptive"  # Ziegler et al. 2019
    beta: float = _r(0.05, 0.0)          # initial / fixed KL coefficient
    target: float = _r(3.0, 1e-6)        # adaptive: target KL (nats per response)
    horizon: int = _r(2000, 1)           # adaptive: horizon in rollouts
    estimator: Literal["k1", "k2", "k3"] = "k1"  # in the per-token reward


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    iterations: int = _r(60, 0)          # rollout + update rounds
    batch_size: int = _r(64, 1)          # rollouts per iteration
    minibatches: int = _r(4, 1)
    epochs: int = _r(4, 1)
    lr: float = _r(1e-3, 0.0)
    critic_lr: float = _r(1e-3, 0.0)
    clip_eps: float = _r(0.2, 0.0)
    vf_clip: float = _r(0.2, 0.0)
    vf_coef: float = _r(0.1, 0.0)
    ent_coef: float = _r(0.0, 0.0)
    gamma: float = _r(1.0, 0.0, 1.0)
    lam: float = _r(0.95, 0.0, 1.0)
    whiten_rewards: bool = False
    reward_clip: float = _r(10.0, 0.0)   # clip the normalised score to ±this (0: off)
    temperature: float = _r(1.0, 1e-3)
    no_eos_penalty: Optional[float] = -1.0  # score of a response with no EOS (None: keep RM score)
    ptx_coef: float = _r(0.0, 0.0)       # PPO-ptx: γ·pretraining LM loss mixed in (InstructGPT)
    critic: Literal["separate", "shared"] = "separate"  # separate critic from the RM, or a value head on the policy
    kl: KLConfig = KLConfig()
    eval_every: int = _r(10, 1)


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    samples_per_prompt: int = _r(4, 1)   # gold reward of the policy: mean over samples
    best_of_n: int = _r(16, 1)           # best-of-n baseline of the initial policy
    temperature: float = _r(1.0, 1e-3)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    out_dir: str = "runs/quickstart"     # run directory (resumed when it holds checkpoints)
    seed: int = 0
    checkpoint_every: int = _r(10, 1)    # PPO iterations (pretrain/RM: every 10x that many steps)
    progress: bool = True
    # Start from another run's finished steps 1–2 (tokenizer, LM, reward model, initial eval): PPO
    # variants compared on one reward model. Its config must agree on everything before PPO.
    reuse_from: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    model: ModelConfig = ModelConfig()
    task: TaskConfig = TaskConfig()
    data: DataConfig = DataConfig()
    pretrain: PretrainConfig = PretrainConfig()
    sft: SFTConfig = SFTConfig()
    reward: RewardConfig = RewardConfig()
    ppo: PPOConfig = PPOConfig()
    eval: EvalConfig = EvalConfig()
    run: RunConfig = RunConfig()
