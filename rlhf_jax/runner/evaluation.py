"""Sampling helpers on the host side: many prompts through the jitted sampler in fixed-size chunks
(one compile), decoding, gold scoring, best-of-n and the KL of samples to the reference."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.algorithms.rollout import response_logits
from rlhf_jax.losses.common import token_logprobs
from rlhf_jax.sampling import generate
from rlhf_jax.sharding.distributed import to_host


@functools.partial(jax.jit, static_argnames=("cfg", "prompt_len"))
def sequence_kl(cfg, params, ref_params, sequences, sequence_mask, mask, tokens, temperature,
                prompt_len: int):
    """Per-sequence ``Σ_t log π(y_t) − log π_ref(y_t)`` on given samples (an unbiased KL estimate)."""
    pl, _ = response_logits(cfg, params, sequences, sequence_mask, prompt_len)
    rl, _ = response_logits(cfg, ref_params, sequences, sequence_mask, prompt_len)
    m = mask.astype(jnp.float32)
    return ((token_logprobs(pl, tokens, temperature) - token_logprobs(rl, tokens, temperature)) * m).sum(-1)


def sample_many(cfg, params, prompt_ids: np.ndarray, prompt_mask: np.ndarray, *, rng, n: int,
                max_new_tokens: int, temperature: float, eos_id: int, pad_id: int,
                chunk: int = 128, decoder=None) -> dict[str, np.ndarray]:
    """``n`` samples of every prompt; arrays ``[len(prompts) * n, ...]`` ordered prompt-major.
    ``decoder``: ``(processor, processor_params)`` of a policy that is more than its LM (ILQL);
    the ``logprobs`` returned are then the processed distribution's."""
    processor, pparams = decoder if decoder is not None else (None, None)
    ids = np.repeat(prompt_ids, n, axis=0)
    mask = np.repeat(prompt_mask, n, axis=0)
    total = len(ids)
    chunk = min(chunk, total)
    outs = {k: [] for k in ("sequences", "sequence_mask", "tokens", "mask", "logprobs")}
    for i, s in enumerate(range(0, total, chunk)):
        cid, cm = ids[s:s + chunk], mask[s:s + chunk]
        pad = chunk - len(cid)
        if pad:
            cid = np.concatenate([cid, np.repeat(cid[-1:], pad, 0)])
            cm = np.concatenate([cm, np.repeat(cm[-1:], pad, 0)])
        out = generate(cfg, params, cid, cm, rng=jax.random.fold_in(rng, i),
                       max_new_tokens=max_new_tokens, temperature=temperature, eos_id=eos_id,
                       pad_id=pad_id, processor=processor, processor_params=pparams)
        host = to_host({k: getattr(out, k) for k in outs})  # whole, on every host
        for k in outs:
            outs[k].append(host[k][: chunk - pad])
    return {k: np.concatenate(v) for k, v in outs.items()}


def decode_responses(tok, samples: dict) -> list[str]:
    return tok.decode(samples["tokens"], samples["mask"])


def gold_of_samples(task_gold, tok, prompts: list[str], n: int, samples: dict) -> np.ndarray:
    """Gold reward ``[len(prompts), n]`` of the decoded responses."""
    responses = decode_responses(tok, samples)
    rep_prompts = [p for p in prompts for _ in range(n)]
    return np.asarray(task_gold(rep_prompts, responses), np.float32).reshape(len(prompts), n)


@functools.partial(jax.jit, static_argnames=("cfg", "prompt_len"))
def _sampled_kl(cfg, ref_params, sequences, sequence_mask, mask, tokens, logprobs, temperature,
                prompt_len: int):
    rl, _ = response_logits(cfg, ref_params, sequences, sequence_mask, prompt_len)
    m = mask.astype(jnp.float32)
    return ((logprobs - token_logprobs(rl, tokens, temperature)) * m).sum(-1)


def kl_of_samples(cfg, params, ref_params, samples: dict, temperature: float, prompt_len: int,
                  chunk: int = 128, decoder=None) -> np.ndarray:
    """Per-sample ``Σ_t log π − log π_ref`` (mean over samples = a KL(π‖π_ref) estimate); with a
    ``decoder`` (a policy that is more than its LM) log π is the sampler's own logprob."""
    total = len(samples["tokens"])
    chunk = min(chunk, total)
    out = []
    for s in range(0, total, chunk):
        part = {k: v[s:s + chunk] for k, v in samples.items()}
        pad = chunk - len(part["tokens"])
        if pad:
            part = {k: np.concatenate([v, np.repeat(v[-1:], pad, 0)]) for k, v in part.items()}
        if decoder is not None:
            kl = _sampled_kl(cfg, ref_params, part["sequences"], part["sequence_mask"], part["mask"],
                             part["tokens"], part["logprobs"], np.float32(temperature), prompt_len=prompt_len)
        else:
            kl = sequence_kl(cfg, params, ref_params, part["sequences"], part["sequence_mask"],
                             part["mask"], part["tokens"], np.float32(temperature), prompt_len=prompt_len)
        out.append(to_host(kl)[: chunk - pad])
    return np.concatenate(out)
