"""The actor-critic family: PPO (Schulman et al. 2017; Ziegler et al. 2019; Ouyang et al. 2022) and
A2C (Gopher, Rae et al. 2021), on the shared on-policy iteration of ``algorithms/base.py``.

Targets: the critic's values ``V(s_t)`` of the rollout, KL-penalised per-token rewards, GAE, whitened
advantages (``rollout.ppo_targets``). Loss: the composable policy objective (PPO's clipped ratio,
A2C's plain ``−A·log π``) plus ``vf_coef·L_V`` with the clipped value loss.

Parameters: ``{'policy': lm_params, 'critic': {'backbone'?: lm_params, 'head': ...}}``. With a
separate critic (default, initialised from the reward model) the two share nothing; with
``shared`` the value head sits on the policy's hidden states. The policy and the critic have their
own optimizers (``lr`` and ``critic_lr``, ``optax.multi_transform`` over the two subtrees), each
clipping its own gradient norm.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from rlhf_jax.algorithms.base import (RLSetup, check_common, init_rl_state, make_onpolicy_iteration,
                                      make_policy_loss, rl_hparams)
from rlhf_jax.algorithms.rollout import critic_values, ppo_targets, response_logits
from rlhf_jax.algorithms.sections import optimizer_kwargs
from rlhf_jax.algorithms.train_state import make_optimizer
from rlhf_jax.losses.ppo import ppo_value_loss
from rlhf_jax.models import init_value_head, token_scalars


def _labels(params):
    return {k: jax.tree_util.tree_map(lambda _: k, v) for k, v in params.items()}


def actor_critic_optimizer(sec) -> optax.GradientTransformation:
    """Policy at ``lr``, critic at ``critic_lr``; both with the section's AdamW settings."""
    kw = optimizer_kwargs(sec)
    return optax.multi_transform({"policy": make_optimizer(sec.lr, **kw),
                                  "critic": make_optimizer(sec.critic_lr, **kw)}, _labels)


class ActorCritic:
    """GAE with a learned critic."""

    lora = True  # the policy may be LoRA adapters (RLSetup.lora); the critic is trained whole

    vector_keys = ("critic_lr", "vf_coef", "vf_clip", "gamma", "lam")

    @staticmethod
    def group_size(sec) -> int:
        return 1

    @staticmethod
    def needs(sec) -> tuple[str, ...]:
        return ("reward_model", "critic")

    @staticmethod
    def check(name, sec, *, n_prompts: int, has_pretrain_texts: bool) -> None:
        check_common(name, sec, n_prompts=n_prompts, has_pretrain_texts=has_pretrain_texts)

    @staticmethod
    def hparams(sec) -> dict:
        hp = rl_hparams(sec)
        hp.update({k: jnp.asarray(getattr(sec, k), jnp.float32)
                   for k in ("vf_coef", "vf_clip", "gamma", "lam")})
        return hp

    @staticmethod
    def init(setup: RLSetup, sec, rng):
        head_rng, state_rng = jax.random.split(rng)
        if sec.critic == "shared":
            critic, d_model = {}, setup.model_cfg.d_model
        else:  # a separate critic initialised from the reward model (RLHF_NOTES)
            critic, d_model = {"backbone": setup.rm_params["backbone"]}, setup.rm_cfg.d_model
        critic["head"] = init_value_head(head_rng, d_model)
        params = {"policy": setup.initial_policy(rng), "critic": jax.tree_util.tree_map(jnp.copy, critic)}
        return init_rl_state(params, actor_critic_optimizer(sec), sec.kl.beta, state_rng)

    @staticmethod
    def make_iteration(setup: RLSetup, sec):
        targets, critic_loss = ActorCritic.parts(setup, sec)
        return make_onpolicy_iteration(setup, sec, tx=actor_critic_optimizer(sec), targets=targets,
                                       loss_fn=make_policy_loss(setup, sec, critic_loss))

    @staticmethod
    def parts(setup: RLSetup, sec):
        """``(targets, critic_loss)`` of the actor-critic iteration (NLPO and TRPO build on them)."""
        shared = getattr(sec, "critic", "separate") == "shared"
        P = setup.prompt_len

        def values_of(params, sequences, sequence_mask, hp, hidden=None):
            if shared:
                if hidden is None:
                    _, hidden = response_logits(setup.model_cfg, setup.policy_of(params, hp), sequences,
                                                sequence_mask, P)
                return token_scalars(params["critic"]["head"], hidden)
            return critic_values(setup.rm_cfg, params["critic"], sequences, sequence_mask, P)

        def targets(state, s, frozen, batch, hp, rng):
            values = values_of(state.train.params, s.sequences, s.sequence_mask, hp)
            values, _, adv, returns, metrics = ppo_targets(
                s, values, hp["kl_coef"], hp, kl_estimator=sec.kl.estimator,
                kl_in_reward=sec.kl.placement == "reward", whiten_rewards=sec.whiten_rewards)
            data = {"advantages": adv, "returns": returns, "values": values, "loss_mask": s.mask}
            return data, metrics, state

        def critic_loss(params, mb, hidden, hp):
            values = values_of(params, mb["sequences"], mb["sequence_mask"], hp, hidden if shared else None)
            return ppo_value_loss(values, mb["values"], mb["returns"], mb["loss_mask"], hp["vf_clip"])

        return targets, critic_loss
