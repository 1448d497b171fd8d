"""The per-device memory estimate against counts by hand (the tiny GPT-2 preset)."""

import pytest

from rlhf_jax.models import get_preset
from rlhf_jax.sharding.memory import add, estimate, param_count


def tiny():
    cfg = get_preset("tiny").replace(vocab_size=512, max_len=128)
    assert (cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.head_dim, cfg.d_ff) == (64, 2, 4, 16, 256)
    return cfg


def test_param_count_by_hand():
    # embedding 512·64 + positions 128·64 + final norm 2·64, and per block: two norms 4·64,
    # qkv 4·3·16·64 + 4·3·16, out 64·64 + 64, MLP 256·64 + 256 + 64·256 + 64
    block = 4 * 64 + 4 * 3 * 16 * 64 + 4 * 3 * 16 + 64 * 64 + 64 + 256 * 64 + 256 + 64 * 256 + 64
    assert param_count(tiny()) == 512 * 64 + 128 * 64 + 2 * 64 + 2 * block == 141056


def test_estimate_on_a_mesh_by_hand():
    m = estimate(tiny(), batch=16, seq_len=32, mesh_shape=(2, 2, 2), kv_batch=8, kv_len=32)
    n = 141056
    assert m.params == n * 4 // 4 and m.optimizer == 2 * n * 4 // 4 and m.gradients == n * 4 // 4
    # 16 rows over data·fsdp = 4 → 4 per device; 2 of the 4 heads per device; float32 = 2 × 16 bits
    assert m.activations == 2 * (32 * 4 * 64 * (34 + 5 * 2 * 32 / 64) * 2)
    assert m.kv_cache == 2 * 2 * 2 * 2 * 32 * 16 * 4  # k and v · layers · rows · heads · positions · dim · 4 B
    held = estimate(tiny(), batch=0, seq_len=32, trained=False)
    assert (held.optimizer, held.gradients, held.activations, held.params) == (0, 0, 0, n * 4)
    assert add(m, held).total == m.total + held.total
    assert "total" in m.line() and "MiB" in m.line()


def test_full_remat_keeps_only_block_inputs_and_one_block():
    cfg = tiny()
    plain = estimate(cfg, batch=8, seq_len=64).activations
    remat = estimate(cfg.replace(remat="full"), batch=8, seq_len=64).activations
    per_block = plain / cfg.n_layers
    assert remat == pytest.approx(cfg.n_layers * 64 * 8 * 64 * 4 + per_block, abs=1)


def test_lora_counts_the_base_once_and_moments_of_the_adapters_only():
    n, t = 141056, 8192  # the tiny model, and 8192 trained parameters beside it (adapters, a head)
    full = estimate(tiny(), batch=4, seq_len=32)
    lora = estimate(tiny(), batch=4, seq_len=32, trained_params=t)
    assert lora.params == n * 4 + t * 4 and lora.optimizer == 2 * t * 4 and lora.gradients == t * 4
    assert lora.activations == full.activations
