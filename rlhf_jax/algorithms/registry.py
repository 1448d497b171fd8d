"""The built-in RL algorithms, registered by name: ``algorithm: NAME`` in a config picks one.

The on-policy ones are presets of one policy-gradient objective (``losses/pg.py``: ratio × clip × aggregation,
KL placement) on one of two families (``ppo.ActorCritic`` with a critic and GAE,
``pg.CriticFree`` with sequence-level baselines); the offline preference ones (DPO, IPO, cDPO,
SimPO) presets of one loss over implicit rewards (``dpo.Preference``). A preset's section is its family's config class
with the preset's defaults, so every choice can be overridden (``grpo.aggregation=token_mean``) and
the run's resolved ``config.yaml`` shows all of them. ``docs/algorithms.md`` has the equations.

Adding an algorithm: a section class (``sections.preset_section`` of an existing one, or your own),
a family object with ``group_size, needs, check, hparams, init, make_iteration``, and::

    register("name", MySection, MyFamily, "one line", "Author et al. YEAR")
"""

from __future__ import annotations

from rlhf_jax.algorithms.base import ALGORITHMS, Algorithm
from rlhf_jax.algorithms.dpo import DPOConfig, Preference
from rlhf_jax.algorithms.ilql import ILQLConfig, ImplicitQ
from rlhf_jax.algorithms.nlpo import MaskedActorCritic, NLPOConfig
from rlhf_jax.algorithms.trpo import TRPOConfig, TrustRegion
from rlhf_jax.algorithms.pg import CriticFree
from rlhf_jax.algorithms.ppo import ActorCritic
from rlhf_jax.algorithms.sections import PGConfig, PPOConfig, preset_section

__all__ = ["ALGORITHMS", "Algorithm", "register", "get_algorithm"]


def register(name: str, section: type, family, summary: str, paper: str) -> Algorithm:
    algo = Algorithm(name=name, section=section, family=family, summary=summary, paper=paper)
    ALGORITHMS.register(name)(algo)
    return algo


def get_algorithm(name: str) -> Algorithm:
    return ALGORITHMS.get(name)


def _preset(name, base, family, summary, paper, **defaults):
    register(name, preset_section(base, name, f"{name}: {summary} ({paper}).", **defaults), family,
             summary, paper)


_GROUP = dict(advantage="grpo", group_size=4, epochs=2, minibatches=4)

register("ppo", PPOConfig, ActorCritic,
         "clipped surrogate, GAE with a learned critic, per-token KL penalty in the reward",
         "Schulman et al. 2017; Ziegler et al. 2019; Ouyang et al. 2022")
_preset("a2c", PPOConfig, ActorCritic,
        "advantage actor-critic: GAE advantages, plain −A·log π, one gradient step per rollout",
        "Mnih et al. 2016; Rae et al. 2021 (Gopher)",
        epochs=1, minibatches=1, ratio="none", clip="none", lr=2e-3, critic_lr=2e-3)
register("nlpo", NLPOConfig, MaskedActorCritic,
         "PPO with the action space masked to the top-p tokens of a periodically re-synced masking policy",
         "Ramamurthy et al. 2022 (RL4LMs)")
register("trpo", TRPOConfig, TrustRegion,
         "one natural-gradient step per rollout (conjugate gradient on Fisher-vector products), "
         "line-searched to stay inside a KL trust region; critic regressed as in PPO",
         "Schulman et al. 2015")
_preset("reinforce", PGConfig, CriticFree,
        "REINFORCE with a baseline (batch mean or moving average), one step per rollout",
        "Williams 1992",
        advantage="reinforce", group_size=1, epochs=1, minibatches=1, ratio="none", clip="none",
        aggregation="seq_mean_token_sum", lr=2e-3)
_preset("rloo", PGConfig, CriticFree,
        "REINFORCE with the leave-one-out baseline over k samples per prompt",
        "Kool et al. 2019; Ahmadian et al. 2024",
        advantage="rloo", group_size=4, epochs=1, minibatches=1, ratio="none", clip="none",
        aggregation="seq_mean_token_sum", lr=2e-3)
_preset("grpo", PGConfig, CriticFree,
        "group-normalised advantages (mean/std of k samples), clipped token ratio, k3 KL loss term",
        "Shao et al. 2024 (DeepSeekMath)",
        **_GROUP, aggregation="seq_mean_token_mean",
        kl={"placement": "loss", "estimator": "k3", "controller": "fixed", "beta": 0.04})
_preset("dr_grpo", PGConfig, CriticFree,
        "GRPO without the std division and without per-response length normalisation",
        "Liu et al. 2025 (Understanding R1-Zero-like training)",
        **dict(_GROUP, advantage="dr_grpo"), aggregation="seq_mean_token_sum_norm",
        kl={"placement": "loss", "estimator": "k3", "controller": "fixed", "beta": 0.04})
_preset("dapo", PGConfig, CriticFree,
        "clip-higher (ε_low 0.2, ε_high 0.28), token-level loss, zero-variance groups masked, no KL",
        "Yu et al. 2025",
        **_GROUP, clip_eps=0.2, clip_eps_high=0.28, aggregation="token_mean", dynamic_sampling=True,
        kl={"placement": "none"})
_preset("gspo", PGConfig, CriticFree,
        "one length-normalised importance ratio per sequence, clipped to a tiny range, no KL",
        "Zheng et al. 2025",
        **_GROUP, ratio="sequence", clip_eps=3e-4, clip_eps_high=4e-4,
        aggregation="seq_mean_token_mean", kl={"placement": "none"})
_preset("cispo", PGConfig, CriticFree,
        "clipped importance weight as a stop-gradient coefficient on log π: every token keeps a gradient",
        "MiniMax 2025 (MiniMax-M1)",
        **_GROUP, clip="cispo", clip_eps_high=0.28, aggregation="token_mean", kl={"placement": "none"})
_preset("remax", PGConfig, CriticFree,
        "REINFORCE with the greedy response's score as the per-prompt baseline",
        "Li et al. 2023",
        advantage="remax", group_size=1, epochs=1, minibatches=1, ratio="none", clip="none",
        aggregation="seq_mean_token_sum", lr=2e-3)

register("dpo", DPOConfig, Preference,
         "direct preference optimisation: −log σ of the implicit-reward margin, from step 2's comparisons",
         "Rafailov et al. 2023")
_preset("ipo", DPOConfig, Preference,
        "identity preference optimisation: squared loss toward a log-ratio margin of 1/(2β)",
        "Azar et al. 2023", loss="ipo", beta=0.1)
_preset("cdpo", DPOConfig, Preference,
        "conservative DPO: labels smoothed by ε, robust to flipped comparisons",
        "Mitchell 2023; Rafailov et al. 2023", label_smoothing=0.1)
_preset("simpo", DPOConfig, Preference,
        "reference-free, length-normalised implicit reward with a target margin γ",
        "Meng et al. 2024", reference="none", length_normalize=True, beta=2.0, margin=1.0)
register("ilql", ILQLConfig, ImplicitQ,
         "offline Q-learning on step 2's logged responses: twin token Q heads, expectile V, CQL; "
         "generation shifted by β·(Q − V)", "Snell et al. 2022")
