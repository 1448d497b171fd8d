"""Built-in tasks registered by name: a corpus generator, prompts, demonstrations and a gold reward.

A :class:`Task` bundles everything the offline RLHF pipeline needs that is not a model:

* ``corpus(n, seed)``            — LM pretraining text (list of str, tokens separated by spaces);
* ``prompts(split, n, seed)``    — RL / evaluation prompts; ``'train'`` and ``'eval'`` are disjoint;
* ``demonstrations(n, seed)``    — (prompt, completion) pairs for SFT;
* ``gold(prompts, responses)``   — the gold "human" score, float32 [N] (``rewards.gold``);
* ``vocabulary()``               — every token the task's text can contain;
* ``continuations(prompts, k, seed)`` — k samples of the data distribution per prompt (an oracle
  sampler, e.g. for best-of-k headroom), when the task has one.

``get_task(name)`` raises ``KeyError`` with a did-you-mean hint for unknown names.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from rlhf_jax.losses.registry import Registry
from rlhf_jax.rewards.gold import get_gold
from rlhf_jax.tasks import sentiment


@dataclasses.dataclass(frozen=True)
class Task:
    """A built-in offline task (see the module docstring for the contract of each method)."""

    name: str
    gold_name: str
    corpus_fn: Callable[[int, int], list[str]]
    prompts_fn: Callable[..., list[str]]
    demonstrations_fn: Callable[[int, int], list[tuple[str, str]]]
    vocabulary_fn: Callable[[], Sequence[str]]
    continuations_fn: Callable[[Sequence[str], int, int], list[list[str]]] | None = None
    description: str = ""

    def corpus(self, n: int, seed: int = 0) -> list[str]:
        return self.corpus_fn(n, seed)

    def prompts(self, split: str = "train", n: int | None = None, seed: int = 0) -> list[str]:
        return self.prompts_fn(split, n=n, seed=seed)

    def demonstrations(self, n: int, seed: int = 0) -> list[tuple[str, str]]:
        return self.demonstrations_fn(n, seed)

    def vocabulary(self) -> list[str]:
        return list(self.vocabulary_fn())

    def continuations(self, prompts: Sequence[str], k: int, seed: int = 0) -> list[list[str]]:
        """``k`` oracle samples per prompt. An optional capability: a task built on a fixed dataset
        has no generator of its data distribution, and then says so with ``NotImplementedError``
        (Python's signal for an optional method an object does not provide)."""
        if self.continuations_fn is None:
            raise NotImplementedError(f"task {self.name!r} has no oracle continuation sampler")
        return self.continuations_fn(prompts, k, seed)

    def gold(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """Gold reward of each response, float32 [N]."""
        return get_gold(self.gold_name)(prompts, responses)


TASKS: Registry[Task] = Registry("task")
get_task = TASKS.get  # KeyError with a did-you-mean hint for unknown names


def register_task(task: Task) -> Task:
    """Add ``task`` to :data:`TASKS` under ``task.name`` (a second, different task of that name is
    an error)."""
    return TASKS.register(task.name)(task)


SENTIMENT_REVIEWS = register_task(Task(
    name="sentiment_reviews",
    gold_name="vader",
    corpus_fn=sentiment.generate_corpus,
    prompts_fn=sentiment.prompts,
    demonstrations_fn=sentiment.demonstrations,
    vocabulary_fn=sentiment.vocabulary,
    continuations_fn=sentiment.continuations,
    description="Short grammar-generated reviews; gold = VADER compound of the response.",
))
