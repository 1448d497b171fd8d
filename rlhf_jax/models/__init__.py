"""Decoder LM (GPT-2 / Llama / Qwen2 families), its KV cache and scalar heads."""

from rlhf_jax.models.config import (PRESETS, TransformerConfig, from_hf_config, get_preset,
                                    to_hf_config)
from rlhf_jax.models.heads import (init_reward_head, init_value_head, last_token_index,
                                   last_token_scalar, token_scalars)
from rlhf_jax.models.kv_cache import init_cache
from rlhf_jax.models.layout import stack_layers, to_layout, unstack_layers
from rlhf_jax.models.transformer import (Transformer, forward, init_params, logits,
                                         param_logical_axes, positions_from_mask)

__all__ = [
    "PRESETS", "TransformerConfig", "from_hf_config", "get_preset", "to_hf_config",
    "init_reward_head", "init_value_head", "last_token_index", "last_token_scalar",
    "token_scalars", "init_cache", "Transformer", "forward", "init_params", "logits",
    "param_logical_axes", "positions_from_mask", "stack_layers", "to_layout", "unstack_layers",
]
