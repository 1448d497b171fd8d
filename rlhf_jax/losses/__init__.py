"""The maths of RLHF as pure array functions: ``(loss, metrics)`` losses and estimators."""
from rlhf_jax.losses.registry import ADVANTAGE_ESTIMATORS, KL_ESTIMATORS, LOSSES, Registry
from rlhf_jax.losses.common import (
    entropy_from_logits,
    explained_variance,
    kl_estimate,
    kl_k1,
    kl_k2,
    kl_k3,
    masked_count,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
    token_logprobs,
)
from rlhf_jax.losses.sft import next_token_loss, sequence_logprob
from rlhf_jax.losses.reward import (
    NORMALIZATIONS,
    apply_normalization,
    bradley_terry_loss,
    fit_normalization,
    kway_bradley_terry_loss,
    ranking_pairs,
)
from rlhf_jax.losses.advantages import (
    GROUP_MODES,
    dr_grpo_advantages,
    gae,
    grpo_advantages,
    group_baseline,
    moving_average_baseline,
    reinforce_advantages,
    remax_advantages,
    rloo_advantages,
    zero_variance_groups,
)
from rlhf_jax.losses.pg import AGGREGATIONS, CLIPS, RATIOS, kl_loss_term, policy_gradient_loss
from rlhf_jax.losses.ppo import (
    a2c_policy_loss,
    kl_penalized_rewards,
    last_valid_index,
    ppo_policy_loss,
    ppo_value_loss,
)

__all__ = [
    "AGGREGATIONS", "CLIPS", "RATIOS", "kl_loss_term", "moving_average_baseline",
    "policy_gradient_loss", "remax_advantages", "zero_variance_groups",
    "ADVANTAGE_ESTIMATORS", "GROUP_MODES", "KL_ESTIMATORS", "LOSSES", "NORMALIZATIONS", "Registry",
    "a2c_policy_loss", "apply_normalization", "bradley_terry_loss", "dr_grpo_advantages",
    "entropy_from_logits", "explained_variance", "fit_normalization", "gae", "grpo_advantages",
    "group_baseline", "kl_estimate", "kl_k1", "kl_k2", "kl_k3", "kl_penalized_rewards",
    "kway_bradley_terry_loss", "last_valid_index", "masked_count", "masked_mean", "masked_sum",
    "masked_var", "masked_whiten", "next_token_loss", "ppo_policy_loss", "ppo_value_loss",
    "ranking_pairs", "reinforce_advantages", "rloo_advantages", "sequence_logprob",
    "token_logprobs",
]
