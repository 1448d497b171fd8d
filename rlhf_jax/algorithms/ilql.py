"""ILQL (Snell et al. 2022): offline RL on step 2's logged responses and their rewards
(``losses/ilql.py`` has the objective).

The data are every response step 2 sampled (all K per prompt of the train split, as the reward
model's), each with one reward: its normalised reward-model score (``reward: reward_model``) or its
gold reward (``reward: gold``, the built-in task's labeler). Parameters: ``{'policy': LM, 'heads':
{'q1', 'q2', 'v'}}`` (two-layer heads on the LM's final hidden states), all trained together; the
target Q heads live in ``state.aux`` and follow the Q heads by Polyak averaging after every step.

The policy it yields is the LM *with* its heads: generation (training-time evaluation, the final
evaluation, ``sample`` / ``eval`` on the run) goes through the one jitted sampler with
:class:`AdvantageShift`, which turns each step's logits into log π + β·(min Q̂ − V).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.algorithms.base import RLSetup, init_rl_state
from rlhf_jax.algorithms.offline import Offline
from rlhf_jax.algorithms.reward_model import score_in_batches
from rlhf_jax.algorithms.rollout import response_logits
from rlhf_jax.algorithms.sections import OptimizerFields, ranged, section_optimizer
from rlhf_jax.algorithms.step import GUARD_KEY, gradient_step, nonfinite_code
from rlhf_jax.losses.common import token_logprobs
from rlhf_jax.losses.ilql import ilql_loss, shifted_logits
from rlhf_jax.models.heads import init_mlp_head, mlp_head
from rlhf_jax.sampling.generate import LogitsProcessor

GUARDED = ("optim/", "loss/")


@dataclasses.dataclass(frozen=True)
class ILQLConfig(OptimizerFields):
    """Offline Q-learning on step 2's samples; generation shifted by β·(Q̂ − V)."""
    iterations: int = ranged(1000, 0)        # gradient steps
    batch_size: int = ranged(32, 1)          # logged responses per step
    reward: Literal["reward_model", "gold"] = "reward_model"  # each response's reward: the
    #   normalised RM score, or the built-in task's gold reward
    gamma: float = ranged(0.99, 0.0, 1.0)    # discount per token
    tau: float = ranged(0.7, 0.0, 1.0)       # expectile of the V regression
    cql_coef: float = ranged(0.1, 0.0)       # weight of the CQL term
    awac_coef: float = ranged(1.0, 0.0)      # weight of the LM's NLL on the data (AWAC / BC)
    polyak: float = ranged(0.05, 0.0, 1.0)   # α: target Q ← (1 − α)·target Q + α·Q after every step
    beta: float = ranged(8.0, 0.0)           # generation: logits log π + β·(min Q̂ − V)
    lr: float = ranged(1e-3, 0.0)
    eval_every: int = ranged(100, 1)         # held-out gold/KL evaluation (with the shift)


@dataclasses.dataclass(frozen=True)
class AdvantageShift(LogitsProcessor):
    """Sampler hook: ``log π + β·(min_i Q̂_i − V)`` from heads on the policy's hidden state.
    ``params``: ``{'q1', 'q2', 'v', 'beta'}``."""

    def process(self, params, state, logits, hidden):
        tq = (mlp_head(params["q1"], hidden), mlp_head(params["q2"], hidden))
        return shifted_logits(logits, tq, mlp_head(params["v"], hidden)[..., 0], params["beta"])


def _flatten(d: dict) -> dict:
    n, K, L = d["input_ids"].shape
    out = {k: d[k].reshape(n * K, L) for k in ("input_ids", "attention_mask")}
    if "gold" in d:
        out["gold"] = d["gold"].reshape(n * K).astype(np.float32)
    return out


class ImplicitQ(Offline):
    """ILQL on logged responses (``setup.preferences``: step 2's samples, flattened)."""

    vector_keys = ("lr", "gamma", "tau", "cql_coef", "awac_coef", "polyak", "beta")
    progress_metrics = (("loss", "loss/ilql"), ("adv", "ilql/advantage_mean"))
    batch_keys = ("input_ids", "attention_mask", "rewards")

    @staticmethod
    def needs(sec) -> tuple[str, ...]:
        return ("logged responses", "reward_model" if sec.reward == "reward_model" else "gold rewards")

    @staticmethod
    def check(name, sec, *, n_prompts: int, has_pretrain_texts: bool) -> None:
        return None

    @staticmethod
    def hparams(sec) -> dict:
        return {k: jnp.float32(getattr(sec, k)) for k in ("gamma", "tau", "cql_coef", "awac_coef",
                                                          "polyak", "beta")}

    @staticmethod
    def prepare(setup: RLSetup, sec) -> RLSetup:
        """Every logged response of the train split with its reward, once."""
        d = _flatten(setup.preferences["train"])
        if sec.reward == "gold":
            d["rewards"] = d.pop("gold")
        else:
            raw = score_in_batches(setup.rm_cfg, setup.rm_params, d["input_ids"], d["attention_mask"])
            d["rewards"] = (setup.rm_norm["gain"] * raw + setup.rm_norm["bias"]).astype(np.float32)
            d.pop("gold", None)
        return dataclasses.replace(setup, preferences={"train": d})

    @staticmethod
    def init(setup: RLSetup, sec, rng):
        cfg = setup.model_cfg
        k1, k2, k3, state_rng = jax.random.split(rng, 4)
        heads = {"q1": init_mlp_head(k1, cfg.d_model, cfg.vocab_size),
                 "q2": init_mlp_head(k2, cfg.d_model, cfg.vocab_size),
                 "v": init_mlp_head(k3, cfg.d_model, 1)}
        params = jax.tree_util.tree_map(jnp.copy, {"policy": setup.policy_params, "heads": heads})
        state = init_rl_state(params, section_optimizer(sec), 0.0, state_rng)
        target = jax.tree_util.tree_map(jnp.copy, {"q1": heads["q1"], "q2": heads["q2"]})
        return state.replace(aux={"target": target})

    @staticmethod
    def make_iteration(setup: RLSetup, sec):
        cfg, P = setup.model_cfg, setup.prompt_len
        tx = section_optimizer(sec)

        def loss_fn(params, mb, hp):
            ids, mask = mb["input_ids"], mb["attention_mask"]
            logits, hidden = response_logits(cfg, params["policy"], ids, mask, P)
            actions, m = ids[:, P:], mask[:, P:]
            heads, target = params["heads"], mb["target"]
            q_all = (mlp_head(heads["q1"], hidden), mlp_head(heads["q2"], hidden))
            target_all = (mlp_head(target["q1"], hidden), mlp_head(target["q2"], hidden))
            v = mlp_head(heads["v"], hidden)[..., 0]
            lm = token_logprobs(logits, actions)
            return ilql_loss(q_all, target_all, v, lm, actions, m, mb["rewards"], hp)

        def iteration(state, frozen, batch, hp):
            mb = dict(batch, target=state.aux["target"])
            train, metrics = gradient_step(loss_fn, tx, state.train, mb, hp)
            heads = train.params["heads"]
            a = hp["polyak"]
            target = {k: jax.tree_util.tree_map(lambda t, q: (1.0 - a) * t + a * q, state.aux["target"][k],
                                                heads[k]) for k in ("q1", "q2")}
            metrics[GUARD_KEY] = nonfinite_code(metrics, GUARDED)
            return state.replace(train=train, aux={"target": target}, iteration=state.iteration + 1), metrics

        return setup.jit_iteration(iteration)

    @staticmethod
    def decoder(state, hp):
        """The sampler hook that makes the LM + heads the policy."""
        heads = state.train.params["heads"]
        return AdvantageShift(), {"q1": state.aux["target"]["q1"], "q2": state.aux["target"]["q2"],
                                  "v": heads["v"], "beta": hp["beta"]}
