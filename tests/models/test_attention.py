"""Attention implementations (models/attention.py), the CPU-backend gate of the native kernels,
and the model's compute knobs (remat, scan over layers, bf16 compute) against the plain model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.models import attention, cpu_kernels, forward, get_preset, init_params, to_layout
from rlhf_jax.models.config import REMAT_POLICIES


def _operands(b, t, s, kh, g, h, seed=0, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((b, t, kh, g, h), np.float32) * 2.0
    k = rng.standard_normal((b, kh, s, h), np.float32)
    v = rng.standard_normal((b, kh, s, h), np.float32)
    # Causal over the last t of s positions, with left padding of a different length per row; row
    # 0's first query positions are padding themselves (no allowed key: a uniform average).
    pad = np.arange(b) % max(s - 1, 1)
    key_mask = np.arange(s)[None, :] >= pad[:, None]
    q_pos = s - t + np.arange(t)
    causal = np.arange(s)[None, :] <= q_pos[:, None]
    allowed = causal[None] & key_mask[:, None, :]
    if t > 1 and s > 1:
        allowed[0, 0, :] = False
    return (*(jnp.asarray(a, dtype) for a in (q, k, v)), jnp.asarray(allowed))


# (B, T, S, K, G, H): MHA, GQA and MQA; prefill (T == S), a chunk against a longer cache, one key.
SHAPES = [(2, 7, 7, 4, 1, 16), (3, 5, 9, 2, 3, 8), (2, 6, 6, 1, 4, 32), (1, 1, 1, 1, 1, 8)]


@pytest.mark.parametrize("b,t,s,kh,g,h", SHAPES)
@pytest.mark.parametrize("impl", ["xla", "auto"])
def test_dot_product_attention_matches_the_reference(impl, b, t, s, kh, g, h):
    q, k, v, allowed = _operands(b, t, s, kh, g, h, seed=b + t + s)
    want = attention.attention_reference(q, k, v, allowed)
    got = jax.jit(lambda *a: attention.attention(*a, implementation=impl))(q, k, v, allowed)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=1e-5)

    def loss(f):
        return lambda a, b_, c: jnp.sum(jnp.sin(f(a, b_, c, allowed)))

    g_got = jax.grad(loss(lambda *a: attention.attention(*a, implementation=impl)), argnums=(0, 1, 2))(q, k, v)
    g_want = jax.grad(loss(attention.attention_reference), argnums=(0, 1, 2))(q, k, v)
    for a, b_ in zip(g_got, g_want):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b_), atol=1e-5, rtol=1e-5)


def test_auto_uses_dot_product_attention_for_several_positions(monkeypatch):
    calls = []
    real = jax.nn.dot_product_attention
    monkeypatch.setattr(jax.nn, "dot_product_attention", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    q, k, v, allowed = _operands(2, 4, 4, 2, 2, 8)
    attention.attention(q, k, v, allowed)
    assert calls and calls[0]["implementation"] is None  # JAX picks cuDNN on a GPU, XLA here
    q1, k1, v1, allowed1 = _operands(2, 1, 5, 2, 2, 8)
    attention.attention(q1, k1, v1, allowed1)  # a decode step keeps the cache layout
    assert len(calls) == 1


def test_bf16_attention_is_close_and_softmax_is_float32():
    q, k, v, allowed = _operands(2, 6, 6, 2, 2, 16, seed=3)
    want = attention.attention_reference(q, k, v, allowed)
    bf = [a.astype(jnp.bfloat16) for a in (q, k, v)]
    got = attention.attention(*bf, allowed)
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want), atol=0.06)


def test_unknown_implementation_is_refused():
    with pytest.raises(ValueError, match="attention"):
        get_preset("tiny").replace(attention="flash")
    with pytest.raises(ValueError, match="remat"):
        get_preset("tiny").replace(remat="some")


def test_no_compiler_is_looked_for_when_the_backend_is_not_the_cpu(monkeypatch):
    def no_build(*_):
        raise AssertionError("the C++ compiler was invoked on a non-CPU backend")

    monkeypatch.setattr(cpu_kernels, "_compile", no_build)
    monkeypatch.setattr(cpu_kernels.ctypes, "CDLL", no_build)
    monkeypatch.setattr(cpu_kernels.jax, "default_backend", lambda: "gpu")
    cpu_kernels._library.cache_clear()
    try:
        assert cpu_kernels._library() is None and cpu_kernels.native_isa() is None
        x, w = jnp.ones((2, 8)), jnp.ones((4, 8))
        assert "rlhf_cpu_linear" not in jax.jit(cpu_kernels.linear).lower(x, w).as_text()
        q, k, v, allowed = _operands(2, 1, 5, 2, 2, 8)
        text = jax.jit(attention.attention).lower(q, k, v, allowed).as_text()
        assert "rlhf_cpu_decode_attention" not in text
    finally:
        cpu_kernels._library.cache_clear()  # the real backend decides again for later tests


# ----------------------------------------------------------------------------- the model's knobs
def _batch(cfg, b=3, t=12, seed=0):
    rng = np.random.default_rng(seed)
    ids = jnp.asarray(rng.integers(0, cfg.vocab_size, (b, t)), jnp.int32)
    mask = jnp.asarray(np.arange(t)[None, :] >= np.array([0, 3, 5])[:b, None], jnp.int32)  # left pad
    return ids, mask


def _loss_and_grads(cfg, params, ids, mask):
    def loss(p):
        logits = forward(cfg, p, ids, mask)[0]
        lp = jax.nn.log_softmax(logits[:, :-1])
        nll = -jnp.take_along_axis(lp, ids[:, 1:, None], -1)[..., 0]
        return jnp.sum(nll * mask[:, 1:]) / jnp.sum(mask[:, 1:])
    return jax.jit(jax.value_and_grad(loss))(params)


@pytest.fixture(scope="module")
def llama4():
    cfg = get_preset("tiny-llama").replace(n_layers=4, scan_layers=False)
    return cfg, init_params(cfg, jax.random.PRNGKey(1))


@pytest.mark.parametrize("variant", [dict(attention="reference"), dict(attention="xla"), dict(scan_layers=True)]
                         + [dict(remat=r) for r in REMAT_POLICIES if r != "none"]
                         + [dict(remat="full", scan_layers=True)])
def test_knobs_give_the_same_loss_and_gradients(llama4, variant):
    cfg, params = llama4
    ids, mask = _batch(cfg)
    want_loss, want_grads = _loss_and_grads(cfg, params, ids, mask)
    knob = cfg.replace(**variant)
    got_loss, got_grads = _loss_and_grads(knob, to_layout(knob, params), ids, mask)
    got_grads = to_layout(cfg, got_grads)  # scanned: the stacked layout's gradients, per layer
    np.testing.assert_allclose(float(got_loss), float(want_loss), rtol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(got_grads), jax.tree_util.tree_leaves(want_grads)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5, rtol=1e-4)


def test_remat_changes_the_program(llama4):
    """Remat is really applied: the backward pass recomputes (the lowered program differs)."""
    cfg, params = llama4
    ids, mask = _batch(cfg)

    def remats(c):
        jaxpr = jax.make_jaxpr(jax.grad(lambda p: forward(c, p, ids, mask)[0].sum()))(params)
        return str(jaxpr).count("remat")  # the rematerialised calls in the backward pass

    assert remats(cfg) == 0 and remats(cfg.replace(remat="full")) == cfg.n_layers


def test_bf16_compute_keeps_float32_weights_and_logits(llama4):
    cfg, params = llama4
    ids, mask = _batch(cfg)
    want = forward(cfg, params, ids, mask)[0]
    got = forward(cfg.replace(dtype="bfloat16"), params, ids, mask)[0]
    assert got.dtype == jnp.float32 and cfg.param_dtype == "float32"
    real = np.asarray(mask, bool)
    err = np.abs(np.asarray(got) - np.asarray(want))[real].max()
    assert err < 0.05, err
    lp_f32 = jax.nn.log_softmax(want)
    lp_bf16 = jax.nn.log_softmax(got)
    assert np.abs(np.asarray(lp_bf16 - lp_f32))[real].max() < 0.05
