"""Review s10-fc L2: ``free_slots`` is asked on every gate check of a held-back request; it looped up
to ``cap`` in overload (finishes slower than the takes). Now in closed form: the same answers as the
loop it replaced (kept here as the reference) except on float boundaries, in a bounded number of steps
whatever ``cap`` (answers up to FREE_SLOTS_LOOP come from the loop itself, at most 65 steps: review
s11-fc L1)."""

from __future__ import annotations

import math
import random
import sys
from types import FrameType
from typing import Any

from kvgate.flowcontrol.controller import free_slots


def loop(take: float, give: float, miss: float, cap: int) -> int:
    """The session 10 loop, verbatim."""
    if not (take > 0):
        return 0
    if not (give > 0) or not math.isfinite(take):
        return cap
    q, f, total, term = give / take, 0, 1.0, 1.0
    while f < cap and total * miss < 1.0:
        f += 1
        term *= q
        total += term
    return f


def lines_run(fn: Any, *args: Any) -> int:
    """Lines executed inside ``fn``'s frame (a count, not a time)."""
    n = 0

    def trace(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal n
        if frame.f_code is fn.__code__:
            if event == "line":
                n += 1
            return trace
        return None

    sys.settrace(trace)
    try:
        fn(*args)
    finally:
        sys.settrace(None)
    return n


def test_overload_costs_a_bounded_number_of_steps() -> None:
    # finishes at half the takes: no F is enough, the answer is cap (the loop ran cap times)
    assert free_slots(10.0, 5.0, 0.05, 100_000) == 100_000
    assert lines_run(free_slots, 10.0, 5.0, 0.05, 100_000) < 40
    # finishes a hair faster than the takes: F about 20, checked by the loop (3 lines a step)
    assert lines_run(free_slots, 10.0, 10.001, 0.05, 100_000) < 300
    # q = 1: an answer of 65 is the closed form's alone, one of FREE_SLOTS_LOOP (64) the loop's
    assert (
        free_slots(1.0, 1.0, 1 / 65.5, 100_000) == 65
        and lines_run(free_slots, 1.0, 1.0, 1 / 65.5, 100_000) < 40
    )
    assert (
        free_slots(1.0, 1.0, 1 / 64.5, 100_000) == 64
        and lines_run(free_slots, 1.0, 1.0, 1 / 64.5, 100_000) < 300
    )


def test_the_same_answers_as_the_loop() -> None:
    rng = random.Random(11)
    special = [0.0, -1.0, math.nan, math.inf, 1e-300, 1e300, 1.0, 2.0, 0.5]
    for _ in range(50_000):
        take = rng.choice([rng.uniform(0, 50), rng.expovariate(0.1), 10.0, rng.choice(special)])
        give = rng.choice(
            [rng.uniform(0, 50), rng.expovariate(0.1), take, take * (1 + 1e-12), take * (1 - 1e-12)]
        )
        miss = rng.choice([0.01, 0.025, 0.05, 0.07, 0.1, rng.uniform(0.001, 1.2), math.nan])
        cap = rng.choice([-3, 0, 1, 5, 24, 128, 512])
        assert free_slots(take, give, miss, cap) == loop(take, give, miss, cap), (take, give, miss, cap)
