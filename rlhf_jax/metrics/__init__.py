"""Metrics: (sum, count) aggregation, JSONL / TensorBoard / W&B logging, progress bars."""

from rlhf_jax.metrics.aggregate import MeanAccumulator, to_python
from rlhf_jax.metrics.backends import (
    TensorBoardBackend,
    WandbBackend,
    check_backends,
    logging_backends,
)
from rlhf_jax.metrics.logger import (
    METRICS_FILE,
    PIPELINE_STAGES,
    MetricsLogger,
    Progress,
    progress,
    read_metrics,
    truncate_metrics,
)

__all__ = [
    "MeanAccumulator",
    "to_python",
    "METRICS_FILE",
    "PIPELINE_STAGES",
    "MetricsLogger",
    "Progress",
    "progress",
    "read_metrics",
    "truncate_metrics",
    "TensorBoardBackend",
    "WandbBackend",
    "check_backends",
    "logging_backends",
]
