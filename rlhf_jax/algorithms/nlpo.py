"""NLPO, Natural Language Policy Optimization (Ramamurthy et al. 2022, RL4LMs): PPO whose action
space at every step is masked to the top-p tokens of a *masking policy*, a copy of the policy
re-synced every ``mask_update_every`` iterations.

Sampling goes through the one jitted sampler with a logits processor (:class:`TopPMask`): the
masking policy runs alongside the policy with its own KV cache, and at each step the policy's
logits outside the masking policy's top-p set (at the sampling temperature) are set to
``MASKED_LOGIT``. The behaviour logprobs are those of that masked, renormalised policy; the update
recomputes the same masks with one full forward of the masking policy over the sampled sequences
(``action_mask`` [B, N, V], always holding the sampled token) and scores the policy under them,
so the ratio, entropy and KL are all of the masked policy. Everything else is PPO's (critic, GAE,
clipped surrogate, KL penalty to the unmasked reference).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from rlhf_jax.algorithms.base import RLSetup, make_onpolicy_iteration, make_policy_loss
from rlhf_jax.algorithms.ppo import ActorCritic, actor_critic_optimizer
from rlhf_jax.algorithms.rollout import response_logits
from rlhf_jax.algorithms.sections import PPOConfig, ranged
from rlhf_jax.models import forward, init_cache
from rlhf_jax.models.config import TransformerConfig
from rlhf_jax.models.kv_cache import grow_cache
from rlhf_jax.sampling.generate import LogitsProcessor
from rlhf_jax.sampling.strategies import apply_action_mask, nucleus_mask


@dataclasses.dataclass(frozen=True)
class NLPOConfig(PPOConfig):
    """PPO with the action space masked to a masking policy's top-p tokens."""
    top_p: float = ranged(0.9, 1e-6, 1.0)    # the masking policy's nucleus (1: no mask, plain PPO)
    mask_update_every: int = ranged(5, 1)    # iterations between re-syncs of the masking policy


@dataclasses.dataclass(frozen=True)
class TopPMask(LogitsProcessor):
    """Sampler hook: the policy's logits restricted to the top-p set of a masking policy that runs
    alongside with its own KV cache. ``params``: ``{'params', 'top_p', 'temperature'}``."""
    cfg: TransformerConfig

    def init(self, params, prompt_ids, prompt_mask, cache_len):
        cache = init_cache(self.cfg, prompt_ids.shape[0], cache_len)
        logits, _, cache = forward(self.cfg, params["params"], prompt_ids, prompt_mask, cache, last_only=True)
        return {"cache": cache, "last": logits[:, -1]}

    def grow(self, state, cache_len):
        return dict(state, cache=grow_cache(state["cache"], cache_len))

    def process(self, params, state, logits, hidden):
        return apply_action_mask(logits, nucleus_mask(state["last"], params["top_p"], params["temperature"]))

    def advance(self, params, state, tokens):
        ones = jnp.ones((tokens.shape[0], 1), jnp.int32)
        logits, _, cache = forward(self.cfg, params["params"], tokens[:, None], ones, state["cache"])
        return {"cache": cache, "last": logits[:, 0]}


def action_masks(cfg, mask_params, sequences, sequence_mask, tokens, prompt_len, top_p, temperature):
    """``[B, N, V]`` top-p sets of the masking policy at every response step (one full forward),
    each holding the sampled token (so a boundary token that rounding moved stays allowed)."""
    logits, _ = response_logits(cfg, mask_params, sequences, sequence_mask, prompt_len)
    keep = nucleus_mask(logits, top_p, temperature)
    return keep | jax.nn.one_hot(tokens, keep.shape[-1], dtype=bool)


class MaskedActorCritic(ActorCritic):
    """The actor-critic family with NLPO's masked action space."""

    lora = False  # its masking policy is a copy of the whole policy

    vector_keys = ActorCritic.vector_keys + ("top_p",)

    @staticmethod
    def check(name, sec, *, n_prompts: int, has_pretrain_texts: bool) -> None:
        ActorCritic.check(name, sec, n_prompts=n_prompts, has_pretrain_texts=has_pretrain_texts)
        if sec.recompute_logprobs:
            raise ValueError(f"{name}.recompute_logprobs: NLPO's behaviour logprobs are the masked "
                             f"policy's, which the sampler returns; leave it false")

    @staticmethod
    def hparams(sec) -> dict:
        return dict(ActorCritic.hparams(sec), top_p=jnp.float32(sec.top_p))

    @staticmethod
    def init(setup: RLSetup, sec, rng):
        state = ActorCritic.init(setup, sec, rng)
        return state.replace(aux={"mask_policy": jax.tree_util.tree_map(jnp.copy, setup.policy_params)})

    @staticmethod
    def make_iteration(setup: RLSetup, sec):
        cfg, P, n = setup.model_cfg, setup.prompt_len, sec.mask_update_every
        ppo_targets, critic_loss = ActorCritic.parts(setup, sec)

        def begin(state, hp):
            """Every n iterations the masking policy becomes a copy of the current policy."""
            sync = (state.iteration % n == 0) & (state.iteration > 0)
            mask = jax.tree_util.tree_map(lambda m, p: jnp.where(sync, p, m), state.aux["mask_policy"],
                                          state.train.params["policy"])
            return state.replace(aux={"mask_policy": mask})

        def processor_params(state, hp):
            return {"params": state.aux["mask_policy"], "top_p": hp["top_p"], "temperature": hp["temperature"]}

        def targets(state, s, frozen, batch, hp, rng):
            data, metrics, state = ppo_targets(state, s, frozen, batch, hp, rng)
            keep = action_masks(cfg, state.aux["mask_policy"], s.sequences, s.sequence_mask, s.tokens, P,
                                hp["top_p"], hp["temperature"])
            data["action_mask"] = keep
            rows = s.mask.astype(jnp.float32)
            metrics["nlpo/mask_size"] = (keep.sum(-1) * rows).sum() / jnp.maximum(rows.sum(), 1.0)
            return data, metrics, state

        return make_onpolicy_iteration(setup, sec, tx=actor_critic_optimizer(sec), targets=targets,
                                       loss_fn=make_policy_loss(setup, sec, critic_loss),
                                       processor=TopPMask(cfg), processor_params=processor_params,
                                       begin=begin)
