"""``openai.askrounds``: the ask round both front doors share (loc27), driven with asks of the test's own
(no network): the classification each door parameterises, the miss memory's time and size bounds (time
injected), a round shared per (id, credentials, candidates) and cancelled with its last waiter, its asks
``fanout`` at a time (review s27-rev-loc27 F4: before, no test failed with the round's gate removed)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from types import SimpleNamespace

import pytest

from kvgate.gateway.locate import Locator
from kvgate.multicluster.lookups import ClusterLocator
from kvgate.openai.askrounds import (
    CLUSTER_UNSURE,
    FAILED,
    HERE,
    NOT_HERE,
    REFUSED,
    UNSURE,
    UNSURE_,
    AskRounds,
    classify,
)


async def _until(what: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 30.0
    while not what():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)


def _rounds(now: list[float], **kw: object) -> AskRounds:
    args: dict[str, object] = {"bound_s": 30.0, "fanout": 16, "asks_max": 64, "miss_ttl_s": 2.0,
                               "misses_max": 3, **kw}  # fmt: skip
    return AskRounds(lambda: now[0], logging.getLogger("test"), noun="endpoints", **args)  # type: ignore[arg-type]


def test_each_door_classifies_its_answers() -> None:
    assert [classify(s) for s in (200, 404, 400, 401, 403, 407, 500, 502, 503, 504)] == [
        HERE, NOT_HERE, NOT_HERE, REFUSED, REFUSED, REFUSED, FAILED, FAILED, FAILED, FAILED,
    ]  # fmt: skip
    assert [classify(s) for s in (None, 408, 425, 429)] == [UNSURE_] * 4
    # A cluster's gateway is a door: its 502/503/504 are its own "could not ask" (it may hold the id).
    assert [classify(s, CLUSTER_UNSURE) for s in (500, 501, 502, 503, 504, 429)] == [
        FAILED, FAILED, UNSURE_, UNSURE_, UNSURE_, UNSURE_,
    ]  # fmt: skip
    assert UNSURE < CLUSTER_UNSURE


async def test_a_miss_is_kept_its_ttl_per_candidates_and_at_most_misses_max() -> None:
    now = [100.0]
    rounds = _rounds(now)
    asked: list[str] = []

    async def nowhere(name: str, due: float) -> int | None:
        asked.append(name)
        return 404

    got = await rounds.locate("resp_a", "", ["x", "y"], nowhere)
    assert got.home is None and got.asked == 2 and not got.unanswered
    assert (await rounds.locate("resp_a", "", ["y", "x"], nowhere)).asked == 0  # (kept: not asked)
    assert (await rounds.locate("resp_a", "", ["x"], nowhere)).asked == 1  # (other candidates: asked)
    now[0] += 2.0
    assert (await rounds.locate("resp_a", "", ["x", "y"], nowhere)).asked == 2  # (its TTL passed)
    for rid in ("resp_b", "resp_c", "resp_d"):
        await rounds.locate(rid, "", ["x"], nowhere)
    assert len(rounds._misses) == 3  # (misses_max: the oldest dropped)
    assert rounds.rounds == 6


async def test_refused_failed_and_silent_answers_are_never_kept() -> None:
    now = [0.0]
    rounds = _rounds(now, bound_s=0.5)
    stop = asyncio.Event()

    async def answer(status: int | None) -> int | None:
        if status is None:
            await stop.wait()  # (no answer within the bound)
        return status

    for statuses, unanswered in (((404, 401), 0), ((404, 500), 0), ((404, None), 1), ((404, 429), 1)):

        async def ask(name: str, due: float, s: tuple[int | None, ...] = statuses) -> int | None:
            return await answer(s[int(name)])

        got = await rounds.locate("resp_a", "", ["0", "1"], ask)
        assert got.home is None and got.unanswered == unanswered, (statuses, got)
        assert not rounds._misses, statuses
    stop.set()


async def test_a_round_is_shared_by_the_same_credentials_and_ends_with_its_last_waiter() -> None:
    rounds = _rounds([0.0])
    started: list[str] = []
    cancelled: list[str] = []

    async def hang(name: str, due: float) -> int | None:
        started.append(name)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(name)
            raise
        return None

    waiters = [asyncio.ensure_future(rounds.locate("resp_a", key, ["x"], hang)) for key in ("k", "k", "j")]
    await _until(lambda: len(started) == 2)
    assert rounds.rounds == 2 and len(rounds._rounds) == 2  # (one per credentials)
    waiters[0].cancel()  # one of two waiters leaves: the round goes on
    await asyncio.sleep(0.05)
    assert not cancelled
    waiters[1].cancel()  # the last one: its round ends, its ask with it
    waiters[2].cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    await _until(lambda: len(cancelled) == 2)
    assert not rounds._rounds
    # A waiter's own bound ends its wait (TimeoutError) and, as the last, the round.
    loop = asyncio.get_running_loop()
    with pytest.raises(TimeoutError):
        await rounds.locate("resp_b", "k", ["x"], hang, due=loop.time() + 0.05)
    await _until(lambda: len(cancelled) == 3)
    assert not rounds._rounds


async def test_a_round_has_at_most_fanout_asks_out_and_sends_the_next_as_one_ends() -> None:
    # (review s27-rev-loc27 F4: with the round's gate removed, ``Semaphore(10**6)``, all 5 went at once)
    rounds = _rounds([0.0], fanout=2, bound_s=300.0)
    out: dict[str, asyncio.Event] = {}
    asked: list[str] = []
    peak = 0

    async def ask(name: str, due: float) -> int | None:
        nonlocal peak
        out[name] = asyncio.Event()
        asked.append(name)
        peak = max(peak, len(out))
        try:
            await out[name].wait()
            return 404
        finally:
            del out[name]

    waiter = asyncio.ensure_future(rounds.locate("resp_x", "", [str(i) for i in range(5)], ask))
    for n in range(2, 6):
        await _until(lambda n=n: len(asked) >= n)
        await asyncio.sleep(0.1)  # (a round without the gate has sent all 5 by now)
        assert (len(asked), len(out)) == (n, 2), asked
        out[asked[n - 2]].set()  # one ends: the next goes
    out[asked[4]].set()
    got = await waiter
    assert (got.home, got.asked, got.unanswered, peak) == (None, 5, 0, 2)


def test_each_door_asks_16_at_a_time_and_64_across_rounds() -> None:
    # (the CHANGELOG's and the docs' "16 ... at a time, 64 asks at once across all rounds", both doors)
    hub = ClusterLocator(SimpleNamespace(router=SimpleNamespace(clock=time.monotonic)))  # type: ignore[arg-type]
    serve = Locator(None, time.monotonic)  # type: ignore[arg-type]
    assert [(door.fanout, door._asks._value) for door in (hub, serve)] == [(16, 64), (16, 64)]
