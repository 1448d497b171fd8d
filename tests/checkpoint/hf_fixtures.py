"""Helpers for the Hugging Face checkpoint tests: tiny random torch models and safetensors surgery.

Everything is offline: models are built from configs with ``torch.manual_seed`` and saved locally.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.numpy import save_file
from transformers import (GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config,
                          Qwen2ForCausalLM)

VOCAB = 99
MAX_POS = 32

# name -> (model class, config kwargs). 4 query heads, eager attention (exact fp32); 2 layers, except
# "llama_deep": 4 layers, so its config scans over them and its params hold them stacked.
ARCHS = {
    "gpt2": (GPT2LMHeadModel, GPT2Config, dict(
        vocab_size=VOCAB, n_embd=64, n_head=4, n_layer=2, n_positions=MAX_POS, bos_token_id=0,
        eos_token_id=0)),
    # GQA (2 kv heads), tied head, non-default RoPE base.
    "llama_tied": (LlamaForCausalLM, LlamaConfig, dict(
        vocab_size=VOCAB, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
        num_hidden_layers=2, intermediate_size=96, max_position_embeddings=MAX_POS,
        tie_word_embeddings=True, rope_parameters={"rope_type": "default", "rope_theta": 500.0})),
    # GQA, untied head, and Llama's optional attention/MLP biases.
    "llama_untied": (LlamaForCausalLM, LlamaConfig, dict(
        vocab_size=VOCAB, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
        num_hidden_layers=2, intermediate_size=96, max_position_embeddings=MAX_POS,
        tie_word_embeddings=False, attention_bias=True, mlp_bias=True)),
    "llama_deep": (LlamaForCausalLM, LlamaConfig, dict(
        vocab_size=VOCAB, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
        num_hidden_layers=4, intermediate_size=96, max_position_embeddings=MAX_POS,
        tie_word_embeddings=False)),
    # GQA with q/k/v biases (and no o_proj bias), untied head.
    "qwen2": (Qwen2ForCausalLM, Qwen2Config, dict(
        vocab_size=VOCAB, hidden_size=48, num_attention_heads=4, num_key_value_heads=2,
        num_hidden_layers=2, intermediate_size=80, max_position_embeddings=MAX_POS,
        tie_word_embeddings=False)),
}


def build_hf_model(name: str, seed: int = 0) -> torch.nn.Module:
    """A tiny random HF model; every parameter (biases and norm scales included) is perturbed so
    that a mix-up of any two tensors, or a dropped bias, changes the logits."""
    model_cls, config_cls, kw = ARCHS[name]
    torch.manual_seed(seed)
    model = model_cls(config_cls(attn_implementation="eager", **kw)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def batch(seed: int = 0, padded: bool = False, B: int = 3, T: int = 9):
    """(ids, mask) int64; when padded, rows are left-padded by 0, 3 and 5 tokens (pad id 0)."""
    rng = np.random.RandomState(seed)
    ids = rng.randint(1, VOCAB, (B, T)).astype(np.int64)
    mask = np.ones((B, T), np.int64)
    if padded:
        for b, p in enumerate([0, 3, 5][:B]):
            mask[b, :p] = 0
            ids[b, :p] = 0
    return ids, mask


def torch_logits(model, ids, mask) -> np.ndarray:
    """HF logits with explicit positions ``clamp(cumsum(mask) - 1, 0)``, as our model derives them."""
    pos = np.clip(np.cumsum(mask, -1) - 1, 0, None)
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                    position_ids=torch.tensor(pos))
    return out.logits.float().numpy()


def read_tensors(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    with safe_open(str(path), framework="numpy") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}


def rewrite_tensors(path: Path, fn) -> None:
    """Replace a safetensors file by ``fn(tensors)`` (same metadata)."""
    tensors, meta = read_tensors(path)
    save_file({k: np.ascontiguousarray(v) for k, v in fn(dict(tensors)).items()}, str(path),
              metadata=meta)


def edit_config(path: Path, **changes) -> None:
    cfg_path = path / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(changes)
    cfg_path.write_text(json.dumps(cfg))
