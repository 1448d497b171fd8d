"""Rollout: sample → score → reference logprobs → KL-penalised rewards → advantages.

Everything is a pure function of arrays, traced into the jitted PPO iteration. Layout: prompts are
left-padded to P tokens, responses are the N new tokens, so a sequence is ``[B, P + N]`` and the
logits at positions ``P−1 … P+N−2`` predict the response tokens.

Per-token reward (Ziegler et al. 2019; Stiennon et al. 2020):
``R_t = −β·kl_t`` plus the normalised, clipped reward-model score at the last response token;
a response with no EOS gets the fixed ``no_eos_penalty`` score instead (RLHF_NOTES).
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
class Rollout:
    sequences: jax.Array      # [B, P+N]
    sequence_mask: jax.Array  # [B, P+N]
    tokens: jax.Array         # [B, N]
    mask: jax.Array           # [B, N]
    logprobs: jax.Array       # [B, N] behaviour policy (temperature-scaled, full forward)
    ref_logprobs: jax.Array   # [B, N]
    values: jax.Array         # [B, N]
    rewards: jax.Array        # [B, N]
    advantages: jax.Array     # [B, N] whitened
    returns: jax.Array        # [B, N]
    scores: jax.Array         # [B] normalised score (after EOS penalty and clipping)


def response_logits(cfg, params, sequences, sequence_mask, prompt_len: int):
    """Logits predicting the response tokens, and the hidden states of the states before them."""
    logits, hidden, _ = forward(cfg, params, sequences, sequence_mask)
    sl = slice(prompt_len - 1, sequences.shape[1] - 1)
    return logits[:, sl], hidden[:, sl]


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


def make_rollout(*, cfg, critic_cfg, rm_cfg, max_new_tokens: int, eos_id: int, pad_id: int,
                 kl_estimator: str, whiten_rewards: bool, shared_critic: bool):
    """Build ``rollout(policy_params, critic_params, ref_params, rm_params, norm, prompts, mask,
    rng, beta, hp) -> (Rollout, metrics)`` (pure; jit it as part of the PPO iteration)."""

    def rollout(policy_params, critic_params, ref_params, rm_params, norm, prompt_ids, prompt_mask,
                rng, beta, hp):
        P = prompt_ids.shape[1]
        out = generate(cfg, policy_params, prompt_ids, prompt_mask, rng=rng,
                       max_new_tokens=max_new_tokens, temperature=hp["temperature"],
                       eos_id=eos_id, pad_id=pad_id)
        seq, seq_mask, tokens, mask = out.sequences, out.sequence_mask, out.tokens, out.mask
        maskf = mask.astype(jnp.float32)

        pol_logits, pol_hidden = response_logits(cfg, policy_params, seq, seq_mask, P)
        logp = token_logprobs(pol_logits, tokens, hp["temperature"]) * maskf
        ref_logits, _ = response_logits(cfg, ref_params, seq, seq_mask, P)
        ref_logp = token_logprobs(ref_logits, tokens, hp["temperature"]) * maskf
        if shared_critic:
            values = token_scalars(critic_params["head"], pol_hidden)
        else:
            values = critic_values(critic_cfg, critic_params, seq, seq_mask, P)
        values = values * maskf

        score, raw, has_eos = score_responses(rm_cfg, rm_params, norm, seq, seq_mask, tokens, mask,
                                              eos_id, hp)
        rewards, kl = kl_penalized_rewards(score, logp, ref_logp, maskf, beta, estimator=kl_estimator)
        if whiten_rewards:
            rewards = masked_whiten(rewards, maskf, shift_mean=False)
        adv, returns = gae(rewards, values, maskf, hp["gamma"], hp["lam"])
        adv = masked_whiten(adv, maskf)

        log_ratio = (logp - ref_logp) * maskf
        seq_kl = log_ratio.sum(-1)
        lengths = maskf.sum(-1)
        metrics = {
            "objective/kl": seq_kl.mean(),
            "objective/kl_k3": (jnp.expm1(-log_ratio) + log_ratio).sum(-1).mean(),
            "objective/scores": score.mean(),
            "objective/raw_scores": raw.mean(),
            "objective/rlhf_reward": (score - beta * seq_kl).mean(),
            "objective/entropy": (-logp).sum(-1).mean(),
            "objective/kl_coef": beta,
            "val/value_mean": masked_mean(values, maskf),
            "val/vf_explained_var": explained_variance(values, returns, maskf),
            "response/length": lengths.mean(),
            "response/eos_rate": has_eos.mean(),
        }
        ro = Rollout(sequences=seq, sequence_mask=seq_mask, tokens=tokens, mask=mask, logprobs=logp,
                     ref_logprobs=ref_logp, values=values, rewards=rewards, advantages=adv,
                     returns=returns, scores=score)
        return ro, jax.lax.stop_gradient(metrics)

    return rollout
