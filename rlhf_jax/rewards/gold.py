"""Gold rewards: the external "human" score that simulated labelers and evaluations use.

A gold reward is a plain host-side function

    gold(prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray float32 [N]

registered by name in :data:`GOLD_REWARDS`. The policy never sees it: it only receives the reward
model trained on comparisons that simulated labelers (``rewards.labelers``) derive from it. It is
the ``g`` of the overoptimisation curves (Gao et al. 2022, "Scaling Laws for Reward Model
Overoptimization"), where the proxy RM score keeps rising while ``g`` turns down.

Registered:

* ``'vader'``      — VADER compound sentiment (Hutto & Gilbert 2014) of the response text only,
                     in [-1, 1]. The prompt is ignored, so a policy cannot gain by its prefix.
* ``'vader_full'`` — VADER compound of ``prompt + " " + response``.

Both return 0.0 for an empty (or whitespace-only) response. Scores are cached per text (VADER is
a pure function of the string), so re-scoring the same responses in evaluations is cheap.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import numpy as np

from rlhf_jax.losses.registry import Registry

GoldFn = Callable[[Sequence[str], Sequence[str]], np.ndarray]

GOLD_REWARDS: Registry[GoldFn] = Registry("gold reward")
register_gold = GOLD_REWARDS.register   # decorator: fn(prompts, responses) -> float32 [N]
get_gold = GOLD_REWARDS.get             # KeyError with a did-you-mean hint for unknown names

_ANALYZER = None


def vader_analyzer():
    """The one shared ``SentimentIntensityAnalyzer`` (created on first use; loading the lexicon
    takes ~0.1 s)."""
    global _ANALYZER
    if _ANALYZER is None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        _ANALYZER = SentimentIntensityAnalyzer()
    return _ANALYZER


@functools.lru_cache(maxsize=1 << 16)
def vader_compound(text: str) -> float:
    """VADER compound score of ``text`` in [-1, 1]; 0.0 for empty / whitespace-only text."""
    if not text.strip():
        return 0.0
    return float(vader_analyzer().polarity_scores(text)["compound"])


def _check(prompts: Sequence[str], responses: Sequence[str]) -> None:
    if isinstance(prompts, str) or isinstance(responses, str):
        raise TypeError("gold rewards take lists of strings, not a single string")
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")


@register_gold("vader")
def vader(prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
    """``g(x, y) = VADER_compound(y)``: the response's sentiment, prompt ignored."""
    _check(prompts, responses)
    return np.asarray([vader_compound(r) for r in responses], dtype=np.float32)


@register_gold("vader_full")
def vader_full(prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
    """``g(x, y) = VADER_compound(x + " " + y)``; 0.0 when ``y`` is empty."""
    _check(prompts, responses)
    return np.asarray(
        [vader_compound(f"{p.strip()} {r.strip()}".strip()) if r.strip() else 0.0
         for p, r in zip(prompts, responses)],
        dtype=np.float32,
    )
