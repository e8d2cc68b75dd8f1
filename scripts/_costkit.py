"""Pieces the CPU-cost scripts share: the fastest of a few timed rounds (``fastest``), and one request
through a pool's director as ``gateway-overhead`` sends it (``request_flow``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def fastest_fresh(rounds: int, fresh: Callable[[], Callable[[], T]]) -> tuple[float, T]:
    """``rounds`` rounds, each ``fresh()`` (untimed: what the round needs anew) then the work it returns,
    timed in CPU seconds (``process_time``): the fastest round's seconds and the last round's result."""
    best = float("inf")
    for _ in range(rounds):
        work = fresh()
        t0 = time.process_time()
        out = work()
        best = min(best, time.process_time() - t0)
    return best, out


def fastest(rounds: int, work: Callable[[], T]) -> tuple[float, T]:
    """``fastest_fresh`` with nothing made anew between rounds."""
    return fastest_fresh(rounds, lambda: work)


def request_flow(director: Any, body: dict[str, Any], usage: Any = None) -> Callable[[int], None]:
    """``one(i)``: request ``b{i}`` (``body``'s prompt and ``max_tokens``, 6 prompt tokens) through
    ``director``'s ``pick``, ``on_dispatched``, ``on_first_token`` (``learn=False``, as a non-streamed
    reply) and ``on_finished`` with ``usage`` (``None``: a fresh ``Usage(6, 8)`` each request)."""
    from kvgate.scheduling.types import InferenceRequest, Usage

    prompt, max_tokens = body["prompt"], body["max_tokens"]

    def one(i: int) -> None:
        r = InferenceRequest(f"b{i}", "m", prompt_text=prompt, prompt_tokens=6, max_tokens=max_tokens)
        ep = director.pick(r).endpoints[0]
        director.on_dispatched(r, ep)
        director.on_first_token(r, ep, learn=False)
        director.on_finished(r, ep, Usage(6, 8) if usage is None else usage, True)

    return one
