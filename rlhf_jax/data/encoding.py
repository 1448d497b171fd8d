"""The array layout every stage shares: left-padded prompt, then right-padded response.

For prompt budget P and response budget R, a sequence is ``P + R`` tokens::

    input_ids       [pad pad p1 p2 p3 | r1 r2 EOS pad pad]
    attention_mask  [ 0   0  1  1  1  |  1  1  1   0   0 ]
    response_mask   [ 0   0  0  0  0  |  1  1  1   0   0 ]

This is exactly what the sampler produces (a left-padded prompt of width P, then the new tokens
written from column P on), so the reward model, the reference model and the losses read dataset
pairs and generated samples the same way: the reward is read at the last position with
``attention_mask == 1`` and response tokens are those with ``response_mask == 1``. Positions must
be derived from ``attention_mask`` (``cumsum - 1``), never from column indices.

Pad positions hold ``tok.pad_id`` (the EOS id for tokenizers without a pad token); nothing may
find padding by comparing ids with it — use the masks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from rlhf_jax.data.tokenizer import Tokenizer, pad_rows, truncate_tokens

__all__ = ["encode_prompt_response", "encode_prompts", "encode_preferences", "batch_indices"]


def _prompt_rows(tok: Tokenizer, prompts: Sequence[str], max_prompt_len: int, add_bos: bool):
    prefix = [tok.bos_id] if add_bos and tok.bos_id is not None else []
    budget = max_prompt_len - len(prefix)
    if budget < 0:
        raise ValueError(f"max_prompt_len={max_prompt_len} leaves no room for BOS")
    return [prefix + truncate_tokens(t, budget, "left") for t in tok.tokenize(list(prompts))]


def _layout(
    tok: Tokenizer, prompt_rows: list, responses: Sequence[str], max_response_len: int,
    max_prompt_len: int, add_eos: bool,
) -> dict[str, Any]:
    if len(prompt_rows) != len(responses):
        raise ValueError(f"{len(prompt_rows)} prompts but {len(responses)} responses")
    suffix = [tok.eos_id] if add_eos else []
    # EOS is appended *before* truncation: a response too long for R loses its EOS, just like a
    # generation that ran out of max_new_tokens (which the reward stage can then penalise).
    resp_rows = [(t + suffix)[:max_response_len] for t in tok.tokenize(list(responses))]
    p_ids, p_mask = pad_rows(prompt_rows, max_prompt_len, tok.pad_id, "left")
    r_ids, r_mask = pad_rows(resp_rows, max_response_len, tok.pad_id, "right")
    return {
        "input_ids": np.concatenate([p_ids, r_ids], axis=1),
        "attention_mask": np.concatenate([p_mask, r_mask], axis=1),
        "response_mask": np.concatenate([np.zeros_like(p_mask), r_mask], axis=1),
        "prompt_len": int(max_prompt_len),
    }


def encode_prompts(
    tok: Tokenizer, prompts: Sequence[str], max_prompt_len: int, *, add_bos: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Prompts as ``(ids, mask)`` int32 ``[B, max_prompt_len]``, left-padded; a long prompt keeps
    its *last* tokens (the end of the prompt is what the response continues). ``add_bos``
    prepends BOS (kept through truncation; a no-op if the tokenizer has none)."""
    rows = _prompt_rows(tok, prompts, max_prompt_len, add_bos)
    return pad_rows(rows, max_prompt_len, tok.pad_id, "left")


def encode_prompt_response(
    tok: Tokenizer,
    prompts: Sequence[str],
    responses: Sequence[str],
    max_prompt_len: int,
    max_response_len: int,
    *,
    add_eos: bool = True,
    add_bos: bool = False,
) -> dict[str, Any]:
    """Encode (prompt, response) pairs in the shared layout (module docstring).

    Returns numpy int32 ``input_ids``, ``attention_mask``, ``response_mask`` of shape
    ``[B, P + R]`` and ``prompt_len`` = P as a Python int (a static shape, not an array: pop it
    before passing the dict to a jitted function, or slice with it outside).

    Prompts are left-padded and truncated from the left (as :func:`encode_prompts`). Responses get
    EOS appended (``add_eos``), are then cut to their first R tokens and right-padded: a response
    of at most R − 1 tokens ends with EOS; a longer one is truncated and has **no** EOS.
    """
    rows = _prompt_rows(tok, prompts, max_prompt_len, add_bos)
    return _layout(tok, rows, responses, max_response_len, max_prompt_len, add_eos)


def encode_preferences(
    tok: Tokenizer,
    dataset: Any,
    max_prompt_len: int,
    max_response_len: int,
    *,
    add_eos: bool = True,
    add_bos: bool = False,
) -> dict[str, Any]:
    """Encode a preference dataset (``datasets.Dataset`` or a dict of lists with ``prompt``,
    ``chosen``, ``rejected``) to ``chosen_{input_ids,attention_mask,response_mask}``,
    ``rejected_{...}`` (int32 ``[N, P + R]``, same layout as :func:`encode_prompt_response`,
    same prompt block in both) and ``prompt_len``."""
    prompts = list(dataset["prompt"])
    rows = _prompt_rows(tok, prompts, max_prompt_len, add_bos)
    out: dict[str, Any] = {"prompt_len": int(max_prompt_len)}
    for side in ("chosen", "rejected"):
        enc = _layout(tok, rows, list(dataset[side]), max_response_len, max_prompt_len, add_eos)
        for key in ("input_ids", "attention_mask", "response_mask"):
            out[f"{side}_{key}"] = enc[key]
    return out


def batch_indices(n: int, batch_size: int, seed: int, epoch: int) -> np.ndarray:
    """Example indices of every batch of one epoch: int64 ``[n // batch_size, batch_size]``.

    A permutation of ``range(n)`` drawn from ``np.random.default_rng([seed, epoch])``, cut into
    batches, the last incomplete batch dropped. It depends only on (n, batch_size, seed, epoch),
    so a resumed run recomputes exactly which examples batch k of epoch e holds.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if n < 0 or seed < 0 or epoch < 0:
        raise ValueError(f"n, seed and epoch must be >= 0, got n={n}, seed={seed}, epoch={epoch}")
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    n_batches = n // batch_size
    return perm[: n_batches * batch_size].reshape(n_batches, batch_size).astype(np.int64)
