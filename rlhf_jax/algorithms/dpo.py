"""The offline preference family: DPO (Rafailov et al. 2023), IPO (Azar et al. 2023), cDPO and
SimPO (Meng et al. 2024), presets of one loss over implicit rewards (``losses/dpo.py``).

They learn from step 2's comparisons directly, with no reward model and no sampling: the
simulated labelers' pairs or K-way rankings of the built-in task (``reward_data.npz``, split into
train and held-out prompts exactly as the reward model's), or the pairs of a TRL / HH / TL;DR
preference file. A batch is ``batch_size`` prompts with their K compared responses (one forward
per response, all C(K,2) pairs of a ranking). The reference's sequence logprobs of every response
are computed once, when the stage starts (:meth:`Preference.prepare`), and travel in the batch.

When the run trains a reward model anyway it is used only for evaluation (the proxy score of
held-out samples). Logged per step: ``rewards/chosen``, ``rewards/rejected``, ``rewards/margin``,
``rewards/accuracy`` (implicit rewards of the training pairs), ``logps/*``, ``loss/preference``;
at every evaluation the implicit-reward accuracy on the held-out pairs (``eval/implicit_accuracy``).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.algorithms.base import RLSetup, init_rl_state
from rlhf_jax.algorithms.offline import Offline
from rlhf_jax.algorithms.reward_model import per_sequence_in_chunks
from rlhf_jax.algorithms.rollout import response_logits
from rlhf_jax.algorithms.sections import OptimizerFields, chosen, ranged, section_optimizer
from rlhf_jax.algorithms.step import GUARD_KEY, gradient_step, nonfinite_code
from rlhf_jax.losses.common import token_logprobs
from rlhf_jax.losses.dpo import PREFERENCE_LOSSES, preference_loss, response_logprob

GUARDED = ("optim/", "loss/", "rewards/")


@dataclasses.dataclass(frozen=True)
class DPOConfig(OptimizerFields):
    """Offline preference optimisation on step 2's comparisons (no reward model, no sampling)."""
    iterations: int = ranged(300, 0)         # gradient steps
    batch_size: int = ranged(16, 1)          # prompts per step, each with its K compared responses
    loss: str = chosen("sigmoid", PREFERENCE_LOSSES)  # sigmoid (DPO, cDPO, SimPO) | ipo
    beta: float = ranged(0.1, 1e-6)          # β: implicit reward scale (the KL coefficient it solves for)
    label_smoothing: float = ranged(0.0, 0.0, 0.49)  # cDPO ε: labels flipped with probability ε
    margin: float = ranged(0.0, 0.0)         # target margin γ between implicit rewards (SimPO)
    reference: Literal["model", "none"] = "model"  # implicit reward against π_ref, or reference-free
    length_normalize: bool = False           # log π(y)/|y| instead of log π(y) (SimPO)
    lr: float = ranged(1e-4, 0.0)
    eval_every: int = ranged(50, 1)          # held-out gold/KL and implicit-accuracy evaluation


@functools.partial(jax.jit, static_argnames=("cfg", "prompt_len", "length_normalize"))
def _logps(cfg, params, ids, mask, *, prompt_len, length_normalize):
    logits, _ = response_logits(cfg, params, ids, mask, prompt_len)
    logp = token_logprobs(logits, ids[:, prompt_len:])
    return response_logprob(logp, mask[:, prompt_len:], length_normalize)


def response_logps(cfg, params, ids: np.ndarray, mask: np.ndarray, prompt_len: int,
                   length_normalize: bool, chunk: int = 256) -> np.ndarray:
    """log π(y|x) of every response of ``[n, K, L]`` comparisons -> ``[n, K]`` (fixed-size chunks:
    one compile)."""
    n, K, L = ids.shape
    fn = lambda i, m: _logps(cfg, params, i, m, prompt_len=prompt_len, length_normalize=length_normalize)  # noqa: E731
    return per_sequence_in_chunks(fn, ids.reshape(n * K, L), mask.reshape(n * K, L), chunk).reshape(n, K)


def _labels(d: dict) -> dict:
    return {k: d[k] for k in ("mu", "order") if k in d}


class Preference(Offline):
    """Offline preference optimisation on comparisons (``setup.preferences``): a batch is
    ``batch_size`` prompts with their K responses."""

    vector_keys = ("lr", "beta", "label_smoothing", "margin")
    progress_metrics = (("loss", "loss/preference"), ("acc", "rewards/accuracy"))

    @staticmethod
    def needs(sec) -> tuple[str, ...]:
        return ("preferences",)

    @staticmethod
    def check(name, sec, *, n_prompts: int, has_pretrain_texts: bool) -> None:
        if sec.loss == "ipo" and (sec.label_smoothing > 0 or sec.margin > 0):
            raise ValueError(f"{name}.loss = 'ipo' has its own target (1/(2β)): "
                             f"{name}.label_smoothing and {name}.margin apply to the sigmoid loss only")

    @staticmethod
    def hparams(sec) -> dict:
        return {k: jnp.float32(getattr(sec, k)) for k in ("beta", "label_smoothing", "margin")}

    @staticmethod
    def prepare(setup: RLSetup, sec) -> RLSetup:
        """The reference's logprobs of every train and held-out response, once (zeros when the
        implicit reward is reference-free)."""
        out = {}
        for split, d in setup.preferences.items():
            d = {k: v for k, v in d.items() if k != "gold"}
            if sec.reference == "model":
                d["ref_logps"] = response_logps(setup.model_cfg, setup.policy_params, d["input_ids"],
                                                d["attention_mask"], setup.prompt_len, sec.length_normalize)
            else:
                d["ref_logps"] = np.zeros(d["input_ids"].shape[:2], np.float32)
            out[split] = d
        return dataclasses.replace(setup, preferences=out)

    @staticmethod
    def init(setup: RLSetup, sec, rng):
        params = jax.tree_util.tree_map(jnp.copy, {"policy": setup.policy_params})
        return init_rl_state(params, section_optimizer(sec), sec.beta, rng)

    @staticmethod
    def make_iteration(setup: RLSetup, sec):
        cfg, P = setup.model_cfg, setup.prompt_len
        tx = section_optimizer(sec)

        def loss_fn(params, mb, hp):
            ids, mask = mb["input_ids"], mb["attention_mask"]
            B, K, L = ids.shape
            flat_ids = ids.reshape(B * K, L)
            logits, _ = response_logits(cfg, params["policy"], flat_ids, mask.reshape(B * K, L), P)
            logp = token_logprobs(logits, flat_ids[:, P:])
            seq = response_logprob(logp, mask.reshape(B * K, L)[:, P:], sec.length_normalize).reshape(B, K)
            rewards = hp["beta"] * (seq - mb["ref_logps"])
            return preference_loss(rewards, _labels(mb), hp, sec.loss, logps=seq)

        def iteration(state, frozen, batch, hp):
            train, metrics = gradient_step(loss_fn, tx, state.train, batch, hp)
            metrics[GUARD_KEY] = nonfinite_code(metrics, GUARDED)
            return state.replace(train=train, iteration=state.iteration + 1), metrics

        return setup.jit_iteration(iteration)

    @staticmethod
    def evaluate(setup: RLSetup, sec, params, hp) -> dict:
        """Implicit-reward accuracy, margin and loss on the held-out comparisons."""
        d = setup.preferences["eval"]
        seq = response_logps(setup.model_cfg, params, d["input_ids"], d["attention_mask"],
                             setup.prompt_len, sec.length_normalize)
        rewards = hp["beta"] * (jnp.asarray(seq) - jnp.asarray(d["ref_logps"]))
        loss, m = preference_loss(rewards, {k: jnp.asarray(v) for k, v in _labels(d).items()}, hp, sec.loss)
        return {"eval/implicit_accuracy": float(m["rewards/accuracy"]),
                "eval/implicit_margin": float(m["rewards/margin"]),
                "eval/preference_loss": float(loss)}
