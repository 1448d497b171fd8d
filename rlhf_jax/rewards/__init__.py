"""Rewards that are not a trained model: gold scores and simulated labelers."""

from rlhf_jax.rewards.gold import GOLD_REWARDS, get_gold, register_gold, vader_compound
from rlhf_jax.rewards.labelers import label_ceiling, pairwise_labels, preference_prob, ranking_labels

__all__ = ["GOLD_REWARDS", "get_gold", "label_ceiling", "pairwise_labels", "preference_prob",
           "ranking_labels", "register_gold", "vader_compound"]
