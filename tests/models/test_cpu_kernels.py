"""The native CPU decode kernels (models/cpu_kernels.{py,cc}) against float64 / pure-JAX references."""

import os
import platform
import shutil
import subprocess
import sys
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.models import attention, cpu_kernels

ISA = cpu_kernels.native_isa()
needs_kernel = pytest.mark.skipif(ISA is None, reason="native CPU matmul not available here")
ISAS = ["avx2", "avx512"] if ISA == "avx512" else ["avx2"]


def _cpu_has_avx2() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return " avx2" in flags and " fma" in flags


@pytest.mark.skipif(not (platform.system() == "Linux" and platform.machine() == "x86_64"
                         and shutil.which("g++") and _cpu_has_avx2()
                         and os.environ.get("RLHF_JAX_NATIVE", "1") != "0"),
                    reason="only where the kernel can be built")
def test_kernel_builds_and_loads_here():
    # Guards against every test below being skipped silently on a machine that should run them.
    assert ISA in ("avx2", "avx512")


def _reference(x, w):
    return np.asarray(x, np.float64) @ np.asarray(w, np.float64).T


# (rows, in, out): 1..16 rows (8-row groups and the tiled >8 path), `in` with and without a vector
# tail (and shorter than one vector), `out` below the 64-row threading threshold, not a multiple of
# any row block, and large enough for every thread.
SHAPES = [(1, 16, 8), (1, 5, 3), (2, 77, 300), (3, 100, 37), (5, 64, 129), (8, 768, 2304),
          (8, 3072, 768), (9, 40, 200), (13, 100, 1031), (16, 768, 3000), (7, 33, 64)]


@needs_kernel
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("m,k,o", SHAPES)
def test_kernel_matches_float64(isa, m, k, o):
    rng = np.random.default_rng(m * 1000 + k + o)
    x = rng.standard_normal((m, k), np.float32)
    w = rng.standard_normal((o, k), np.float32)
    y = np.asarray(jax.jit(lambda a, b: cpu_kernels.native_linear(a, b, isa))(x, w))
    assert y.shape == (m, o)
    ref = _reference(x, w)
    # float32 accumulation over k terms of unit size: error grows like sqrt(k) * eps.
    np.testing.assert_allclose(y, ref, rtol=0, atol=4e-7 * np.sqrt(k) * 8)


@needs_kernel
@pytest.mark.parametrize("lead", [(1, 1), (2, 3), (4, 4), (17,), (3, 40)])
def test_linear_dispatch_matches_einsum(lead):
    # <= MAX_ROWS rows take the kernel, more take XLA's dot; both agree with the einsum, any shape.
    rng = np.random.default_rng(len(lead))
    x = jnp.asarray(rng.standard_normal((*lead, 96), np.float32))
    w = jnp.asarray(rng.standard_normal((130, 96), np.float32))
    y = jax.jit(cpu_kernels.linear)(x, w)
    assert y.shape == (*lead, 130)
    np.testing.assert_allclose(np.asarray(y), np.asarray(jnp.einsum("...i,oi->...o", x, w)), atol=2e-5)
    uses_kernel = "rlhf_cpu_linear" in jax.jit(cpu_kernels.linear).lower(x, w).as_text()
    assert uses_kernel == (int(np.prod(lead)) <= cpu_kernels.MAX_ROWS)


def test_other_dtypes_and_empty_use_einsum():
    x = jnp.ones((2, 8), jnp.bfloat16)
    w = jnp.ones((4, 8), jnp.bfloat16)
    assert "rlhf_cpu_linear" not in jax.jit(cpu_kernels.linear).lower(x, w).as_text()
    assert cpu_kernels.linear(x, w).dtype == jnp.bfloat16
    assert cpu_kernels.linear(jnp.ones((0, 8)), jnp.ones((4, 8))).shape == (0, 4)


@needs_kernel
def test_gradients_equal_the_einsum_gradients():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((2, 3, 40), np.float32))
    w = jnp.asarray(rng.standard_normal((70, 40), np.float32))

    def loss(f):
        return lambda a, b: jnp.sum(jnp.sin(f(a, b)))

    got = jax.grad(loss(cpu_kernels.linear), argnums=(0, 1))(x, w)
    want = jax.grad(loss(lambda a, b: jnp.einsum("...i,oi->...o", a, b)), argnums=(0, 1))(x, w)
    for g, h in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(h), atol=1e-4)


@needs_kernel
def test_vmap_over_weights():
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((4, 24), np.float32))
    ws = jnp.asarray(rng.standard_normal((3, 50, 24), np.float32))
    y = jax.jit(jax.vmap(cpu_kernels.linear, in_axes=(None, 0)))(x, ws)
    np.testing.assert_allclose(np.asarray(y), np.einsum("mi,boi->bmo", x, ws), atol=1e-5)


@needs_kernel
def test_concurrent_calls_from_two_threads():
    # The worker pool serves one call at a time; a concurrent call must compute on its own thread.
    rng = np.random.default_rng(3)
    xs = [jnp.asarray(rng.standard_normal((8, 256), np.float32)) for _ in range(2)]
    w = jnp.asarray(rng.standard_normal((4096, 256), np.float32))
    f = jax.jit(cpu_kernels.linear)
    want = [_reference(x, w) for x in xs]
    errors = []

    def work(i):
        for _ in range(20):
            err = np.abs(np.asarray(f(xs[i], w)) - want[i]).max()
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 40 and max(errors) < 1e-4


def test_disabled_by_environment_variable():
    code = ("import jax.numpy as jnp; from rlhf_jax.models import cpu_kernels as c; "
            "import jax; x = jnp.ones((2, 8)); w = jnp.ones((4, 8)); "
            "assert c.native_isa() is None; "
            "assert 'rlhf_cpu_linear' not in jax.jit(c.linear).lower(x, w).as_text(); print('ok')")
    env = dict(os.environ, RLHF_JAX_NATIVE="0", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_failed_build_names_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", "false")  # a "compiler" that always fails
    with pytest.raises(RuntimeError, match="false .*cpu_kernels.cc.* failed"):
        cpu_kernels._compile(tmp_path / "k.so")
    assert not list(tmp_path.iterdir())  # nothing half-written left behind


def _attention_float64(q, k, v, allowed):
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    scores = np.einsum("bkgh,bksh->bkgs", q, k) / np.sqrt(q.shape[-1])
    scores = np.where(np.asarray(allowed)[:, None, None, :], scores, -1e30)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    return np.einsum("bkgs,bksh->bkgh", p / p.sum(-1, keepdims=True), v)


# (B, K, G, S, H): MHA and GQA, head dims with and without a vector tail (and below one vector),
# one key, and sizes on both sides of the threading threshold.
ATTN_SHAPES = [(1, 1, 1, 1, 8), (2, 2, 3, 7, 5), (8, 4, 1, 40, 16), (3, 2, 2, 33, 24),
               (8, 12, 1, 96, 64), (2, 1, 4, 130, 128)]


@needs_kernel
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("b,kh,g,s,h", ATTN_SHAPES)
def test_decode_attention_matches_float64(isa, b, kh, g, s, h):
    rng = np.random.default_rng(b * 100 + s + h)
    q = rng.standard_normal((b, kh, g, h), np.float32) * (1 + s % 5)  # some peaked softmaxes
    k = rng.standard_normal((b, kh, s, h), np.float32)
    v = rng.standard_normal((b, kh, s, h), np.float32)
    allowed = rng.random((b, s)) < 0.7
    allowed[0, :] = False  # a row with no allowed key: a uniform average, as in the XLA path
    if b > 1:
        allowed[1, :] = True
    out = jax.jit(lambda *a: cpu_kernels.native_decode_attention(*a, isa=isa))(q, k, v, jnp.asarray(allowed))
    want = _attention_float64(q, k, v, allowed)
    np.testing.assert_allclose(np.asarray(out), want, atol=2e-5 * np.sqrt(h))
    ref = attention.attention_reference(jnp.asarray(q)[:, None], jnp.asarray(k), jnp.asarray(v),
                                          jnp.asarray(allowed)[:, None])[:, 0]
    np.testing.assert_allclose(np.asarray(ref), want, atol=2e-5 * np.sqrt(h))


@needs_kernel
def test_attention_dispatch_and_gradients():
    rng = np.random.default_rng(7)
    q, k, v = (jnp.asarray(rng.standard_normal(shape, np.float32))
               for shape in [(2, 1, 2, 2, 8), (2, 2, 9, 8), (2, 2, 9, 8)])  # q [B, T=1, K, G, H]
    allowed = jnp.asarray(rng.random((2, 1, 9)) < 0.8)
    text = jax.jit(attention.attention).lower(q, k, v, allowed).as_text()
    assert "rlhf_cpu_decode_attention" in text
    bf = [a.astype(jnp.bfloat16) for a in (q, k, v)]
    assert "rlhf_cpu_decode_attention" not in jax.jit(attention.attention).lower(*bf, allowed).as_text()
    q3, allowed3 = jnp.concatenate([q] * 3, axis=1), jnp.concatenate([allowed] * 3, axis=1)  # T = 3
    assert "rlhf_cpu_decode_attention" not in jax.jit(attention.attention).lower(q3, k, v, allowed3).as_text()

    def loss(f):
        return lambda a, b, c: jnp.sum(jnp.cos(f(a, b, c, allowed)))

    got = jax.grad(loss(attention.attention), argnums=(0, 1, 2))(q, k, v)
    want = jax.grad(loss(attention.attention_reference), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(got, want):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


@needs_kernel
@pytest.mark.parametrize("preset", ["tiny", "tiny-llama"])
def test_model_decode_step_uses_the_kernels_and_prefill_does_not(preset):
    from rlhf_jax.models import forward, get_preset, init_cache, init_params

    cfg = get_preset(preset)
    params = init_params(cfg, jax.random.PRNGKey(0))
    cache = init_cache(cfg, 2, 16)
    step = jax.jit(lambda p, ids, mask, c: forward(cfg, p, ids, mask, c)[0])
    one = jnp.ones((2, 1), jnp.int32)
    decode = step.lower(params, one, one, cache).as_text()
    assert "rlhf_cpu_linear" in decode and "rlhf_cpu_decode_attention" in decode
    many = jnp.ones((2, 12), jnp.int32)  # 24 rows, several query positions: XLA's own ops
    prefill = step.lower(params, many, many, cache).as_text()
    assert "rlhf_cpu_linear" not in prefill and "rlhf_cpu_decode_attention" not in prefill
