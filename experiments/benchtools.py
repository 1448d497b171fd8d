"""Timing helper shared by the benchmark scripts in this folder."""

from __future__ import annotations

import time


def best_time(fn, *args, repeats: int) -> float:
    """Best wall time in seconds of ``fn(*args)`` over ``repeats`` calls, after one warm-up call
    (which compiles); each call is waited on with ``jax.block_until_ready``."""
    import jax

    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t0)
    return best
