"""Name -> object registries ("choose by name, not by `if` ladders").

A config string selects a KL estimator, an advantage estimator or a loss::

    est = KL_ESTIMATORS.get('k3')

An unknown name raises ``KeyError`` with a did-you-mean suggestion (difflib) and the known names.
"""
from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A small named registry of functions (or any objects).

    >>> R = Registry('widget')
    >>> @R.register('foo')
    ... def foo(): ...
    >>> R.get('foo') is foo
    True
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, *, override: bool = False) -> Callable[[T], T]:
        """Decorator registering its target under ``name``; returns the target unchanged.

        Registering a name twice raises ``ValueError`` unless ``override=True``.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} name must be a non-empty string, got {name!r}")

        def decorator(obj: T) -> T:
            if name in self._items and not override and self._items[name] is not obj:
                raise ValueError(f"{self.kind} '{name}' is already registered")
            self._items[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        """The object registered under ``name``; ``KeyError`` with a suggestion if unknown."""
        try:
            return self._items[name]
        except (KeyError, TypeError):
            pass
        known = sorted(self._items)
        close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.5)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise KeyError(f"unknown {self.kind} '{name}'{hint} (known: {', '.join(known) or 'none'})")

    __getitem__ = get

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._items)

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._items.items())

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, names={self.names()})"


KL_ESTIMATORS: Registry = Registry("kl estimator")
"""Per-token KL estimators ``(logp, ref_logp) -> [B, T]``: 'k1', 'k2', 'k3' (see ``common``)."""

ADVANTAGE_ESTIMATORS: Registry = Registry("advantage estimator")
"""'gae' (token level, critic) and 'rloo' / 'grpo' / 'dr_grpo' / 'reinforce' / 'remax' (sequence level)."""

LOSSES: Registry = Registry("loss")
"""Array-level losses returning ``(loss, metrics)``."""
