"""The members of a ``weakref.WeakSet`` now, for a /metrics scrape that runs beside other threads.

``list(weakset)`` iterates the set in Python. A weakref callback that removes a collected member runs in
whichever thread's allocation started the collection (a reload's picker check builds pickers on a thread),
and it checks "is the set being iterated?" before it removes: a thread switch between that check and the
removal lets the removal land inside another thread's iteration, which then raises "Set changed size during
iteration" and fails the scrape. Such a copy is retried: each removal happens once, so a retry meets at most
the removals still pending. It imports no ``kvgate`` package: every layer may import it.
"""

from __future__ import annotations

import weakref
from typing import TypeVar

T = TypeVar("T")

_TRIES = 64  # (removals under way at once are few: each retry follows one)


def members(ws: weakref.WeakSet[T]) -> list[T]:
    """``list(ws)``, retried while another thread's weakref callback changes the set mid-copy."""
    for _ in range(_TRIES):
        try:
            return list(ws)
        except RuntimeError:  # "Set changed size during iteration"
            continue
    return list(ws)  # (still failing: the scrape reports it rather than spin)
