"""Transformer configuration: one frozen dataclass for the GPT-2, Llama and Qwen2 families.

The config is hashable (it is a static argument of every jitted function that builds the model),
so dtypes are stored as strings. ``from_hf_config`` / ``to_hf_config`` map to and from a Hugging
Face ``config.json`` dict for ``GPT2Config``, ``LlamaConfig`` and ``Qwen2Config``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import jax
import jax.numpy as jnp

Family = Literal["gpt2", "llama", "qwen2"]

ARCHITECTURES = {
    "gpt2": "GPT2LMHeadModel",
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
}


SCAN_MIN_LAYERS = 4  # see TransformerConfig.scan_layers

ATTENTION = ("auto", "xla", "cudnn", "reference")  # see models/attention.py

# What a rematerialised block keeps for the backward pass (the rest is recomputed there).
REMAT_POLICIES = {
    "none": None,                                                  # no remat: keep everything
    "full": jax.checkpoint_policies.nothing_saveable,              # keep only the block's input
    "dots": jax.checkpoint_policies.checkpoint_dots,               # keep every matmul's output
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # keep weight matmuls'
}


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Decoder-only transformer hyperparameters.

    Attributes:
      vocab_size: number of token embeddings (and logits).
      d_model: residual stream width.
      n_layers: number of transformer blocks.
      n_heads: query heads.
      n_kv_heads: key/value heads (== n_heads: MHA; 1: MQA; otherwise GQA).
      head_dim: width of one head (usually d_model // n_heads).
      d_ff: hidden width of the MLP.
      activation: 'gelu_tanh' (GPT-2, plain MLP) or 'silu_glu' (Llama/Qwen2, gated MLP).
      norm: 'layernorm' (with bias, GPT-2) or 'rmsnorm' (Llama/Qwen2).
      norm_eps: epsilon of the norm.
      positions: 'learned' absolute embeddings (GPT-2) or 'rope'.
      rope_theta: RoPE base frequency.
      qkv_bias: bias on the q/k/v projections (GPT-2, Qwen2).
      out_bias: bias on the attention output projection (GPT-2).
      mlp_bias: biases in the MLP (GPT-2).
      tie_embeddings: the LM head reuses the token embedding matrix.
      max_len: maximum sequence length (size of learned position table; KV cache upper bound).
      family: which Hugging Face architecture this maps to.
      param_dtype: dtype of the parameters ('float32', 'bfloat16').
      dtype: compute dtype of activations; logits are always returned in float32.
      scan_layers: the blocks' weights are stored stacked (``params['layers']``, a leading layer
        axis; ``models.layout``) and every forward runs them as one ``lax.scan``, so compile time
        does not grow with depth; the samplers unstack the layers once before the decode loop.
        None: scan from ``SCAN_MIN_LAYERS`` layers on. Parameters saved in the other layout convert
        with ``models.to_layout(cfg, variables)``. Measured on a 2-core CPU at GPT-2-small size: a
        PPO iteration compiles in 21 s against 56 s unrolled (one run; on another machine, 15 s
        stacked against 30 s when the scan stacked per-layer weights on every call); a 2-layer
        model's fwd+bwd is 1.4x slower scanned (the loop costs more than it saves there).
      attention: implementation of attention, one of ``ATTENTION`` (``models/attention.py``).
      remat: rematerialisation of each block in the backward pass, a key of ``REMAT_POLICIES``.
    """

    vocab_size: int = 256
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 4
    head_dim: int = 16
    d_ff: int = 256
    activation: str = "gelu_tanh"
    norm: str = "layernorm"
    norm_eps: float = 1e-5
    positions: str = "learned"
    rope_theta: float = 10000.0
    qkv_bias: bool = True
    out_bias: bool = True
    mlp_bias: bool = True
    tie_embeddings: bool = True
    max_len: int = 128
    family: str = "gpt2"
    param_dtype: str = "float32"
    dtype: str = "float32"
    scan_layers: bool | None = None
    attention: str = "auto"
    remat: str = "none"

    def __post_init__(self):
        checks = [
            (self.vocab_size > 0, "vocab_size must be positive"),
            (self.d_model > 0 and self.n_layers > 0 and self.head_dim > 0, "sizes must be positive"),
            (self.n_heads > 0 and self.n_kv_heads > 0, "n_heads and n_kv_heads must be positive"),
            (self.n_heads % self.n_kv_heads == 0, "n_heads must be a multiple of n_kv_heads"),
            (self.activation in ("gelu_tanh", "silu_glu"), f"unknown activation {self.activation!r}"),
            (self.norm in ("layernorm", "rmsnorm"), f"unknown norm {self.norm!r}"),
            (self.positions in ("learned", "rope"), f"unknown positions {self.positions!r}"),
            (self.family in ARCHITECTURES, f"unknown family {self.family!r}"),
            (self.param_dtype in ("float32", "bfloat16", "float16"), f"bad param_dtype {self.param_dtype!r}"),
            (self.dtype in ("float32", "bfloat16", "float16"), f"bad dtype {self.dtype!r}"),
            (self.attention in ATTENTION, f"attention must be one of {ATTENTION}, not {self.attention!r}"),
            (self.remat in REMAT_POLICIES, f"remat must be one of {tuple(REMAT_POLICIES)}, not {self.remat!r}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"TransformerConfig: {msg}")

    @property
    def scans_layers(self) -> bool:
        return self.n_layers >= SCAN_MIN_LAYERS if self.scan_layers is None else self.scan_layers

    @property
    def jnp_dtype(self):
        return jnp.dtype(self.dtype)

    @property
    def jnp_param_dtype(self):
        return jnp.dtype(self.param_dtype)

    def replace(self, **kw) -> "TransformerConfig":
        return dataclasses.replace(self, **kw)


def _gpt2(**kw) -> TransformerConfig:
    return TransformerConfig(**kw)


def _llama(**kw) -> TransformerConfig:
    base = dict(
        activation="silu_glu", norm="rmsnorm", norm_eps=1e-6, positions="rope", qkv_bias=False,
        out_bias=False, mlp_bias=False, tie_embeddings=False, family="llama",
    )
    base.update(kw)
    return TransformerConfig(**base)


PRESETS: dict[str, TransformerConfig] = {
    # A few-hundred-thousand-parameter model for tests and the CPU quickstart.
    "tiny": _gpt2(vocab_size=512, d_model=64, n_layers=2, n_heads=4, n_kv_heads=4, head_dim=16,
                  d_ff=256, max_len=128),
    # A little wider and deeper (≈1M params with a 512 vocab): reward models of the built-in task.
    "small": _gpt2(vocab_size=512, d_model=128, n_layers=4, n_heads=4, n_kv_heads=4, head_dim=32,
                   d_ff=512, max_len=128),
    "tiny-llama": _llama(vocab_size=512, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                         head_dim=16, d_ff=192, max_len=128),
    "tiny-qwen2": _llama(vocab_size=512, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                         head_dim=16, d_ff=192, max_len=128, qkv_bias=True, family="qwen2",
                         rope_theta=1000000.0),
    # GPT-2 small (124M) shapes.
    "gpt2-small": _gpt2(vocab_size=50257, d_model=768, n_layers=12, n_heads=12, n_kv_heads=12,
                        head_dim=64, d_ff=3072, max_len=1024),
    # A small Llama-style model (~110M with a 32k vocab).
    "llama-small": _llama(vocab_size=32000, d_model=768, n_layers=12, n_heads=12, n_kv_heads=4,
                          head_dim=64, d_ff=2048, max_len=2048),
}


def get_preset(name: str, **overrides) -> TransformerConfig:
    """A named preset, optionally with fields replaced."""
    if name not in PRESETS:
        import difflib

        hint = difflib.get_close_matches(name, PRESETS, n=1)
        raise KeyError(f"unknown model preset {name!r}" + (f"; did you mean {hint[0]!r}?" if hint else "")
                       + f" (known: {', '.join(PRESETS)})")
    return dataclasses.replace(PRESETS[name], **overrides)


# ----------------------------------------------------------------------------- Hugging Face mapping

def _rope_theta(hf: dict[str, Any], default: float) -> float:
    # transformers v5 keeps the RoPE base under `rope_parameters`; v4 at the top level.
    rp = hf.get("rope_parameters") or {}
    rs = hf.get("rope_scaling") or {}
    for where, d in (("rope_parameters", rp), ("rope_scaling", rs)):
        if isinstance(d, dict) and d.get("rope_type", d.get("type", "default")) not in ("default", None):
            raise ValueError(f"unsupported RoPE scaling {where}={d!r} (only plain RoPE is implemented)")
    if isinstance(rp, dict) and "rope_theta" in rp:
        return float(rp["rope_theta"])
    if "rope_theta" in hf:
        return float(hf["rope_theta"])
    return default


def from_hf_config(hf: dict[str, Any], dtype: str = "float32") -> TransformerConfig:
    """Map a Hugging Face config.json dict to a TransformerConfig.

    Raises ValueError for an unknown or unsupported architecture.
    """
    model_type = hf.get("model_type")
    archs = hf.get("architectures") or []
    if model_type is None and archs:
        model_type = {v: k for k, v in ARCHITECTURES.items()}.get(archs[0])
    if model_type == "gpt2":
        act = hf.get("activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
            raise ValueError(f"unsupported GPT-2 activation_function {act!r}")
        if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("scale_attn_weights") is False \
                or hf.get("reorder_and_upcast_attn"):
            raise ValueError("unsupported GPT-2 attention scaling flags (scale_attn_by_inverse_layer_idx, "
                             "scale_attn_weights=false, reorder_and_upcast_attn)")
        d = hf["n_embd"]
        n_heads = hf["n_head"]
        return TransformerConfig(
            vocab_size=hf["vocab_size"], d_model=d, n_layers=hf["n_layer"], n_heads=n_heads,
            n_kv_heads=n_heads, head_dim=d // n_heads, d_ff=hf.get("n_inner") or 4 * d,
            activation="gelu_tanh", norm="layernorm", norm_eps=hf.get("layer_norm_epsilon", 1e-5),
            positions="learned", qkv_bias=True, out_bias=True, mlp_bias=True,
            tie_embeddings=hf.get("tie_word_embeddings", True), max_len=hf["n_positions"],
            family="gpt2", param_dtype=dtype, dtype=dtype,
        )
    if model_type in ("llama", "qwen2"):
        act = hf.get("hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"unsupported {model_type} hidden_act {act!r}")
        d = hf["hidden_size"]
        n_heads = hf["num_attention_heads"]
        head_dim = hf.get("head_dim") or d // n_heads
        is_qwen = model_type == "qwen2"
        if hf.get("use_sliding_window"):
            raise ValueError(f"unsupported {model_type} use_sliding_window=true (no sliding-window attention)")
        return TransformerConfig(
            vocab_size=hf["vocab_size"], d_model=d, n_layers=hf["num_hidden_layers"],
            n_heads=n_heads, n_kv_heads=hf.get("num_key_value_heads") or n_heads, head_dim=head_dim,
            d_ff=hf["intermediate_size"], activation="silu_glu", norm="rmsnorm",
            norm_eps=hf.get("rms_norm_eps", 1e-6), positions="rope",
            rope_theta=_rope_theta(hf, 1000000.0 if is_qwen else 10000.0),
            qkv_bias=True if is_qwen else bool(hf.get("attention_bias", False)),
            out_bias=False if is_qwen else bool(hf.get("attention_bias", False)),
            mlp_bias=False if is_qwen else bool(hf.get("mlp_bias", False)),
            tie_embeddings=hf.get("tie_word_embeddings", False),
            max_len=hf.get("max_position_embeddings", 2048), family=model_type,
            param_dtype=dtype, dtype=dtype,
        )
    raise ValueError(
        f"unknown architecture: model_type={model_type!r}, architectures={archs!r}; "
        f"supported: {', '.join(ARCHITECTURES.values())}"
    )


def to_hf_config(cfg: TransformerConfig, **extra) -> dict[str, Any]:
    """A Hugging Face config.json dict for this config (architecture chosen by ``cfg.family``)."""
    torch_dtype = cfg.param_dtype
    if cfg.family == "gpt2":
        if cfg.positions != "learned" or cfg.activation != "gelu_tanh" or cfg.norm != "layernorm":
            raise ValueError("a gpt2-family config needs learned positions, gelu_tanh and layernorm")
        out = dict(
            architectures=["GPT2LMHeadModel"], model_type="gpt2", vocab_size=cfg.vocab_size,
            n_embd=cfg.d_model, n_layer=cfg.n_layers, n_head=cfg.n_heads, n_inner=cfg.d_ff,
            n_positions=cfg.max_len, layer_norm_epsilon=cfg.norm_eps,
            activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
            tie_word_embeddings=cfg.tie_embeddings, dtype=torch_dtype,
        )
    else:
        out = dict(
            architectures=[ARCHITECTURES[cfg.family]], model_type=cfg.family,
            vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layers,
            num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads,
            head_dim=cfg.head_dim, intermediate_size=cfg.d_ff, hidden_act="silu",
            rms_norm_eps=cfg.norm_eps, max_position_embeddings=cfg.max_len,
            rope_theta=cfg.rope_theta,
            rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
            tie_word_embeddings=cfg.tie_embeddings, attention_dropout=0.0, dtype=torch_dtype,
        )
        if cfg.family == "llama":
            out.update(attention_bias=cfg.qkv_bias, mlp_bias=cfg.mlp_bias)
    out.update(extra)
    return out
