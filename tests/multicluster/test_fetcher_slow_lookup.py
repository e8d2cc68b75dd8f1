"""Review s17-kvhub M1 (1848348, ``ProbeLookups`` on ``hub._lookup``): a host-name lookup that answers, but
slower than the fetcher's ``timeout_s`` (a dead first name server with a live second one: glibc asks the
first one for ``timeout:`` seconds, 5 by default, on every lookup), was given up and its answer thrown
away; the rounds that started while it ran were refused (EAGAIN), and the next round's new lookup was
given up again: the cluster's aggregate was never fetched (it aged into "unknown" for good). Before
1848348, aiohttp's resolver task ran on (shielded) past the fetch's timeout and cached the answer
(``ttl_dns_cache``, 10 s). Also, the fetcher's given-up lookup of a name made the hub probe of it
inconclusive, and the probe's refused the fetcher's rounds.

Now (``hub._Lookups``) a lookup's answer is kept ``LOOKUP_TTL_S`` when it ends, also when nobody waits any
more; a lookup of a name being looked up joins the running one (the probe's and the fetcher's alike); a
probe's vain wait counts as a failure unless another probe's vain wait on the same lookup already did.

The slow name server is a replaced ``socket.getaddrinfo`` for one name (it answers 127.0.0.1, after a
delay or when the test lets it); the HTTP and the connects are real, on loopback. Every test fails on
the code before this fix (the first is the reviewer's, s17-kvhub-tests/test_s17_kvhub_slow_lookup.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from kvgate.multicluster import hub
from kvgate.multicluster.clusters import ClusterSpec
from kvgate.multicluster.fetcher import Fetcher
from kvgate.multicluster.hub import connects
from kvgate.multicluster.state import ClusterState

SLOW = "slow.kvgate-review.test"
LOOKUP_S = 0.5  # every lookup of SLOW answers (127.0.0.1), after this long
TIMEOUT_S = 0.3  # the fetcher's timeout: shorter than one lookup


@pytest.fixture
def slow_name(monkeypatch: pytest.MonkeyPatch) -> None:
    real = socket.getaddrinfo

    def fake(host: Any, *a: Any, **k: Any) -> Any:
        if str(host) != SLOW:
            return real(host, *a, **k)
        time.sleep(LOOKUP_S)  # (a name server that answers, slowly)
        return real("127.0.0.1", *a, **k)

    monkeypatch.setattr(socket, "getaddrinfo", fake)


class Gate:
    """SLOW's lookups wait until ``go`` is set, then answer 127.0.0.1; ``calls``: lookups of SLOW."""

    def __init__(self) -> None:
        self.go = threading.Event()
        self.calls = 0


@pytest.fixture
def gated(monkeypatch: pytest.MonkeyPatch) -> Iterator[Gate]:
    real = socket.getaddrinfo
    gate = Gate()

    def fake(host: Any, *a: Any, **k: Any) -> Any:
        if str(host) != SLOW:
            return real(host, *a, **k)
        gate.calls += 1
        gate.go.wait(30)
        return real("127.0.0.1", *a, **k)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    yield gate
    gate.go.set()
    for _ in range(3000):  # (the released lookup out of getaddrinfo; 30 s, a bound, not a timing assertion)
        if hub._LOOKUPS.running == 0:
            break
        time.sleep(0.01)


async def _until(cond: Any, what: str) -> None:
    for _ in range(3000):  # (30 s on a loaded machine, 5 s before; not a timing assertion)
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never: {what}")


def _nobody_waits() -> bool:
    """No wait on SLOW's running lookup is left (aiohttp resolves in a task of its own, which may outlive
    the fetch's timeout by a turn). (``inflight``: this fix's; the code before had none to wait for.)"""
    lk = getattr(hub._LOOKUPS, "inflight", {}).get(SLOW)
    return lk is None or not lk.waiters


async def _still_waiting(task: asyncio.Task[Any]) -> bool:
    """Whether ``task`` still waits 0.2 s on (a refusal ends it at once; a slow start only passes)."""
    await asyncio.sleep(0.2)
    return not task.done()


def _state(port: int) -> ClusterState:
    return ClusterState(ClusterSpec("slow", aggregate=f"http://{SLOW}:{port}/aggregate", gateway="h:1"))


async def test_a_lookup_slower_than_the_fetch_timeout_still_lets_later_rounds_fetch(
    aggregate_port: int, slow_name: None
) -> None:
    st = _state(aggregate_port)
    fetcher = Fetcher(lambda: [st], interval_s=3600, timeout_s=TIMEOUT_S)
    try:
        await fetcher.start()  # (round 1: the lookup outlives the fetch's timeout)
        fetched = 0
        for _ in range(8):
            await asyncio.sleep(0.4)
            st.fetch_error = None
            await fetcher.refresh()
            fetched += st.fetch_error is None and st.aggregate is not None
        assert fetched >= 4, (
            f"{fetched} of 8 rounds fetched the cluster whose name answers in {LOOKUP_S} s "
            f"(fetch timeout {TIMEOUT_S} s); last error: {st.fetch_error}"
        )
    finally:
        await fetcher.stop()
        await asyncio.sleep(LOOKUP_S + 0.2)  # (the last lookup thread out)


async def test_a_round_joins_the_lookup_a_given_up_round_left_running(
    aggregate_port: int, gated: Gate
) -> None:
    """Round 1 gives its lookup up; round 2, while that lookup still runs, waits on it (before: refused at
    once, EAGAIN) and fetches when it answers: one lookup of the name in all."""
    st = _state(aggregate_port)
    fetcher = Fetcher(lambda: [st], interval_s=3600, timeout_s=TIMEOUT_S)
    try:
        await fetcher.start()
        assert st.aggregate is None and st.fetch_error
        await _until(_nobody_waits, "round 1's wait given up, its lookup running")
        fetcher.timeout_s = 30.0  # (round 2 has the time: what it waits for is the running lookup)
        round_2 = asyncio.create_task(fetcher.refresh())
        assert await _still_waiting(round_2), f"round 2 did not wait on the running lookup: {st.fetch_error}"
        gated.go.set()
        await round_2
        assert st.aggregate is not None and st.fetch_error is None, st.fetch_error
        assert gated.calls == 1
    finally:
        await fetcher.stop()


@contextlib.asynccontextmanager
async def _fetch_given_up(aggregate_port: int) -> AsyncIterator[tuple[ClusterState, Fetcher]]:
    """A fetcher's first round over the gateway named ``SLOW`` (its lookup gated): failed, its wait given
    up while the lookup runs on; the cluster's state and the fetcher, stopped at the end."""
    st = _state(aggregate_port)
    fetcher = Fetcher(lambda: [st], interval_s=3600, timeout_s=TIMEOUT_S)
    try:
        await fetcher.start()
        assert st.fetch_error
        await _until(_nobody_waits, "the fetch's wait given up, its lookup running")
        yield st, fetcher
    finally:
        await fetcher.stop()


async def test_the_probe_joins_the_fetchers_given_up_lookup_and_tells(
    aggregate_port: int, gated: Gate, listening: int
) -> None:
    """The fetcher's given-up lookup of the gateway's name does not leave the probe of it inconclusive
    (before: None while that lookup ran): the probe waits on it and connects."""
    async with _fetch_given_up(aggregate_port) as (st, fetcher):
        probe = asyncio.create_task(connects(f"{SLOW}:{listening}", 30.0))
        assert await _still_waiting(probe), f"the probe did not wait on the running lookup: {probe.result()}"
        gated.go.set()
        assert await probe is True
        assert gated.calls == 1
        await fetcher.refresh()  # (and the fetcher's next round has the answer: kept)
        assert st.aggregate is not None and st.fetch_error is None, st.fetch_error
        assert gated.calls == 1


async def test_the_fetchers_given_up_lookup_leaves_the_probe_its_verdict(
    aggregate_port: int, gated: Gate
) -> None:
    """A lookup that hangs, given up by the fetcher: the first probe's vain wait on it is a failure (False;
    before: None, refused); a second probe's on the same lookup counts nothing (None: that one slow
    answer is counted once, review s16-fixes-b H1)."""
    async with _fetch_given_up(aggregate_port):
        assert await connects(f"{SLOW}:80", 0.1) is False
        assert await connects(f"{SLOW}:80", 0.1) is None
        assert gated.calls == 1


async def test_the_probe_and_the_fetcher_share_one_running_lookup(
    aggregate_port: int, gated: Gate, listening: int
) -> None:
    """A fetch while the probe's lookup of the name runs waits on it (before: a second lookup)."""
    st = _state(aggregate_port)
    fetcher = Fetcher(lambda: [st], interval_s=3600, timeout_s=30.0)
    probe = asyncio.create_task(connects(f"{SLOW}:{listening}", 30.0))
    try:
        await _until(lambda: gated.calls == 1, "the probe's lookup running")
        fetch = asyncio.create_task(fetcher.start())
        await asyncio.sleep(0.2)  # (the fetch waiting on a lookup: the probe's, or before the fix its own)
        gated.go.set()
        await fetch
        assert await probe is True
        assert st.aggregate is not None and st.fetch_error is None, st.fetch_error
        assert gated.calls == 1
    finally:
        gated.go.set()
        await fetcher.stop()


async def test_an_answer_is_kept_for_its_ttl(
    monkeypatch: pytest.MonkeyPatch, gated: Gate, listening: int
) -> None:
    """On the injected clock: within ``LOOKUP_TTL_S`` of its answer a name is not looked up again; past it,
    it is."""
    clock = [1000.0]
    monkeypatch.setattr(hub._LOOKUPS, "clock", lambda: clock[0], raising=False)  # (none before the fix)
    gated.go.set()
    assert await connects(f"{SLOW}:{listening}", 5.0) is True
    clock[0] += 9.9
    assert await connects(f"{SLOW}:{listening}", 5.0) is True
    assert gated.calls == 1
    clock[0] += hub.LOOKUP_TTL_S - 9.9
    assert await connects(f"{SLOW}:{listening}", 5.0) is True
    assert gated.calls == 2
