"""TRPO (Schulman et al. 2015; in RL4LMs' comparisons) on the shared on-policy iteration.

The rollout and the targets are PPO's (critic values, KL-penalised per-token rewards, GAE,
whitened advantages: ``ppo.ActorCritic.parts``). The update differs: one natural-gradient step of
the policy per rollout (``losses/trpo.py``: conjugate gradient on Fisher-vector products of the
mean per-token KL(π_old‖π_θ), the step scaled to the trust region δ = ``max_kl``, a backtracking
line search that accepts only a step that improves the surrogate and keeps the KL ≤ δ), then the
critic regressed on the returns by Adam (``epochs × minibatches`` steps of PPO's clipped value
loss at ``lr``). The policy has no optimizer and no learning rate.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import optax

from rlhf_jax.algorithms.base import RLSetup, RLState, check_minibatches, make_onpolicy_iteration
from rlhf_jax.algorithms.kl_controller import init_kl_state
from rlhf_jax.algorithms.ppo import ActorCritic
from rlhf_jax.algorithms.rollout import response_logits
from rlhf_jax.algorithms.sections import KLConfig, OptimizerFields, ranged, section_optimizer
from rlhf_jax.algorithms.step import run_epochs
from rlhf_jax.algorithms.train_state import TrainState
from rlhf_jax.losses.common import entropy_from_logits, masked_mean
from rlhf_jax.models import init_value_head
from rlhf_jax.losses.trpo import (backtracking_line_search, conjugate_gradient, fisher_vector_product,
                                  natural_step)


@dataclasses.dataclass(frozen=True)
class TRPOConfig(OptimizerFields):
    """A trust-region natural-gradient step per rollout; the critic regressed by Adam at ``lr``."""
    iterations: int = ranged(60, 0)          # rollout + update rounds
    batch_size: int = ranged(64, 1)          # sampled responses per iteration
    max_kl: float = ranged(0.02, 1e-8)       # δ: mean per-token KL(π_old‖π_new) of a step
    cg_iters: int = ranged(10, 1)            # conjugate-gradient steps for F⁻¹g
    cg_damping: float = ranged(0.1, 0.0)     # F + damping·I (keeps the solve well-posed)
    backtrack_iters: int = ranged(10, 1)     # line-search candidates c^0 … c^(n−1)
    backtrack_coef: float = ranged(0.5, 1e-3, 0.999)  # c: shrink factor of the line search
    epochs: int = ranged(4, 1)               # critic: passes over each rollout batch
    minibatches: int = ranged(4, 1)          # critic: gradient steps per pass
    lr: float = ranged(1e-3, 0.0)            # the critic's learning rate
    vf_clip: float = ranged(0.2, 0.0)
    gamma: float = ranged(1.0, 0.0, 1.0)
    lam: float = ranged(0.95, 0.0, 1.0)
    whiten_rewards: bool = False
    temperature: float = ranged(1.0, 1e-3)   # sampling temperature (the logprobs use it too)
    reward_clip: float = ranged(10.0, 0.0)   # clip the normalised score to ±this (0: off)
    no_eos_penalty: Optional[float] = -1.0   # score of a response with no EOS (None: keep RM score)
    recompute_logprobs: bool = False         # behaviour logprobs from a full forward (else the sampler's)
    kl: KLConfig = KLConfig()                # the KL penalty to the reference, in the reward
    eval_every: int = ranged(10, 1)


_HP = ("max_kl", "cg_damping", "backtrack_coef", "vf_clip", "gamma", "lam", "temperature", "reward_clip")


class TrustRegion(ActorCritic):
    """TRPO: the actor-critic family (its needs, targets and critic loss) with a natural-gradient,
    line-searched policy step in place of the clipped-surrogate epochs."""

    lora = False  # its natural-gradient step works on the whole policy

    vector_keys = ("lr", "max_kl", "cg_damping", "backtrack_coef", "vf_clip", "gamma", "lam",
                   "temperature", "reward_clip", "no_eos_penalty", "kl.beta", "kl.target", "kl.horizon")

    @staticmethod
    def check(name, sec, *, n_prompts: int, has_pretrain_texts: bool) -> None:
        check_minibatches(name, sec, n_prompts)
        if sec.kl.placement == "loss":
            raise ValueError(f"{name}.kl.placement = 'loss': TRPO's objective is the surrogate alone "
                             f"(its trust region is the KL to the previous policy); put the KL to the "
                             f"reference in the reward ('reward') or nowhere ('none')")

    @staticmethod
    def hparams(sec) -> dict:
        hp = {k: jnp.float32(getattr(sec, k)) for k in _HP}
        hp.update(no_eos_penalty=jnp.float32(0.0 if sec.no_eos_penalty is None else sec.no_eos_penalty),
                  use_eos_penalty=jnp.asarray(sec.no_eos_penalty is not None),
                  kl_target=jnp.float32(sec.kl.target), kl_horizon=jnp.float32(sec.kl.horizon))
        return hp

    @staticmethod
    def init(setup: RLSetup, sec, rng):
        """The policy, and a separate critic initialised from the reward model (as PPO's); only
        the critic has an optimizer state."""
        head_rng, state_rng = jax.random.split(rng)
        critic = {"backbone": setup.rm_params["backbone"], "head": init_value_head(head_rng, setup.rm_cfg.d_model)}
        params = jax.tree_util.tree_map(jnp.copy, {"policy": setup.policy_params, "critic": critic})
        train = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                           opt_state=section_optimizer(sec).init(params["critic"]))
        return RLState(train=train, kl=init_kl_state(sec.kl.beta), rng=state_rng,
                       iteration=jnp.zeros((), jnp.int32), baseline=jnp.zeros((), jnp.float32),
                       baseline_count=jnp.zeros((), jnp.float32))  # distinct buffers: the state is donated

    @staticmethod
    def make_iteration(setup: RLSetup, sec):
        cfg, P = setup.model_cfg, setup.prompt_len
        targets, critic_loss = ActorCritic.parts(setup, sec)
        critic_tx = section_optimizer(sec)

        def update(train: TrainState, data, hp, rng):
            policy = train.params["policy"]
            seq, seq_mask, tokens = data["sequences"], data["sequence_mask"], data["tokens"]
            mask = data["loss_mask"].astype(jnp.float32)
            adv, T = data["advantages"], hp["temperature"]

            def log_probs(p):
                logits, _ = response_logits(cfg, p, seq, seq_mask, P)
                return logits, jax.nn.log_softmax(logits.astype(jnp.float32) / T, axis=-1)

            logits_old, logq_old = log_probs(policy)
            logq_old = jax.lax.stop_gradient(logq_old)
            lp_old = jnp.take_along_axis(logq_old, tokens[..., None], -1)[..., 0]

            def surrogate_and_kl(p):
                _, logq = log_probs(p)
                lp = jnp.take_along_axis(logq, tokens[..., None], -1)[..., 0]
                surr = masked_mean(jnp.exp(lp - lp_old) * adv, mask)
                kl = masked_mean(jnp.sum(jnp.exp(logq_old) * (logq_old - logq), -1), mask)
                return surr, kl

            grad = jax.grad(lambda p: surrogate_and_kl(p)[0])(policy)
            fvp = fisher_vector_product(lambda p: surrogate_and_kl(p)[1], policy, hp["cg_damping"])
            direction, residual = conjugate_gradient(fvp, grad, sec.cg_iters)
            step, expected = natural_step(grad, direction, fvp, hp["max_kl"])
            new_policy, metrics = backtracking_line_search(surrogate_and_kl, policy, step, hp["max_kl"],
                                                           iters=sec.backtrack_iters, coef=hp["backtrack_coef"])

            def value_loss(critic, mb, hp):
                return critic_loss({"critic": critic}, mb, None, hp)

            critic_state = TrainState(step=train.step, params=train.params["critic"], opt_state=train.opt_state)
            critic_state, vm = run_epochs(value_loss, critic_tx, critic_state, data, hp, rng,
                                          epochs=sec.epochs, minibatches=sec.minibatches)
            entropy = masked_mean(entropy_from_logits(logits_old, T), mask)
            metrics.update({"trpo/expected_gain": expected, "trpo/cg_residual": residual,
                            "optim/policy_grad_norm": optax.global_norm(grad),
                            "policy/entropy": entropy, "policy/approxkl": metrics["trpo/kl"],
                            "loss/value": vm["optim/loss"], "optim/grad_norm": vm["optim/grad_norm"],
                            **{k: v for k, v in vm.items() if k.startswith("val/")}})
            new = TrainState(step=train.step + 1, params={"policy": new_policy, "critic": critic_state.params},
                             opt_state=critic_state.opt_state)
            return new, metrics

        return make_onpolicy_iteration(setup, sec, tx=critic_tx, targets=targets, loss_fn=None,
                                       update=update)
