"""Benchmark: a decode step's matmuls and attention, XLA:CPU against ``models/cpu_kernels``.

Matmuls: a GPT-2-small decode step multiplies ``rows`` (= batch) activations by 12 layers of
weights (qkv [2304, 768], out [768, 768], up [3072, 768], down [768, 3072]) and the tied LM head
[50257, 768], each depending on the one before. This runs that chain with the einsum XLA uses
everywhere else and with the native kernel, same inputs, and prints both times, the GFLOP/s, the
weight bytes streamed per second and the ratio, at several row counts (the kernel is used up to
``MAX_ROWS``). Attention: one decode position against caches of several lengths, at the tiny test
model's and GPT-2-small's head shapes, pure JAX against the native kernel (12 chained calls, minus
the time of the same chain without attention).

    python experiments/bench_cpu_linear.py --rows 1,4,8,16,32
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout
from experiments.benchtools import best_time  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="1,4,8,16,32")
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--d-model", type=int, default=768)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args(argv)

    import jax
    import jax.numpy as jnp
    import numpy as np

    from rlhf_jax.models import attention, cpu_kernels

    isa = cpu_kernels.native_isa()
    print(f"jax {jax.__version__}; cores {os.cpu_count()}; native kernel: {isa or 'unavailable'}")
    if isa is None:
        return
    d, f = args.d_model, 4 * args.d_model
    rng = np.random.default_rng(0)

    def weight(o, i):
        return jnp.asarray(rng.standard_normal((o, i), np.float32) * 0.02)

    layers = [(weight(3 * d, d), weight(d, d), weight(f, d), weight(d, f)) for _ in range(args.layers)]
    head = weight(args.vocab, d)
    n_params = sum(w.size for layer in layers for w in layer) + head.size

    def chain(mm):
        def run(layers, head, x):
            for qkv, out, up, down in layers:
                x = x + mm(mm(x, qkv)[:, :d], out)
                x = x + mm(jax.nn.gelu(mm(x, up)), down)
            return mm(x, head)
        return jax.jit(run)

    xla = chain(lambda x, w: jnp.einsum("mi,oi->mo", x, w))
    native = chain(cpu_kernels.native_linear)
    for rows in [int(r) for r in args.rows.split(",")]:
        x = jnp.asarray(rng.standard_normal((rows, d), np.float32))
        diff = float(jnp.abs(xla(layers, head, x) - native(layers, head, x)).max())
        t_xla = best_time(xla, layers, head, x, repeats=args.repeats)
        t_nat = best_time(native, layers, head, x, repeats=args.repeats)
        flops = 2 * rows * n_params
        print(f"rows {rows:3d} | XLA dot {t_xla * 1e3:7.2f} ms ({flops / t_xla / 1e9:5.1f} GFLOP/s, "
              f"{4 * n_params / t_xla / 1e9:4.1f} GB/s) | native {t_nat * 1e3:7.2f} ms "
              f"({flops / t_nat / 1e9:5.1f} GFLOP/s, {4 * n_params / t_nat / 1e9:4.1f} GB/s) | "
              f"speed-up {t_xla / t_nat:4.2f}x | max |diff| {diff:.1e}", flush=True)

    def attention_chain(attend):
        def run(q, k, v, allowed):
            for _ in range(12):
                q = q + 1e-3 * attend(q, k, v, allowed)
            return q
        return jax.jit(run)

    plain = attention_chain(lambda q, k, v, allowed: q)
    xla_attn = attention_chain(attention.attention_reference)
    native_attn = attention_chain(attention.attention)
    for name, (b, kh, g, h) in {"tiny": (8, 4, 1, 16), "gpt2-small": (8, 12, 1, 64)}.items():
        for s in (64, 160):
            q = jnp.asarray(rng.standard_normal((b, 1, kh, g, h), np.float32))  # one query position
            k, v = (jnp.asarray(rng.standard_normal((b, kh, s, h), np.float32)) for _ in range(2))
            allowed = jnp.asarray(rng.random((b, 1, s)) < 0.9)
            base = best_time(plain, q, k, v, allowed, repeats=5 * args.repeats)
            t_xla = (best_time(xla_attn, q, k, v, allowed, repeats=5 * args.repeats) - base) / 12
            t_nat = (best_time(native_attn, q, k, v, allowed, repeats=5 * args.repeats) - base) / 12
            print(f"attention {name:10s} B={b} heads={kh} head_dim={h} cache {s:3d} | XLA "
                  f"{t_xla * 1e6:6.1f} us | native {t_nat * 1e6:6.1f} us | speed-up {t_xla / t_nat:4.2f}x",
                  flush=True)


if __name__ == "__main__":
    main()
