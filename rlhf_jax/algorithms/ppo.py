"""PPO for language models (Schulman et al. 2017; Ziegler et al. 2019; Ouyang et al. 2022).

One jitted function does a whole iteration: rollout (sample, score, reference logprobs,
KL-penalised rewards, GAE, whitening), then ``epochs × minibatches`` clipped-surrogate updates as
nested ``lax.scan``s, then the KL-controller update. The KL coefficient and every sweepable
hyperparameter are arrays, so changing them never recompiles.

Actor-critic parameters: ``{'policy': lm_params, 'critic': {'backbone'?: lm_params, 'head': ...}}``.
With a separate critic (default, initialised from the reward model) the two parts share no
parameters; with ``shared`` the value head sits on the policy's hidden states.
Loss: ``L = L_clip + vf_coef·L_V − ent_coef·H + ptx_coef·L_LM`` (PPO-ptx, InstructGPT).
"""

from __future__ import annotations

import functools

import flax
import jax
import jax.numpy as jnp
import optax

from rlhf_jax.algorithms.kl_controller import KL_CONTROLLERS, KLState
from rlhf_jax.algorithms.rollout import critic_values, make_rollout, response_logits
from rlhf_jax.algorithms.step import gradient_step
from rlhf_jax.algorithms.train_state import TrainState
from rlhf_jax.losses.common import entropy_from_logits, masked_mean, token_logprobs
from rlhf_jax.losses.ppo import ppo_policy_loss, ppo_value_loss
from rlhf_jax.losses.sft import next_token_loss
from rlhf_jax.models import logits as lm_logits
from rlhf_jax.models import token_scalars


@flax.struct.dataclass
class PPOState:
    train: TrainState      # actor-critic params + optimizer state
    kl: KLState            # KL coefficient (array)
    rng: jax.Array
    iteration: jax.Array


PPO_HPARAMS = ("clip_eps", "vf_clip", "vf_coef", "ent_coef", "gamma", "lam", "temperature",
               "reward_clip", "no_eos_penalty", "ptx_coef", "kl_target", "kl_horizon")


def ppo_hparams(ppo_cfg) -> dict:
    """The sweepable PPO hyperparameters as float32 arrays (plus the EOS-penalty switch)."""
    hp = {k: jnp.asarray(getattr(ppo_cfg, k), jnp.float32) for k in PPO_HPARAMS[:8]}
    hp["no_eos_penalty"] = jnp.float32(0.0 if ppo_cfg.no_eos_penalty is None else ppo_cfg.no_eos_penalty)
    hp["use_eos_penalty"] = jnp.asarray(ppo_cfg.no_eos_penalty is not None)
    hp["ptx_coef"] = jnp.float32(ppo_cfg.ptx_coef)
    hp["kl_target"] = jnp.float32(ppo_cfg.kl.target)
    hp["kl_horizon"] = jnp.float32(ppo_cfg.kl.horizon)
    return hp


def make_ppo_loss(*, cfg, critic_cfg, prompt_len: int, shared_critic: bool, use_ptx: bool):
    """``loss_fn(params, batch, hparams)`` over a minibatch of a Rollout (+ ``ptx_*`` arrays)."""

    def loss_fn(params, mb, hp):
        mask = mb["mask"].astype(jnp.float32)
        logits, hidden = response_logits(cfg, params["policy"], mb["sequences"], mb["sequence_mask"],
                                         prompt_len)
        logp = token_logprobs(logits, mb["tokens"], hp["temperature"])
        pg_loss, pm = ppo_policy_loss(logp, mb["logprobs"], mb["advantages"], mask, hp["clip_eps"])
        if shared_critic:
            values = token_scalars(params["critic"]["head"], hidden)
        else:
            values = critic_values(critic_cfg, params["critic"], mb["sequences"], mb["sequence_mask"],
                                   prompt_len)
        vf_loss, vm = ppo_value_loss(values, mb["values"], mb["returns"], mask, hp["vf_clip"])
        entropy = masked_mean(entropy_from_logits(logits, hp["temperature"]), mask)
        loss = pg_loss + hp["vf_coef"] * vf_loss - hp["ent_coef"] * entropy
        metrics = {**pm, **vm, "loss/policy": pg_loss, "loss/value": vf_loss,
                   "policy/entropy": entropy}
        if use_ptx:
            ptx_logits = lm_logits(cfg, params["policy"], mb["ptx_ids"], mb["ptx_mask"])
            ptx_loss, _ = next_token_loss(ptx_logits, mb["ptx_ids"], mb["ptx_mask"])
            loss = loss + hp["ptx_coef"] * ptx_loss
            metrics["loss/ptx"] = ptx_loss
        return loss, jax.lax.stop_gradient(metrics)

    return loss_fn


def make_ppo_iteration(*, cfg, critic_cfg, rm_cfg, ppo_cfg, tx: optax.GradientTransformation,
                       prompt_len: int, max_new_tokens: int, eos_id: int, pad_id: int):
    """Build the jitted ``iteration(state, ref_params, rm_params, norm, prompt_ids, prompt_mask,
    ptx_ids, ptx_mask, hp) -> (state, metrics)``."""
    shared = ppo_cfg.critic == "shared"
    use_ptx = ppo_cfg.ptx_coef > 0
    rollout_fn = make_rollout(cfg=cfg, critic_cfg=critic_cfg, rm_cfg=rm_cfg,
                              max_new_tokens=max_new_tokens, eos_id=eos_id, pad_id=pad_id,
                              kl_estimator=ppo_cfg.kl.estimator, whiten_rewards=ppo_cfg.whiten_rewards,
                              shared_critic=shared)
    loss_fn = make_ppo_loss(cfg=cfg, critic_cfg=critic_cfg, prompt_len=prompt_len,
                            shared_critic=shared, use_ptx=use_ptx)
    kl_update = KL_CONTROLLERS.get(ppo_cfg.kl.controller)
    n_mb, n_epochs = ppo_cfg.minibatches, ppo_cfg.epochs

    def iteration(state: PPOState, ref_params, rm_params, norm, prompt_ids, prompt_mask, ptx_ids,
                  ptx_mask, hp):
        rng, gen_rng, perm_rng = jax.random.split(state.rng, 3)
        params = state.train.params
        ro, ro_metrics = rollout_fn(params["policy"], params["critic"], ref_params, rm_params, norm,
                                    prompt_ids, prompt_mask, gen_rng, state.kl.beta, hp)
        data = {"sequences": ro.sequences, "sequence_mask": ro.sequence_mask, "tokens": ro.tokens,
                "mask": ro.mask, "logprobs": ro.logprobs, "values": ro.values,
                "advantages": ro.advantages, "returns": ro.returns}
        if use_ptx:
            data["ptx_ids"], data["ptx_mask"] = ptx_ids, ptx_mask
        B = ro.tokens.shape[0]
        mb_size = B // n_mb

        def epoch(train, key):
            perm = jax.random.permutation(key, B)[: n_mb * mb_size].reshape(n_mb, mb_size)

            def minibatch(train, idx):
                mb = jax.tree_util.tree_map(lambda x: x[idx], data)
                return gradient_step(loss_fn, tx, train, mb, hp)

            return jax.lax.scan(minibatch, train, perm)

        train, upd_metrics = jax.lax.scan(epoch, state.train, jax.random.split(perm_rng, n_epochs))
        upd_metrics = jax.tree_util.tree_map(jnp.mean, upd_metrics)
        kl_state = kl_update(state.kl, ro_metrics["objective/kl"], B, hp["kl_target"], hp["kl_horizon"])
        new_state = PPOState(train=train, kl=kl_state, rng=rng, iteration=state.iteration + 1)
        return new_state, {**ro_metrics, **upd_metrics}

    return jax.jit(iteration, donate_argnums=(0,))


@functools.partial(jax.jit, static_argnames=("cfg", "prompt_len"))
def sequence_kl(cfg, params, ref_params, sequences, sequence_mask, mask, tokens, temperature,
                prompt_len: int):
    """Per-sequence ``Σ_t log π(y_t) − log π_ref(y_t)`` on given samples (an unbiased KL estimate)."""
    pl, _ = response_logits(cfg, params, sequences, sequence_mask, prompt_len)
    rl, _ = response_logits(cfg, ref_params, sequences, sequence_mask, prompt_len)
    m = mask.astype(jnp.float32)
    return ((token_logprobs(pl, tokens, temperature) - token_logprobs(rl, tokens, temperature)) * m).sum(-1)
