"""closing-s17 "Noticed and left undone" (KV / hub): more than ``MAX_LOOKUPS`` (32) hung names blocked the
hub probe's and the aggregate fetcher's lookups of every other name not answered within the last 10 s
(``LOOKUP_TTL_S``): each hung name's lookup thread counted toward the bound for as long as it hung (a name
server that does not answer: tens of seconds; an NSS module that hangs: for good), so a listening gateway
named by host was not probed (inconclusive) and its aggregate not fetched. Now a lookup that every wait on
has given up runs on for its answer but no longer counts toward MAX_LOOKUPS, which bounds the lookups
waited on at once; the threads in all are bounded by ``MAX_LOOKUP_THREADS`` (one per name at most).

The hung name server is ``HungResolver`` (``socket.getaddrinfo`` replaced for one domain); ``localhost``
resolves for real, the connects and HTTP are real, on loopback. Bounds made small here (3, 4).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest

from kvgate.multicluster import hub
from kvgate.multicluster.clusters import ClusterSpec
from kvgate.multicluster.fetcher import Fetcher
from kvgate.multicluster.hub import connects
from kvgate.multicluster.state import ClusterState
from multicluster.hung_resolver import HungResolver

HUNG = "hung.kvgate-k8s18.test"


@pytest.fixture
async def hung(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[HungResolver]:
    fake = HungResolver(HUNG)
    await asyncio.sleep(0.1)  # (the lookups of the tests before, released: out of getaddrinfo)
    monkeypatch.setattr(socket, "getaddrinfo", fake)
    monkeypatch.setattr(hub, "MAX_LOOKUPS", 3)
    yield fake
    fake.release.set()
    for _ in range(3000):  # (bounded, 30 s: the released lookups leave getaddrinfo)
        if fake.running[0] == 0 and hub._LOOKUPS.running == 0:
            break
        await asyncio.sleep(0.01)


async def _running(fake: HungResolver, n: int) -> int:
    """The hung lookups in getaddrinfo once ``n`` are (within 30 s: a thread may start late), 0.1 s later."""
    for _ in range(3000):
        if fake.running[0] >= n:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)
    return fake.running[0]


async def test_more_hung_names_than_max_lookups_do_not_block_another_names_probe(
    hung: HungResolver, listening: int
) -> None:
    """Five names hang (more than MAX_LOOKUPS, 3), each probe given up after 10 ms; a listening gateway
    named ``localhost`` is then probed: looked up and connected (True). Fails before: its lookup was
    refused (the 3 hung threads held the bound): None, no verdict, for as long as they hung."""
    for i in range(5):
        assert await connects(f"n{i}.{HUNG}:80", 0.01) is False
    assert await _running(hung, 5) == 5  # (one thread per hung name: none refused)
    assert await connects(f"localhost:{listening}", 0.5) is True


async def test_more_hung_names_than_max_lookups_do_not_block_another_clusters_fetch(
    hung: HungResolver, aggregate_port: int
) -> None:
    """The aggregate fetcher alike: five clusters named in the hung domain, one named ``localhost``. The
    first round starts three hung lookups (MAX_LOOKUPS, not yet given up: the others wait that round);
    from the second round on every round fetches the good one. Fails before: its lookup was refused
    (EAGAIN) in every round, the three hung threads holding the bound."""

    def url(host: str) -> str:
        return f"http://{host}:{aggregate_port}/aggregate"

    states = [ClusterState(ClusterSpec(f"d{i}", aggregate=url(f"n{i}.{HUNG}"), gateway="h:1"))
              for i in range(5)]  # fmt: skip
    good = ClusterState(ClusterSpec("good", aggregate=url("localhost"), gateway="h:1"))
    states.append(good)
    fetcher = Fetcher(lambda: states, interval_s=3600, timeout_s=0.2)
    try:
        await fetcher.start()
        await fetcher.refresh()
        for _ in range(3):
            hub._LOOKUPS.forget()  # (each round looks localhost up again: not within LOOKUP_TTL_S)
            good.aggregate, good.fetch_error = None, None
            await fetcher.refresh()
            assert good.aggregate is not None and good.fetch_error is None, good.fetch_error
        assert await _running(hung, 5) == 5  # (one thread per hung name)
        assert all(st.fetch_error for st in states[:-1])
    finally:
        await fetcher.stop()


async def test_the_lookups_waited_on_and_the_threads_in_all_stay_bounded(
    hung: HungResolver, listening: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MAX_LOOKUPS (3) bounds the lookups someone waits on: three probes waiting on three hung names, a
    fourth name is not looked up (None) while they wait; once they gave up, it is. MAX_LOOKUP_THREADS (4)
    bounds the threads, hung ones included: a fifth name is not looked up (None), localhost neither."""
    monkeypatch.setattr(hub, "MAX_LOOKUP_THREADS", 4)
    waits: list[Any] = [asyncio.create_task(connects(f"w{i}.{HUNG}:80", 1.0)) for i in range(3)]
    assert await _running(hung, 3) == 3
    assert await connects(f"localhost:{listening}", 0.5) is None  # (3 waited on)
    assert await asyncio.gather(*waits) == [False, False, False]  # (given up after 1 s)
    assert await connects(f"localhost:{listening}", 0.5) is True
    assert await connects(f"x.{HUNG}:80", 0.01) is False  # (the fourth thread)
    assert await _running(hung, 4) == 4
    hub._LOOKUPS.forget()
    assert await connects(f"y.{HUNG}:80", 0.01) is None
    assert await connects(f"localhost:{listening}", 0.5) is None
    assert await _running(hung, 4) == 4 and hub._LOOKUPS.running == 4
