"""Rollout in two parts: the critic-free part every on-policy algorithm shares, and PPO's own part.

Everything is a pure function of arrays, traced into an algorithm's jitted iteration. Layout:
prompts are left-padded to P tokens, responses are the N new tokens, so a sequence is
``[B, P + N]`` and the logits at positions ``P−1 … P+N−2`` predict the response tokens.

1. :func:`make_sampler` — sample → reward-model score (normalised ``gain·r + bias``, a fixed
   ``no_eos_penalty`` score for a response without EOS, clipped to ±``reward_clip``) → reference
   logprobs → per-token log-ratio ``log π − log π_ref``. The behaviour logprobs are the sampler's own
   (``log_softmax(logits / T)[y_t]`` of the cached decode, the same maths as a full forward) unless
   ``recompute_logprobs`` asks for a full forward.
2. :func:`ppo_targets` — per-token reward ``R_t = −β·kl_t`` plus the score at the last response
   token (Ziegler et al. 2019; Stiennon et al. 2020), optional reward whitening, GAE, whitened
   advantages.
"""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp

from rlhf_jax.algorithms.reward_model import rm_scores
from rlhf_jax.losses.advantages import gae
from rlhf_jax.losses.common import explained_variance, masked_mean, masked_whiten, token_logprobs
from rlhf_jax.losses.ppo import kl_penalized_rewards
from rlhf_jax.models import forward, token_scalars
from rlhf_jax.sampling import generate


@flax.struct.dataclass
class Samples:
    sequences: jax.Array      # [B, P+N]
    sequence_mask: jax.Array  # [B, P+N]
    tokens: jax.Array         # [B, N]
    mask: jax.Array           # [B, N]
    logprobs: jax.Array       # [B, N] behaviour policy, temperature-scaled (0 on padding)
    ref_logprobs: jax.Array   # [B, N] reference policy, same temperature (0 on padding)
    scores: jax.Array         # [B] normalised score (after EOS penalty and clipping)


def response_logits(cfg, params, sequences, sequence_mask, prompt_len: int):
    """Logits predicting the response tokens, and the hidden states of the states before them
    (the LM head runs at those positions only)."""
    start, stop = prompt_len - 1, sequences.shape[1] - 1
    logits, hidden, _ = forward(cfg, params, sequences, sequence_mask, logits_range=(start, stop))
    return logits, hidden[:, start:stop]


def critic_values(critic_cfg, critic_params, sequences, sequence_mask, prompt_len: int):
    """``V(s_t)`` for every response step: value head on the critic backbone's hidden states."""
    _, hidden = response_logits(critic_cfg, critic_params["backbone"], sequences, sequence_mask, prompt_len)
    return token_scalars(critic_params["head"], hidden)


def score_responses(rm_cfg, rm_params, norm, sequences, sequence_mask, tokens, mask, eos_id, hp):
    """Normalised RM score ``gain·r + bias``; no-EOS penalty; clipping to ±reward_clip."""
    raw = rm_scores(rm_cfg, rm_params, sequences, sequence_mask)
    score = norm["gain"] * raw + norm["bias"]
    has_eos = jnp.any((tokens == eos_id) & (mask > 0), axis=-1)
    score = jnp.where(has_eos | ~hp["use_eos_penalty"], score, hp["no_eos_penalty"])
    clip = jnp.where(hp["reward_clip"] > 0, hp["reward_clip"], jnp.inf)
    return jnp.clip(score, -clip, clip), raw, has_eos


def make_sampler(*, cfg, rm_cfg, max_new_tokens: int, eos_id: int, pad_id: int,
                 recompute_logprobs: bool = False, processor=None):
    """Build ``sample(policy_params, frozen, prompt_ids, prompt_mask, rng, hp) -> (Samples, metrics)``.

    ``frozen`` holds ``ref`` (reference params), ``rm`` (reward-model params) and ``norm``
    (``gain``/``bias``). Metrics: ``objective/scores``, ``objective/raw_scores``, ``objective/kl``
    (mean of Σ_t log π − log π_ref), ``objective/kl_k3``, ``objective/entropy`` (mean of −Σ_t log π,
    a sample estimate of the sequence entropy), ``response/length``, ``response/eos_rate``.
    ``processor`` (a ``sampling.LogitsProcessor``, its arrays passed to ``sample`` as
    ``processor_params``) rewrites the policy's logits at every step (NLPO's action mask); the
    behaviour logprobs are those of the processed distribution (``recompute_logprobs`` is then
    the caller's business).
    """

    def sample(policy_params, frozen, prompt_ids, prompt_mask, rng, hp, processor_params=None):
        P = prompt_ids.shape[1]
        out = generate(cfg, policy_params, prompt_ids, prompt_mask, rng=rng,
                       max_new_tokens=max_new_tokens, temperature=hp["temperature"],
                       eos_id=eos_id, pad_id=pad_id, processor=processor,
                       processor_params=processor_params)
        seq, seq_mask, tokens, mask = out.sequences, out.sequence_mask, out.tokens, out.mask
        maskf = mask.astype(jnp.float32)
        if recompute_logprobs:
            pol_logits, _ = response_logits(cfg, policy_params, seq, seq_mask, P)
            logp = token_logprobs(pol_logits, tokens, hp["temperature"]) * maskf
        else:
            logp = out.logprobs * maskf
        ref_logits, _ = response_logits(cfg, frozen["ref"], seq, seq_mask, P)
        ref_logp = token_logprobs(ref_logits, tokens, hp["temperature"]) * maskf
        score, raw, has_eos = score_responses(rm_cfg, frozen["rm"], frozen["norm"], seq, seq_mask,
                                              tokens, mask, eos_id, hp)
        log_ratio = (logp - ref_logp) * maskf
        metrics = {
            "objective/kl": log_ratio.sum(-1).mean(),
            "objective/kl_k3": ((jnp.expm1(-log_ratio) + log_ratio) * maskf).sum(-1).mean(),
            "objective/scores": score.mean(),
            "objective/raw_scores": raw.mean(),
            "objective/entropy": (-logp).sum(-1).mean(),
            "response/length": maskf.sum(-1).mean(),
            "response/eos_rate": has_eos.mean(),
        }
        s = Samples(sequences=seq, sequence_mask=seq_mask, tokens=tokens, mask=mask, logprobs=logp,
                    ref_logprobs=ref_logp, scores=score)
        return s, jax.lax.stop_gradient(metrics)

    return sample


def ppo_targets(s: Samples, values, beta, hp, *, kl_estimator: str = "k1", kl_in_reward: bool = True,
                whiten_rewards: bool = False):
    """PPO's part of the rollout: KL-penalised per-token rewards, GAE, whitened advantages.

    ``values`` [B, N] are the critic's ``V(s_t)`` of the rollout. Returns
    ``(values (masked), rewards, advantages, returns, metrics)`` with ``objective/rlhf_reward`` (score − β·Σ kl),
    ``val/value_mean`` and ``val/vf_explained_var``.
    """
    maskf = s.mask.astype(jnp.float32)
    values = values * maskf
    beta_r = beta if kl_in_reward else jnp.float32(0.0)
    rewards, kl = kl_penalized_rewards(s.scores, s.logprobs, s.ref_logprobs, maskf, beta_r,
                                       estimator=kl_estimator)
    if whiten_rewards:
        rewards = masked_whiten(rewards, maskf, shift_mean=False)
    adv, returns = gae(rewards, values, maskf, hp["gamma"], hp["lam"])
    adv = masked_whiten(adv, maskf)
    metrics = {
        "objective/rlhf_reward": (s.scores - beta_r * kl.sum(-1)).mean(),
        "val/value_mean": masked_mean(values, maskf),
        "val/vf_explained_var": explained_variance(values, returns, maskf),
    }
    return values, rewards, adv, returns, jax.lax.stop_gradient(metrics)
