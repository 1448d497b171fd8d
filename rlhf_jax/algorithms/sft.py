"""Language-model losses over the model: pretraining (every token) and SFT (response tokens only).

``loss = −Σ_t m_t·log π(x_t | x_<t) / Σ_t m_t`` with ``m`` the batch's ``loss_mask`` (attention mask
for pretraining; response mask for SFT, so prompt tokens are not trained on).
"""

from __future__ import annotations

import jax.numpy as jnp

from rlhf_jax.losses.sft import next_token_loss
from rlhf_jax.models import logits as lm_logits
from rlhf_jax.models.config import TransformerConfig


def make_lm_loss(cfg: TransformerConfig):
    def loss_fn(params, batch, hparams):
        del hparams
        lg = lm_logits(cfg, params, batch["input_ids"], batch["attention_mask"])
        return next_token_loss(lg, batch["input_ids"], batch["loss_mask"])

    return loss_fn


def lm_target_count(batch):
    """The denominator of ``make_lm_loss``'s mean on ``batch``: its target tokens (the weight of a
    micro-batch when gradients are accumulated, ``step.accumulated_grads``)."""
    return jnp.sum(batch["loss_mask"][:, 1:])
