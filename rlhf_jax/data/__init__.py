"""Tokenizers, dataset formats (preferences, prompts, SFT) and the shared array layout."""

from rlhf_jax.data.encoding import (
    batch_indices,
    encode_preferences,
    encode_prompt_response,
    encode_prompts,
)
from rlhf_jax.data.errors import DataError
from rlhf_jax.data.preferences import PREFERENCE_FORMATS, load_preferences, read_records
from rlhf_jax.data.prompts import load_prompts, load_sft
from rlhf_jax.data.tokenizer import Tokenizer, load_tokenizer, render_plain_chat, train_tokenizer

__all__ = [
    "DataError",
    "PREFERENCE_FORMATS",
    "Tokenizer",
    "batch_indices",
    "encode_preferences",
    "encode_prompt_response",
    "encode_prompts",
    "load_preferences",
    "load_prompts",
    "load_sft",
    "load_tokenizer",
    "read_records",
    "render_plain_chat",
    "train_tokenizer",
]
