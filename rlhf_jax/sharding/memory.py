"""A per-device memory estimate of a training step, printed before training starts.

Counted (bytes per device): parameters (split over ``fsdp × tensor``), Adam's two moments and the
gradients (float32, split alike), the activations kept for the backward pass and a sampler's KV
cache (batch split over ``data × fsdp``, heads over ``tensor``). Activations per block follow
Korthikanti et al. 2022 ("Reducing activation recomputation in large transformer models"),
``T·b·D·(34 + 5·N·T/D)`` bytes at 16 bits per value, scaled to the compute dtype; with
``remat='full'`` only each block's input is kept, plus one block's activations while it is
recomputed. An estimate: XLA's buffer assignment may reuse or add buffers.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np

MiB = 2 ** 20


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    params: int
    optimizer: int
    gradients: int
    activations: int
    kv_cache: int

    @property
    def total(self) -> int:
        return self.params + self.optimizer + self.gradients + self.activations + self.kv_cache

    def line(self) -> str:
        parts = [f"{name} {getattr(self, name) / MiB:.1f} MiB" for name in
                 ("params", "optimizer", "gradients", "activations", "kv_cache")]
        return f"{', '.join(parts)}; total {self.total / MiB:.1f} MiB"


def param_count(cfg) -> int:
    from rlhf_jax.models import init_params

    shapes = jax.eval_shape(lambda: init_params(cfg, jax.random.PRNGKey(0)))
    return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(shapes))


def estimate(cfg, *, batch: int, seq_len: int, mesh_shape=(1, 1, 1), trained: bool = True,
             kv_batch: int = 0, kv_len: int = 0, trained_params: int | None = None) -> MemoryEstimate:
    """Bytes per device of one model ``cfg`` trained on ``batch`` sequences of ``seq_len`` tokens
    (``trained=False``: held only, e.g. the reference) and sampling ``kv_batch`` rows of
    ``kv_len`` positions, on a ``(data, fsdp, tensor)`` mesh. ``trained_params``: the model is held
    fixed and only that many float32 parameters beside it are trained (LoRA adapters, a critic)."""
    data, fsdp, tensor = mesh_shape
    n = param_count(cfg)
    split = fsdp * tensor
    p_bytes = np.dtype(cfg.param_dtype).itemsize
    a_bytes = np.dtype(cfg.dtype).itemsize
    tp = n if trained_params is None else trained_params
    params = n * p_bytes // split + (0 if trained_params is None else trained_params * 4 // split)
    optimizer = 2 * tp * 4 // split if trained else 0
    gradients = tp * 4 // split if trained else 0
    b = math.ceil(batch / (data * fsdp))
    T, D, N = seq_len, cfg.d_model, cfg.n_heads / tensor
    per_block = T * b * D * (34 + 5 * N * T / D) * (a_bytes / 2)
    if not trained or batch == 0:
        activations = 0
    elif cfg.remat == "full":
        activations = int(cfg.n_layers * T * b * D * a_bytes + per_block)
    else:
        activations = int(cfg.n_layers * per_block)
    kb = math.ceil(kv_batch / (data * fsdp)) if kv_batch else 0
    kv_cache = 2 * cfg.n_layers * kb * max(cfg.n_kv_heads // tensor, 1) * kv_len * cfg.head_dim * a_bytes
    return MemoryEstimate(params, optimizer, gradients, activations, kv_cache)


def mesh_shape(mesh) -> tuple[int, int, int]:
    return (1, 1, 1) if mesh is None else tuple(int(mesh.shape[a]) for a in ("data", "fsdp", "tensor"))


def add(*estimates: MemoryEstimate) -> MemoryEstimate:
    return MemoryEstimate(*(sum(getattr(e, f.name) for e in estimates)
                            for f in dataclasses.fields(MemoryEstimate)))
