"""Supervised fine-tuning / language-modelling loss (step 1 of the RLHF recipe).

next-token cross-entropy: L = −Σ_{b,t} m[b,t+1]·log π(x[b,t+1] | x[b,≤t]) / Σ m[b,t+1]
(one mean over all target tokens of the batch, never a mean of per-row means).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from rlhf_jax.losses.common import masked_count, masked_mean, masked_sum, token_logprobs
from rlhf_jax.losses.registry import LOSSES

Array = jax.Array


def _shift(logits: Array, input_ids: Array, loss_mask: Array):
    """(logits[:, :-1], input_ids[:, 1:], loss_mask[:, 1:]): position t predicts token t + 1."""
    return logits[:, :-1], input_ids[:, 1:], loss_mask[:, 1:]


@LOSSES.register("sft_next_token")
def next_token_loss(logits: Array, input_ids: Array, loss_mask: Array):
    """Mean next-token NLL over valid targets. Returns ``(loss, metrics)``.

    logits [B, T, V] for ``input_ids`` [B, T]; ``loss_mask[:, t]`` = 1 if token t is a target
    (the caller masks prompt tokens and padding; ``loss_mask[:, 0]`` is never used).
    Metrics: ``sft/loss``, ``sft/ntokens`` (number of targets), ``sft/accuracy`` (argmax == target).
    """
    lg, targets, mask = _shift(logits, input_ids, loss_mask)
    logp = token_logprobs(lg, targets)
    loss = -masked_mean(logp, mask)
    correct = (jnp.argmax(lg, axis=-1) == targets).astype(jnp.float32)
    metrics = {
        "sft/loss": loss,
        "sft/ntokens": masked_count(mask),
        "sft/accuracy": masked_mean(correct, mask),
    }
    return loss, jax.lax.stop_gradient(metrics)


def sequence_logprob(logits: Array, input_ids: Array, loss_mask: Array, temperature=1.0) -> Array:
    """log π(y | x) = Σ_t loss_mask[:, t]·log π(input_ids[:, t] | input_ids[:, <t]) -> [B].

    Masked *sum* over target tokens (as DPO needs), same shift convention as ``next_token_loss``.
    """
    lg, targets, mask = _shift(logits, input_ids, loss_mask)
    return masked_sum(token_logprobs(lg, targets, temperature), mask, axis=-1)
