"""The experiment config: frozen dataclasses, one docstring comment per field.

A YAML file maps onto ``ExperimentConfig`` (``runner/config_loader.py`` checks keys, types and
ranges before any compute); ``key.path=value`` overrides on the command line replace fields.
"""

from __future__ import annotations

import dataclasses
from dataclasses import field
from typing import Literal, Optional

from rlhf_jax.algorithms.registry import ALGORITHMS
from rlhf_jax.algorithms.sections import OptimizerFields
from rlhf_jax.algorithms.sections import ranged as _r
from rlhf_jax.data.preferences import PREFERENCE_FORMATS
from rlhf_jax.models.config import ATTENTION, REMAT_POLICIES
from rlhf_jax.models.lora import TARGETS as LORA_TARGETS


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    preset: str = "tiny"                 # named TransformerConfig preset (models/config.py)
    pretrained: Optional[str] = None     # a Hugging Face directory to start from instead of a preset
    tokenizer: Optional[str] = None      # AutoTokenizer directory; None: train one on the task corpus
    vocab_size: int = _r(512, 16)        # vocab of the tokenizer trained for the built-in task
    d_model: Optional[int] = _r(None, 1)  # override the preset's width (head_dim follows n_heads)
    n_layers: Optional[int] = _r(None, 1)  # override the preset's depth
    max_len: int = _r(64, 8)             # longest sequence the pipeline uses
    # How the model computes (any model, preset or pretrained; the weights do not change):
    dtype: str = field(default="float32", metadata={"choices": ("float32", "bfloat16", "float16")})
    # ^ compute dtype: master weights stay float32, logits and log-probs are float32
    attention: str = field(default="auto", metadata={"choices": ATTENTION})  # models/attention.py
    remat: str = field(default="none", metadata={"choices": tuple(REMAT_POLICIES)})  # per-block jax.checkpoint
    scan_layers: Optional[bool] = None   # blocks as one lax.scan (None: from 4 layers on)


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
    preferences_format: Optional[str] = field(  # one of PREFERENCE_FORMATS; None: detect
        default=None, metadata={"choices": tuple(PREFERENCE_FORMATS)})
    prompts: Optional[str] = None        # prompt file for PPO (None: prompts of the preference file)
    sft: Optional[str] = None            # demonstrations for SFT
    pretrain_text: Optional[str] = None  # jsonl with a 'text' field for step 1 (else the task corpus)
    eval_fraction: float = _r(0.1, 0.0, 0.9)
    max_prompt_len: int = _r(16, 1)      # prompt tokens (left-truncated)
    max_response_len: int = _r(16, 1)    # response tokens (new tokens in PPO)


@dataclasses.dataclass(frozen=True)
class PretrainConfig(OptimizerFields):
    steps: int = _r(600, 0)              # LM steps on the corpus (0: skip)
    batch_size: int = _r(64, 1)
    micro_batches: int = _r(1, 1)        # gradient accumulation: the batch in this many equal slices
    lr: float = _r(3e-3, 0.0)
    warmup: int = _r(50, 0)


@dataclasses.dataclass(frozen=True)
class SFTConfig(OptimizerFields):
    steps: int = _r(0, 0)                # SFT steps on demonstrations (0: skip)
    batch_size: int = _r(32, 1)
    micro_batches: int = _r(1, 1)        # gradient accumulation: the batch in this many equal slices
    lr: float = _r(1e-3, 0.0)
    n_demonstrations: int = _r(2000, 1)  # built-in task: generated demonstrations


@dataclasses.dataclass(frozen=True)
class RewardConfig(OptimizerFields):
    n_prompts: int = _r(1500, 2)         # built-in task: prompts sampled for comparisons
    k: int = _r(2, 2, 9)                 # responses per prompt; k > 2 ranks them (InstructGPT)
    tau: float = _r(0.1, 1e-6)           # labeler noise: P(a > b) = sigmoid((g_a - g_b) / tau)
    tie_eps: float = _r(0.02, 0.0)       # |g_a - g_b| below this is a tie (uniform target)
    eval_fraction: float = _r(0.15, 0.01, 0.9)
    sample_temperature: float = _r(1.0, 0.0)
    epochs: int = _r(2, 1)
    batch_size: int = _r(32, 1)
    micro_batches: int = _r(1, 1)        # gradient accumulation: the batch in this many equal slices
    lr: float = _r(1e-3, 0.0)
    warmup: int = _r(10, 0)
    margin: float = _r(0.0, 0.0)
    center_coef: float = _r(0.01, 0.0)   # c·(r_a + r_b)^2 pins the free offset
    init: Literal["policy", "scratch"] = "policy"  # warm-start from the LM, or a fresh backbone
    preset: Optional[str] = None         # own size when init='scratch' (None: the policy's)
    normalize: Literal["mean_std", "reference_zero", "none"] = "mean_std"
    train: bool = True                   # false: make the comparisons but train no reward model (only
    #   for algorithms that need none, e.g. dpo; with one trained they use it only for evaluation)


@dataclasses.dataclass(frozen=True)
class WandbConfig:
    """Weights & Biases run of the pipeline (``metrics/backends.py``); needs requirements-logging.txt."""
    mode: Literal["offline", "online", "disabled"] = "offline"  # offline: files in run_dir/wandb
    #   (`wandb sync` them later); online: streamed to the server; disabled: no W&B run
    project: Optional[str] = None        # W&B project (None: W&B's default)
    entity: Optional[str] = None         # W&B user or team (None: the logged-in user's default)
    name: Optional[str] = None           # run name shown in W&B (None: the run directory's name)
    group: Optional[str] = None          # groups runs in the W&B UI (e.g. one sweep's runs)
    tags: tuple[str, ...] = ()           # W&B tags of the run


@dataclasses.dataclass(frozen=True)
class LoggingConfig:
    """Backends that mirror metrics.jsonl (the source of truth; a resume never duplicates a step)."""
    tensorboard: bool = False            # TensorBoard event files in run_dir/tensorboard
    wandb: Optional[WandbConfig] = None  # a W&B run (None: none)


@dataclasses.dataclass(frozen=True)
class OnlineConfig:
    """Iterated online RLHF (``runner/online.py``): step 3's iterations in ``rounds`` rounds; before
    each later one the current policy's samples are labelled, the reward model continues on all
    comparisons so far and is re-normalised, and RL goes on (online DPO: the new pairs are its data)."""
    rounds: int = _r(1, 1)               # 1: the classic recipe (one reward model)
    n_prompts: int = _r(0, 0)            # new prompts labelled before each later round (0: reward.n_prompts)
    rm_epochs: int = _r(1, 1)            # reward-model epochs over all comparisons so far, continuing
    #   from the last one (it has seen the older ones reward.epochs times already: more overfits them)
    preferences: tuple[str, ...] = ()    # instead of labelling the policy's samples: one preference
    #   file per later round (rounds - 1 of them, in order; formats as data.preferences)


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
    """LoRA in step 3 (``models/lora.py``): the policy trains low-rank adapters ``W + alpha/rank · B·A``
    on the chosen kernels and the optimizer holds only them (and a critic); the reference is the
    base itself (one copy). The final policy is the merged weights (``export`` writes them)."""
    rank: int = _r(0, 0)                 # adapter rank r (0: train the whole policy)
    alpha: float = _r(16.0, 0.0)         # adapters are scaled by alpha / rank
    dropout: float = _r(0.0, 0.0, 0.9)   # dropout on the adapters' input in the training loss
    #   (not in sampling, the old logprobs or evaluation)
    targets: tuple[str, ...] = LORA_TARGETS  # kernels that get adapters (a model has only some:
    #   GPT-2 no gate_kernel); of qkv_kernel, o_kernel, up_kernel, gate_kernel, down_kernel


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    samples_per_prompt: int = _r(4, 1)   # gold reward of the policy: mean over samples
    best_of_n: int = _r(16, 1)           # best-of-n baseline of the initial policy
    temperature: float = _r(1.0, 1e-3)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    out_dir: str = "runs/quickstart"     # run directory (resumed when it holds checkpoints)
    seed: int = 0                        # seeds every stage (step 3 too, unless rl_seed is set)
    rl_seed: Optional[int] = None        # step 3's own seed (rollouts, init, evaluations); runs that
    #   differ only in it share steps 1-2 (a sweep's `seeds` set it)
    checkpoint_every: int = _r(10, 1)    # RL iterations (pretrain/RM and the offline algorithms'
    #   steps, which sample nothing: every 10x that many)
    progress: bool = True
    plots: bool = True                   # report.md's plots (a few seconds per run on a CPU)
    # Start from another run's finished steps 1–2 (tokenizer, LM, reward model, initial eval): PPO
    # variants compared on one reward model. Its config must agree on everything before step 3;
    # where it differs only in reward.* keys, step 1 alone is reused and step 2 is made again.
    reuse_from: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """The device mesh every step runs on (``rlhf_jax/sharding``): data × fsdp × tensor = the
    device count, one of them -1 for the rest. One device: no mesh. A run may resume on another."""
    data: int = _r(-1, -1)               # data parallel: batches split, weights replicated
    fsdp: int = _r(1, -1)                # fully sharded data parallel: batches and weights split
    tensor: int = _r(1, -1)              # tensor parallel: heads, MLP width and vocabulary split


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """Several processes (hosts) as one mesh, through ``jax.distributed`` (read by the ``run``
    command before anything touches a device). Every process runs the same command; process 0
    writes the run directory, which must be on storage every host sees."""
    enabled: bool = False
    coordinator: Optional[str] = None    # "host:port" of process 0; None: JAX finds it (the
    #   JAX_COORDINATOR_ADDRESS variable, SLURM, a Cloud TPU pod slice)
    num_processes: Optional[int] = _r(None, 1)  # None: from the environment, as the coordinator
    process_id: Optional[int] = _r(None, 0)     # this process's index, 0 .. num_processes - 1


_BEFORE = [("model", ModelConfig), ("task", TaskConfig), ("data", DataConfig),
           ("pretrain", PretrainConfig), ("sft", SFTConfig), ("reward", RewardConfig)]
_AFTER = [("lora", LoRAConfig), ("online", OnlineConfig), ("eval", EvalConfig), ("run", RunConfig), ("logging", LoggingConfig),
          ("mesh", MeshConfig), ("distributed", DistributedConfig)]

ALGORITHM_SECTIONS: tuple[str, ...] = tuple(ALGORITHMS.names())
"""One config section per registered algorithm, named after it; only the chosen one is read."""

ExperimentConfig = dataclasses.make_dataclass(
    "ExperimentConfig",
    [(name, cls, field(default=cls())) for name, cls in _BEFORE]
    + [("algorithm", str, field(default="ppo", metadata={"choices": ALGORITHM_SECTIONS}))]
    + [(name, ALGORITHMS.get(name).section, field(default=ALGORITHMS.get(name).section()))
       for name in ALGORITHM_SECTIONS]
    + [(name, cls, field(default=cls())) for name, cls in _AFTER],
    frozen=True)
ExperimentConfig.__module__ = __name__
ExperimentConfig.__doc__ = """The whole experiment: steps 1-2 (model, task, data, pretrain, sft,
reward), ``algorithm`` (step 3, by registered name) and one section per algorithm, eval, run, logging."""


def algorithm_section(cfg):
    """The config section of the chosen algorithm."""
    return getattr(cfg, cfg.algorithm)


def resolved_config(cfg) -> dict:
    """The config as a plain dict, holding only the chosen algorithm's section."""
    from rlhf_jax.runner.config_loader import config_to_dict

    out = config_to_dict(cfg)
    for name in ALGORITHM_SECTIONS:
        if name != cfg.algorithm:
            out.pop(name, None)
    return out


def check_overrides(cfg, overrides) -> None:
    """Command-line overrides must not target the section of an algorithm the run does not use."""
    from rlhf_jax.runner.config_loader import ConfigError, parse_override

    for s in overrides:
        key, _ = parse_override(s)
        head = key.split(".")[0].strip()
        if head in ALGORITHM_SECTIONS and head != cfg.algorithm:
            raise ConfigError(f"override {s!r}: the run uses algorithm {cfg.algorithm!r}, which reads "
                              f"its options from section {cfg.algorithm!r}, not {head!r} (did you mean "
                              f"'{cfg.algorithm}.{key.split('.', 1)[1] if '.' in key else ''}'"
                              f" or 'algorithm={head}'?)")
