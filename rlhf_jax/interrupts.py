"""SIGINT / SIGTERM: stop at once, never inside a write, never lost.

:func:`install` (the CLI calls it) makes both signals raise in the main thread wherever it is:
``KeyboardInterrupt`` for SIGINT, its subclass :class:`Terminated` for SIGTERM. Two things can go
wrong with a bare ``KeyboardInterrupt``, both seen on this project's runs:

- raised inside a checkpoint save, it leaves Orbax's asyncio machinery half-run, so
  :func:`deferred_interrupts` holds the signals for such a short critical section and delivers
  them right after it;
- raised while JAX traces a function through its C++ dispatch, or inside a garbage-collection
  callback, it can be swallowed (the run went on training), so the signal is also recorded and
  every training loop calls :func:`check` once a step, which raises it again.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading

__all__ = ["Terminated", "install", "check", "deferred_interrupts"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_received: list[int] = []


class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM, so a terminated run unwinds like an interrupted one."""


def _raise_for(signum: int):
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _handler(signum, frame):
    _received.append(signum)
    _raise_for(signum)


def install() -> None:
    """Route SIGINT and SIGTERM through this module (main thread only).

    An interrupt raised where Python cannot propagate it (a garbage-collection callback such as
    jaxlib's, a ``__del__``) is "unraisable": Python would print it with a traceback and drop it.
    Those are silenced here, since :func:`check` raises them again at the next step.
    """
    _received.clear()
    for s in _SIGNALS:
        signal.signal(s, _handler)
    if getattr(sys.unraisablehook, "__name__", "") != "_unraisable":
        previous = sys.unraisablehook

        def _unraisable(unraisable):
            if not isinstance(unraisable.exc_value, KeyboardInterrupt):
                previous(unraisable)

        sys.unraisablehook = _unraisable


def check() -> None:
    """Raise the interrupt a signal asked for, if an earlier raise of it was swallowed."""
    if _received:
        _raise_for(_received[0])


@contextlib.contextmanager
def deferred_interrupts():
    """Run the block with SIGINT/SIGTERM held; a signal that arrived is delivered afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[tuple[int, object]] = []
    previous = {s: signal.getsignal(s) for s in _SIGNALS}

    def hold(signum, frame):
        pending.append((signum, frame))

    for s in _SIGNALS:
        signal.signal(s, hold)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        if pending:
            signum, frame = pending[0]
            handler = previous[signum]
            if callable(handler):
                handler(signum, frame)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(signum)
