"""Metric aggregation on the host side of a training loop.

Train steps return flat ``dict[str, Array]`` of scalars (house rule). Averaging them over steps or
micro-batches as ``mean = Σ_i w_i·m_i / Σ_i w_i`` keeps the mean exact when the pieces have different
sizes (e.g. ``w_i`` = number of valid tokens): a (sum, count) pair per metric, never a mean of means.

Accumulation adds arrays lazily (device ops, no host sync); :func:`to_python` does one
``jax.device_get`` for the whole dict when the numbers are finally needed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

__all__ = ["MeanAccumulator", "to_python"]


def _scalar(key: str, value: Any) -> float | int | bool:
    arr = np.asarray(value)
    if arr.size != 1:
        raise ValueError(f"metric {key!r} is not a scalar (shape {arr.shape})")
    item = arr.reshape(()).item()
    if isinstance(item, (bool, int, float)):
        return item
    return float(item)


def to_python(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Scalars (floats, 0-d numpy/jax arrays) -> Python numbers, with one device->host transfer.

    Integer and bool metrics stay ``int`` / ``bool``; everything else becomes ``float``.
    Raises ValueError naming the key of a non-scalar value.
    """
    host = jax.device_get(dict(metrics))
    return {k: _scalar(k, v) for k, v in host.items()}


class MeanAccumulator:
    """Weighted running means of scalar metric dicts, kept as (sum, count) per key.

    ``add({'loss': l}, weight=n)`` adds ``n·l`` to the sum and ``n`` to the count of 'loss';
    ``add_sums({'loss': s}, {'loss': n})`` adds an already-summed pair (e.g. the masked sum and
    token count a loss returned). ``weight`` / ``counts`` may be one number for all keys or a dict
    per key. Values may be device arrays: nothing is transferred until :meth:`result`.
    """

    def __init__(self) -> None:
        self._sums: dict[str, Any] = {}
        self._counts: dict[str, Any] = {}

    def add(self, metrics: Mapping[str, Any], weight: Any = 1.0) -> None:
        """Add ``weight·value`` to each key's sum and ``weight`` to its count."""
        for key, value in metrics.items():
            w = weight[key] if isinstance(weight, Mapping) else weight
            self._add(key, value * w, w)

    def add_sums(self, sums: Mapping[str, Any], counts: Any) -> None:
        """Add pre-summed values: ``counts`` is one number for all keys or a dict per key."""
        for key, value in sums.items():
            self._add(key, value, counts[key] if isinstance(counts, Mapping) else counts)

    def _add(self, key: str, total: Any, count: Any) -> None:
        if key in self._sums:
            self._sums[key] = self._sums[key] + total
            self._counts[key] = self._counts[key] + count
        else:
            self._sums[key], self._counts[key] = total, count

    def sums_and_counts(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The raw (sum, count) dicts (still on device if the inputs were)."""
        return dict(self._sums), dict(self._counts)

    def result(self) -> dict[str, float]:
        """Means as Python floats (one transfer); a key with total count 0 gives NaN."""
        host = to_python({**{f"s/{k}": v for k, v in self._sums.items()},
                          **{f"c/{k}": v for k, v in self._counts.items()}})
        out = {}
        for key in self._sums:
            count = float(host[f"c/{key}"])
            out[key] = float(host[f"s/{key}"]) / count if count != 0 else math.nan
        return out

    def reset(self) -> None:
        self._sums.clear()
        self._counts.clear()

    def __len__(self) -> int:
        return len(self._sums)

    def __bool__(self) -> bool:
        return bool(self._sums)
