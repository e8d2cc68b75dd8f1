"""closing-s16 "Noticed and left undone" (Hub): the aggregate fetcher's own host-name lookups ran in the
loop's *default executor* (aiohttp's ``ThreadedResolver``: ``loop.getaddrinfo``), as the hub probe's did
before session 16 (review s16-hard M1). A name server that does not answer keeps a worker per host name
for the resolver's whole time-out (tens of seconds; aiohttp shares one lookup of a name while it runs):
a few clusters named by host filled the pool, and every other user of it waited behind them: another
cluster's aggregate, named by a host name that resolves at once, was not fetched (its snapshot aged into
"unknown"), and ``run_in_executor``/``to_thread`` work of the process stalled.

Now the fetcher's lookups take the probe's bounded daemon threads (``hub._lookup``, ``hub.MAX_LOOKUPS`` at
once; kvhub17; the threads in all bounded by ``hub.MAX_LOOKUP_THREADS`` since k8s18). The hung resolver is
simulated by replacing ``socket.getaddrinfo`` for one domain (it blocks until the test releases it);
``localhost`` resolves for real, the HTTP is real, on loopback. Both tests fail before (kvhub17): the good
cluster's fetch timed out and the executor was full; more lookups than MAX_LOOKUPS ran at once.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from gateway.handler_server import serve_app
from kvgate.multicluster import hub
from kvgate.multicluster.clusters import ClusterSpec
from kvgate.multicluster.fetcher import Fetcher
from kvgate.multicluster.state import ClusterState
from multicluster.conftest import aggregate_app
from multicluster.hung_resolver import HungResolver

HUNG = "hung.kvgate-review.test"
WORKERS = 8  # the loop's default executor here (2 cores: 6 by asyncio's default)


@pytest.fixture
def hung(monkeypatch: pytest.MonkeyPatch) -> Any:
    """(release event, [in getaddrinfo now, most at once])"""
    fake = HungResolver(HUNG)
    monkeypatch.setattr(socket, "getaddrinfo", fake)
    yield fake.release, fake.running
    fake.release.set()


@pytest.fixture
async def small_executor() -> AsyncIterator[ThreadPoolExecutor]:
    ex = ThreadPoolExecutor(WORKERS)
    asyncio.get_running_loop().set_default_executor(ex)
    try:
        yield ex
    finally:
        ex.shutdown(wait=False, cancel_futures=True)


async def _settled(running: list[int]) -> None:
    for _ in range(3000):  # (the released lookups leave getaddrinfo; 30 s, bounded, not a timing assertion)
        if running[0] == 0 and hub._LOOKUPS.running == 0:
            return
        await asyncio.sleep(0.01)


def _states(port: int, hung_names: int) -> list[ClusterState]:
    def url(host: str) -> str:
        return f"http://{host}:{port}/aggregate"

    dead = [ClusterState(ClusterSpec(f"d{i}", aggregate=url(f"n{i}.{HUNG}"), gateway="h:1"))
            for i in range(hung_names)]  # fmt: skip
    good = ClusterState(ClusterSpec("good", aggregate=url("localhost"), gateway="h:1"))
    return [*dead, good]


async def test_hung_lookups_do_not_starve_another_clusters_fetch_nor_the_executor(
    aggregate_port: int, hung: Any, small_executor: ThreadPoolExecutor
) -> None:
    release, running = hung
    states = _states(aggregate_port, WORKERS + 2)  # (more hung names than the executor has workers)
    fetcher = Fetcher(lambda: states, interval_s=3600, timeout_s=0.5)
    try:
        await fetcher.start()
        for _ in range(3):
            await fetcher.refresh()
        good = states[-1]
        assert good.aggregate is not None and good.fetch_error is None, (
            f"the cluster named localhost was not fetched: {good.fetch_error}"
        )
        assert all(st.aggregate is None and st.fetch_error for st in states[:-1])
        loop = asyncio.get_running_loop()
        try:  # (30 s: a bound for a loaded machine, 5 s before; on main the workers hang for 60 s)
            assert await asyncio.wait_for(loop.run_in_executor(None, int, "7"), 30) == 7
        except TimeoutError:
            pytest.fail("the loop's default executor is full of the fetcher's given-up lookups")
    finally:
        await fetcher.stop()
        release.set()
        await _settled(running)


async def test_the_fetchers_lookups_are_the_probes_bounded_threads(
    aggregate_port: int, hung: Any, small_executor: ThreadPoolExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    release, running = hung
    monkeypatch.setattr(hub, "MAX_LOOKUP_THREADS", 3)  # (MAX_LOOKUPS until k8s18: the threads in all)
    states = _states(aggregate_port, 6)[:-1]
    fetcher = Fetcher(lambda: states, interval_s=3600, timeout_s=0.2)
    try:
        await fetcher.start()
        for _ in range(3):
            await fetcher.refresh()
        for _ in range(50):  # (a thread may start late on a loaded host)
            await asyncio.sleep(0.01)
        assert running[1] <= 3, f"{running[1]} lookups at once: not bounded by MAX_LOOKUP_THREADS (3)"
        assert all(st.fetch_error for st in states)  # (refused lookups fail their fetch: an error, no crash)
        assert fetcher._task is not None and not fetcher._task.done()
    finally:
        await fetcher.stop()
        release.set()
        await _settled(running)
    assert running[0] == 0 and hub._LOOKUPS.running == 0 and not hub._LOOKUPS.inflight


async def test_the_fetcher_keeps_no_second_cache_of_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Review s17-fixes-a L2: the fetcher's connector had aiohttp's own host cache (10 s from when it got
    the answer) on top of the lookups' keep (LOOKUP_TTL_S from the lookup): an answer up to ~20 s old. Now
    only the lookups keep answers: once they dropped it, the next fetch looks the name up again."""
    # (a new connection each fetch: a kept-alive one would look nothing up)
    runner, port = await serve_app(aggregate_app(force_close=True))
    real = socket.getaddrinfo
    asked: list[str] = []

    def fake(host: Any, *a: Any, **k: Any) -> Any:
        if host == "moved.kvgate-review.test":
            asked.append(host)
            host = "127.0.0.1"
        return real(host, *a, **k)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    states = [ClusterState(ClusterSpec("c", aggregate=f"http://moved.kvgate-review.test:{port}/aggregate",
                                       gateway="h:1"))]  # fmt: skip
    fetcher = Fetcher(lambda: states, interval_s=3600, timeout_s=5)
    try:
        hub._LOOKUPS.forget()
        await fetcher.start()
        assert states[0].aggregate is not None, states[0].fetch_error
        hub._LOOKUPS.forget()  # (the kept answer's LOOKUP_TTL_S is over)
        await fetcher.refresh()
        assert states[0].fetch_error is None, states[0].fetch_error
        assert len(asked) == 2, f"{len(asked)} lookups for 2 fetches: an answer kept past the lookups' keep"
    finally:
        await fetcher.stop()
        await runner.cleanup()
        hub._LOOKUPS.forget()
