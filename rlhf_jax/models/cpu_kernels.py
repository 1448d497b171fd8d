"""Native x86-64 kernels for the sampler's decode step on CPU, with pure-JAX fallbacks.

- ``linear(x, w)``: x ``[..., in]`` @ w ``[out, in]``ᵀ (the model's output-major kernels). With at most
  ``MAX_ROWS`` float32 rows on CPU it calls the XLA FFI target ``rlhf_cpu_linear``: a kernel that
  prefetches the next weight rows while multiplying the current ones, ≈1.5x XLA:CPU's dot on a
  GPT-2-small decode step (``experiments/bench_cpu_linear.py``).
- ``decode_attention(q, k, v, allowed)``: one decode step's attention (one query position per
  row against the KV cache) as one call (``rlhf_cpu_decode_attention``) instead of two batched
  dots and the mask/softmax ops. The attention maths itself lives in ``attention.py``, which
  calls this only where ``decode_attention_applies``.

This is an optional CPU backend: it is used only when JAX's default backend is the CPU (checked
before any build is attempted, so an accelerator host never invokes a compiler). Everything else
(more rows, other dtypes, GPU/TPU) runs the pure-JAX version, and gradients always do
(``custom_vjp``). Results equal the pure-JAX ones up to float32 summation order (``cpu_kernels.cc``
for the kernels; ``tests/models/test_cpu_kernels.py`` for the checks).

The kernels are compiled with the system's C++ compiler on first use (≈6 s) and cached under
``$RLHF_JAX_CACHE_DIR`` (default ``~/.cache/rlhf_jax``; the temp dir if that is not writable), keyed
by a hash of their sources, the jaxlib version and ``$CXX``. With no compiler, a CPU without
AVX2+FMA, or ``RLHF_JAX_NATIVE=0``, they are never used (a failed build logs one warning) and
nothing else changes.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

from rlhf_jax.models.attention import attention_reference

log = logging.getLogger(__name__)

MAX_ROWS = 16
"""Up to this many rows of x go to the kernel (measured: it wins up to 16, XLA's GEMM beyond)."""

_SOURCE = Path(__file__).with_name("cpu_kernels.cc")
_SOURCES = (_SOURCE, _SOURCE.with_name("cpu_kernels_linear.inc"),  # what the build depends on
            _SOURCE.with_name("cpu_kernels_attention.inc"), _SOURCE.with_name("cpu_kernels_exp.inc"))
ISA_NAMES = {1: "avx2", 2: "avx512"}


def cache_root() -> Path:
    """Where rlhf_jax keeps what it builds once per machine (these kernels, XLA's compiled programs)."""
    root = os.environ.get("RLHF_JAX_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "rlhf_jax")
    return Path(root)


def _compile(out: Path) -> None:
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if cxx is None:
        raise RuntimeError("no C++ compiler (g++, c++ or clang++) on PATH")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)  # build aside, then rename: atomic
    os.close(fd)
    cmd = [cxx, "-O3", "-std=c++20", "-shared", "-fPIC", "-pthread", "-w",
           f"-I{jax.ffi.include_dir()}", str(_SOURCE), "-o", tmp]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@functools.cache
def _library() -> tuple[int, str] | None:
    """Build (once), load and register the kernels; ``(isa, path)``, or None when unavailable."""
    if os.environ.get("RLHF_JAX_NATIVE", "1") == "0":
        return None
    if jax.default_backend() != "cpu":  # an accelerator host: never look for a compiler
        return None
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return None
    source = b"".join(p.read_bytes() for p in _SOURCES)
    key = hashlib.sha256(source + jaxlib.__version__.encode() + (os.environ.get("CXX") or "").encode())
    name = f"cpu_kernels-{key.hexdigest()[:16]}.so"
    try:
        path = cache_root() / name
        if not path.exists():
            log.info("building the native CPU kernels (once): %s", path)
            try:
                _compile(path)
            except OSError:  # cache dir not writable: build into the temp dir instead
                path = Path(tempfile.gettempdir()) / f"rlhf_jax-{os.getuid()}" / name
                if not path.exists():
                    _compile(path)
        lib = ctypes.CDLL(str(path))
        isa = int(lib.rlhf_cpu_kernels_isa())
        if isa == 0:
            return None
        jax.ffi.register_ffi_target("rlhf_cpu_linear", jax.ffi.pycapsule(lib.RlhfCpuLinear), platform="cpu")
        jax.ffi.register_ffi_target("rlhf_cpu_decode_attention", jax.ffi.pycapsule(lib.RlhfCpuDecodeAttention),
                                    platform="cpu")
    except Exception as e:  # noqa: BLE001 — any failure means "use pure JAX", said once
        log.warning("native CPU kernels unavailable, using the pure-JAX versions: %s", e)
        return None
    return isa, str(path)


def native_isa() -> str | None:
    """``"avx512"`` / ``"avx2"`` when the kernels are built and usable here, else None."""
    lib = _library()
    return None if lib is None else ISA_NAMES[lib[0]]


def _einsum(x, w):
    return jnp.einsum("...i,oi->...o", x, w)


def _isa_code(isa: str | None) -> np.int32:
    lib = _library()
    if lib is None:
        raise RuntimeError("the native CPU kernels are not available on this machine")
    code = {"avx2": 1, "avx512": 2, None: lib[0]}[isa]
    if code > lib[0]:
        raise ValueError(f"this CPU does not support {isa}")
    return np.int32(code)


def native_linear(x2, w, isa: str | None = None):
    """The kernel itself on 2-D ``x2 [M, K]`` and ``w [O, K]`` (CPU only; ``isa`` forces
    ``"avx2"`` on an AVX-512 machine, for tests). Prefer ``linear``."""
    code = _isa_code(isa)
    call = jax.ffi.ffi_call("rlhf_cpu_linear", jax.ShapeDtypeStruct((x2.shape[0], w.shape[0]), jnp.float32),
                            vmap_method="sequential")
    return call(x2, w, isa=code)


@jax.custom_vjp
def _rows_matmul(x2, w):
    return jax.lax.platform_dependent(x2, w, cpu=native_linear, default=_einsum)


def _fwd(x2, w):
    return _rows_matmul(x2, w), (x2, w)


def _bwd(res, g):
    x2, w = res
    return g @ w, g.T @ x2


_rows_matmul.defvjp(_fwd, _bwd)


def linear(x, w):
    """``x [..., in] @ w[out, in].T``: the native kernel for ≤ ``MAX_ROWS`` float32 rows on CPU."""
    rows = 1
    for n in x.shape[:-1]:
        rows *= n
    if (rows == 0 or rows > MAX_ROWS or x.dtype != jnp.float32 or w.dtype != jnp.float32
            or _library() is None):
        return _einsum(x, w)
    return _rows_matmul(x.reshape(rows, x.shape[-1]), w).reshape(*x.shape[:-1], w.shape[0])


def _one_position_reference(q, k, v, allowed):
    """``attention_reference`` for one query position: q ``[B, K, G, H]``, allowed ``[B, S]``."""
    return attention_reference(q[:, None], k, v, allowed[:, None])[:, 0]


def native_decode_attention(q, k, v, allowed, isa: str | None = None):
    """The attention kernel itself, for one query position: q ``[B, K, G, H]``, k and v
    ``[B, K, S, H]``, allowed ``[B, S]`` (CPU only; ``isa`` as in ``native_linear``)."""
    code = _isa_code(isa)
    call = jax.ffi.ffi_call("rlhf_cpu_decode_attention", jax.ShapeDtypeStruct(q.shape, jnp.float32),
                            vmap_method="sequential")
    scale = np.float32(1.0 / np.sqrt(q.shape[-1]))
    return call(q, k, v, allowed.astype(jnp.float32), scale=scale, isa=code)


@jax.custom_vjp
def decode_attention(q, k, v, allowed):
    """One decode step's attention (q ``[B, K, G, H]``, allowed ``[B, S]``): the native kernel when
    the computation runs on the CPU, ``attention_reference`` elsewhere and for gradients."""
    return jax.lax.platform_dependent(q, k, v, allowed, cpu=native_decode_attention,
                                      default=_one_position_reference)


def _attn_fwd(q, k, v, allowed):
    return decode_attention(q, k, v, allowed), (q, k, v, allowed)


def _attn_bwd(res, g):
    q, k, v, allowed = res
    _, pullback = jax.vjp(lambda a, b, c: _one_position_reference(a, b, c, allowed), q, k, v)
    return (*pullback(g), None)


decode_attention.defvjp(_attn_fwd, _attn_bwd)


def decode_attention_applies(q, k, v) -> bool:
    """Whether ``decode_attention`` takes the native kernel for these operands (one float32 query
    position, the kernels available): ``attention.attention`` asks before calling it."""
    return (q.shape[1] == 1 and q.dtype == k.dtype == v.dtype == jnp.float32 and q.size > 0
            and _library() is not None)
