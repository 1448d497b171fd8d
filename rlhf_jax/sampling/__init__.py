"""Sampling: next-token strategies and the cached ``generate`` loop."""

from rlhf_jax.sampling.generate import SampleOutput, generate
from rlhf_jax.sampling.strategies import greedy, sample, top_k_filter, top_p_filter

__all__ = ["SampleOutput", "generate", "greedy", "sample", "top_k_filter", "top_p_filter"]
