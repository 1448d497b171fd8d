"""Checkpoints: Orbax training state (``orbax``) and Hugging Face safetensors (``hf``)."""

from rlhf_jax.checkpoint.hf import HFCheckpointError, load_pretrained, save_pretrained
from rlhf_jax.checkpoint.orbax import RunCheckpoints

__all__ = ["HFCheckpointError", "RunCheckpoints", "load_pretrained", "save_pretrained"]
