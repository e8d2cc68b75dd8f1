"""Review s16-fixes-b H1 (19ac148, hub probe): while a given-up lookup of a name still runs, every later
probe of that name "fails at once" (``_Lookups.start`` refuses; ``_lookup`` raises TimeoutError) and
``ClusterDirector._probe`` records that as a *second, corroborating failure*. The second probe never
looked the name up nor connected: it is the first probe's one slow answer counted again. One lost DNS
answer (glibc retries a lost UDP query after its 5 s ``timeout``), seen by the probe of a client that
left, now backs a healthy, listening cluster off at the next client that leaves a second later; before
19ac148 the second probe did its own lookup, answered at once, and cleared the suspicion.

The slow resolver is simulated by replacing ``socket.getaddrinfo`` for one name: its *first* query
hangs (a lost answer, released at the end), later queries answer 127.0.0.1 at once. Connects are real,
to a real listener. Both tests fail on main (e9e4f20) and pass on 19ac148~1. A fix that makes a probe
without a lookup of its own inconclusive (None: no suspicion recorded or cleared) passes them; one that
only waits on the same hung lookup does not (that lookup is the lost answer)."""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any

import pytest

from kvgate.datalayer.endpoint import Endpoint
from kvgate.multicluster.clusters import ClustersConfig, ClusterSpec
from kvgate.multicluster.hub import CLUSTER_LABEL, PROBE_EVERY_S, ClusterDirector, connects

pytestmark = pytest.mark.asyncio

SLOW = "slow-once.kvgate-review.test"


@pytest.fixture
def slow_once(monkeypatch: pytest.MonkeyPatch) -> Any:
    real = socket.getaddrinfo
    release = threading.Event()
    calls = [0]
    lock = threading.Lock()

    def fake(host: Any, port: Any, *a: Any, **k: Any) -> Any:
        if host == SLOW:
            with lock:
                calls[0] += 1
                first = calls[0] == 1
            if first:
                release.wait(30)  # (the first query's answer was lost: the resolver retries late)
            return real("127.0.0.1", port, *a, **k)
        return real(host, port, *a, **k)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    yield calls
    release.set()


async def _listener() -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(lambda _r, w: w.close(), "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_a_second_probe_looks_the_name_up_again(slow_once: Any) -> None:
    server, port = await _listener()
    try:
        assert not await connects(f"{SLOW}:{port}", 0.2)  # the first lookup's answer is lost: down, fair
        await asyncio.sleep(0.3)
        # A second probe, a probe-interval later: the resolver now answers at once, the gateway listens.
        # Not a failure: either it looks the name up (True) or it says it could not tell (None).
        assert await connects(f"{SLOW}:{port}", 1.0) is not False, (
            "the second probe failed without a lookup of its own (calls to getaddrinfo: "
            f"{slow_once[0]}): the first probe's given-up lookup is counted again"
        )
    finally:
        server.close()
        await server.wait_closed()


async def test_one_lost_dns_answer_does_not_back_a_listening_cluster_off(slow_once: Any) -> None:
    server, port = await _listener()
    other, oport = await _listener()
    clock = [100.0]

    async def probe(address: str) -> bool:
        return await connects(address, 0.2)

    cfg = ClustersConfig(
        (ClusterSpec("west", gateway=f"{SLOW}:{port}"), ClusterSpec("east", gateway=f"127.0.0.1:{oport}"))
    )
    director = ClusterDirector(cfg, "kvgate", clock=lambda: clock[0], seed=0, probe=probe)
    west = director.states["west"]
    ep = next(e for e in director.store.all() if e.labels[CLUSTER_LABEL] == "west")

    async def leave(endpoint: Endpoint) -> None:
        req: Any = object()
        director.on_abandoned(req, endpoint)
        director.on_finished(req, endpoint, None, False)
        for _ in range(3000):  # (30 s: 3 s before)
            if not director._probes:
                break
            await asyncio.sleep(0.01)
        clock[0] += PROBE_EVERY_S

    try:
        await leave(ep)  # probe 1: its lookup's answer is lost -> suspected (not backed off)
        assert west.failures == 0
        await asyncio.sleep(0.3)
        await leave(ep)  # probe 2, 1 s later on the clock: the name resolves at once now
        assert west.failures == 0 and west.available(clock[0]), (
            "a listening cluster was backed off: its second 'failure' was the first probe's lookup, "
            f"still running (getaddrinfo calls: {slow_once[0]})"
        )
    finally:
        await director.close()
        for s in (server, other):
            s.close()
            await s.wait_closed()


async def test_a_lookup_thread_that_does_not_start_is_inconclusive(monkeypatch: pytest.MonkeyPatch) -> None:
    """Review s16-fixes-b H3: ``Thread.start`` raising RuntimeError ("can't start new thread", a pids
    limit) escaped ``connects`` as the probe task's unretrieved exception; now the probe could not tell
    (None), and its lookup slot is given back."""
    from kvgate.multicluster import hub

    def refuse(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", refuse)
    running = hub._LOOKUPS.running
    assert await connects("no-thread.kvgate-review.test:80", 0.2) is None
    assert hub._LOOKUPS.running == running
