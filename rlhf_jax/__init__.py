"""rlhf_jax: RLHF on language models in JAX/Flax (pretrain/SFT → reward model → PPO)."""

__version__ = "0.1.0"
