"""The critic-free family: one score per response, a baseline from other samples.

REINFORCE (Williams 1992), RLOO (Kool et al. 2019; Ahmadian et al. 2024), GRPO (Shao et al. 2024),
Dr. GRPO (Liu et al. 2025), DAPO (Yu et al. 2025), GSPO (Zheng et al. 2025), CISPO (MiniMax 2025)
and ReMax (Li et al. 2023) are presets of this one family (``algorithms/registry.py``).

Per response i of a group of k samples of one prompt, the return is the shaped RM score, minus
``β·Σ_t kl_t`` when the KL sits in the reward (``kl.placement: reward``):
``R_i = score_i − β·Σ_t k(π, π_ref)_t``. The advantage ``A_i = R_i − b_i`` comes from the chosen
estimator (``advantage``: reinforce with a batch-mean or moving-average baseline, rloo, grpo,
dr_grpo, remax), optionally whitened over the batch, and is broadcast over the response's tokens.
DAPO's dynamic sampling masks groups whose k scores are all equal out of the loss (fixed shapes, no
resampling) and logs their fraction as ``group/zero_variance_frac``.
"""

from __future__ import annotations

import jax.numpy as jnp

from rlhf_jax.algorithms.base import (RLSetup, check_common, init_rl_state, make_onpolicy_iteration,
                                      make_policy_loss, rl_hparams)
from rlhf_jax.algorithms.rollout import score_responses
from rlhf_jax.algorithms.sections import GROUP_ESTIMATORS, section_optimizer
from rlhf_jax.losses.advantages import (group_baseline, moving_average_baseline, remax_advantages,
                                        zero_variance_groups)
from rlhf_jax.losses.common import kl_estimate, masked_whiten
from rlhf_jax.sampling import generate


class CriticFree:
    """Sequence-level advantages from k samples per prompt (or a greedy / running baseline)."""

    lora = True  # the policy may be LoRA adapters (RLSetup.lora)

    vector_keys = ("adv_eps", "baseline_decay")

    @staticmethod
    def group_size(sec) -> int:
        return sec.group_size

    @staticmethod
    def needs(sec) -> tuple[str, ...]:
        needs = ("reward_model",)
        if sec.advantage in GROUP_ESTIMATORS or sec.dynamic_sampling:
            needs += ("groups of k >= 2 samples per prompt",)
        return needs

    @staticmethod
    def check(name, sec, *, n_prompts: int, has_pretrain_texts: bool) -> None:
        k = sec.group_size
        why = {"rloo": "its leave-one-out baseline averages the other k − 1 responses to the prompt",
               "grpo": "its baseline is the mean and standard deviation of the k responses to a prompt",
               "dr_grpo": "its baseline is the mean of the k responses to a prompt (with k = 1 every "
                          "advantage is 0)"}
        if sec.advantage in why and k < 2:
            raise ValueError(f"{name}.group_size = {k}: advantage '{sec.advantage}' needs at least 2 "
                             f"responses per prompt ({why[sec.advantage]})")
        if sec.dynamic_sampling and k < 2:
            raise ValueError(f"{name}.dynamic_sampling needs {name}.group_size >= 2 (it masks groups "
                             f"whose k scores are all equal), got {k}")
        if sec.batch_size % k:
            raise ValueError(f"{name}.batch_size ({sec.batch_size}) must be a multiple of "
                             f"{name}.group_size ({k}): a batch is prompts × k responses")
        check_common(name, sec, n_prompts=n_prompts, has_pretrain_texts=has_pretrain_texts, group_size=k)

    @staticmethod
    def hparams(sec) -> dict:
        hp = rl_hparams(sec)
        hp["adv_eps"] = jnp.float32(sec.adv_eps)
        hp["baseline_decay"] = jnp.float32(sec.baseline_decay)
        return hp

    @staticmethod
    def init(setup: RLSetup, sec, rng):
        params = {"policy": setup.initial_policy(rng)}
        return init_rl_state(params, section_optimizer(sec), sec.kl.beta, rng)

    @staticmethod
    def make_iteration(setup: RLSetup, sec):
        k = sec.group_size
        kl_in_reward = sec.kl.placement == "reward"

        def greedy_scores(params, frozen, batch, hp, rng):
            """ReMax's baseline: the shaped score of the greedy response to each prompt."""
            ids, mask = batch["prompt_ids"][::k], batch["prompt_mask"][::k]
            g = generate(setup.model_cfg, params, ids, mask, rng=rng, max_new_tokens=setup.response_len,
                         temperature=0.0, eos_id=setup.eos_id, pad_id=setup.pad_id)
            score, _, _ = score_responses(setup.rm_cfg, frozen["rm"], frozen["norm"], g.sequences,
                                          g.sequence_mask, g.tokens, g.mask, setup.eos_id, hp)
            return jnp.repeat(score, k)

        def targets(state, s, frozen, batch, hp, rng):
            maskf = s.mask.astype(jnp.float32)
            R = s.scores
            if kl_in_reward:
                seq_kl = kl_estimate(s.logprobs, s.ref_logprobs, maskf, sec.kl.estimator).sum(-1)
                R = R - hp["kl_coef"] * seq_kl
            metrics = {"objective/rlhf_reward": R.mean()}
            if sec.advantage == "reinforce":
                if sec.baseline == "moving_average":
                    b, ema, count = moving_average_baseline(state.baseline, state.baseline_count,
                                                            R.mean(), hp["baseline_decay"])
                    state = state.replace(baseline=ema, baseline_count=count)
                else:
                    b = R.mean()
                adv = R - b
                metrics["policy/baseline"] = jnp.mean(b)
            elif sec.advantage == "remax":
                g = greedy_scores(setup.policy_of(state.train.params, hp), frozen, batch, hp, rng)
                adv = remax_advantages(R, g)
                metrics["policy/baseline"] = g.mean()
            else:
                adv = group_baseline(R, k, mode=sec.advantage, eps=hp["adv_eps"])
            loss_mask = s.mask
            if k > 1:
                zero = zero_variance_groups(s.scores, k)
                metrics["group/zero_variance_frac"] = zero.mean()
                metrics["group/score_std"] = jnp.std(s.scores.reshape(-1, k), axis=1, ddof=1).mean()
                if sec.dynamic_sampling:
                    loss_mask = s.mask * (1 - zero.astype(s.mask.dtype))[:, None]
            if sec.whiten_advantages:
                adv = masked_whiten(adv, jnp.any(loss_mask > 0, axis=-1))
            data = {"advantages": adv[:, None] * maskf, "loss_mask": loss_mask}
            return data, metrics, state

        return make_onpolicy_iteration(setup, sec, tx=section_optimizer(sec), targets=targets,
                                       loss_fn=make_policy_loss(setup, sec))
