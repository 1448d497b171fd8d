"""rlhf_jax: RLHF on language models in JAX/Flax (pretrain/SFT → reward model → RL by algorithm name)."""

__version__ = "0.1.0"
