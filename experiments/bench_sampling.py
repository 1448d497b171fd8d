"""Benchmark: next-token strategies at a GPT-2-sized vocabulary, ours against the textbook versions.

One decode step of GPT-2-small on a 2-core CPU takes ~40 ms. A sort-based top-p, ``lax.top_k``,
``jax.random.categorical`` and ``jnp.argmax`` over [8, 50257] logits cost XLA:CPU 1-100 ms each, so
sampled rollouts could spend more time choosing tokens than running the model. This times each
textbook version next to ours (``rlhf_jax.sampling.strategies``) on the same logits, checks that both
keep the same tokens, and prints the ratio.

    python experiments/bench_sampling.py --batch 8 --vocab 50257
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout
from experiments.benchtools import best_time  # noqa: E402


def sort_top_p(logits, p):
    """The usual top-p: sort, cumulative sum, threshold."""
    import jax
    import jax.numpy as jnp

    s = jnp.sort(logits, axis=-1)[..., ::-1]
    probs = jax.nn.softmax(s, axis=-1)
    keep = (jnp.cumsum(probs, axis=-1) - probs) < p
    keep = keep.at[..., 0].set(True)
    thr = jnp.min(jnp.where(keep, s, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits >= thr, logits, -jnp.inf)


def lax_top_k(logits, k):
    import jax
    import jax.numpy as jnp

    kth = jax.lax.top_k(logits, k)[0][..., -1:]
    return jnp.where(logits >= kth, logits, -jnp.inf)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--top-k", type=int, default=50)
    ap.add_argument("--top-p", type=float, default=0.9)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args(argv)

    import jax
    import jax.numpy as jnp
    import numpy as np

    from rlhf_jax.sampling import strategies as S

    key = jax.random.PRNGKey(0)
    logits = jax.random.normal(key, (args.batch, args.vocab)) * 3
    p = jnp.float32(args.top_p)
    k = args.top_k
    cases = [  # name, textbook, ours, args
        (f"top-p {args.top_p}", jax.jit(sort_top_p), jax.jit(S.top_p_filter), (logits, p)),
        ("top-p 1.0 (off)", jax.jit(sort_top_p), jax.jit(S.top_p_filter), (logits, jnp.float32(1.0))),
        (f"top-k {k}", jax.jit(lax_top_k, static_argnums=1), jax.jit(S.top_k_filter, static_argnums=1),
         (logits, k)),
        ("argmax", jax.jit(lambda x: jnp.argmax(x, -1)), jax.jit(S.first_argmax), (logits,)),
        ("draw (categorical)", jax.jit(lambda r, x: jax.random.categorical(r, x, -1)),
         jax.jit(lambda r, x: S.sample(r, x, 1.0, 0, 1.0)), (key, logits)),
    ]
    print(f"jax {jax.__version__} on {jax.devices()}; logits [{args.batch}, {args.vocab}]; "
          f"best of {args.repeats}", flush=True)
    for name, textbook, ours, a in cases:
        ref, got = np.asarray(textbook(*a)), np.asarray(ours(*a))
        if ref.ndim == 2:  # a filter: compare the kept sets
            same = np.array_equal(np.isfinite(ref), np.isfinite(got))
            if not same:  # e.g. at p = 1 the textbook's float cumsum reaches 1 early, dropping the tail
                same = f"no (kept {np.isfinite(ref).sum()} vs ours {np.isfinite(got).sum()})"
        else:
            same = np.array_equal(ref, got)
        t_ref = best_time(textbook, *a, repeats=args.repeats)
        t_ours = best_time(ours, *a, repeats=args.repeats)
        print(f"{name:22s} textbook {t_ref * 1e3:8.2f} ms | ours {t_ours * 1e3:7.2f} ms | "
              f"{t_ref / t_ours:6.1f}x | same result: {same}", flush=True)


if __name__ == "__main__":
    main()
