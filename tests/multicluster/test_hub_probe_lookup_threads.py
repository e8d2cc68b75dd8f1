"""Review s16-hard (hub probe, 6cc56dd): ``hub._lookup`` runs ``getaddrinfo`` in the loop's *default
executor* and, when the probe gives up, leaves it running there ("a lookup given up runs on in its
thread"). The project ruled on exactly this in review s14-kv M1/M2 (``kvsubscriber.lookup_ipv4``: a
daemon thread of its own, not the executor): a resolver that does not answer keeps each given-up lookup's
worker for its whole time-out (tens of seconds), so

1. the pool fills (``min(32, cpus + 4)`` workers: 6 on a 2-core pod), and a *fast* lookup of another,
   listening gateway then waits in the queue until the loop's timer judges it down: one cluster's
   broken DNS makes every host-named cluster's probe fail (and any other ``to_thread`` user wait);
2. ``asyncio.run``'s end (``shutdown_default_executor``) waits for every given-up lookup: a
   ``kvgate epp`` asked to stop hangs until the resolver gives up.

The hung resolver is simulated by replacing ``socket.getaddrinfo`` for one name (it blocks until the test
releases it); every other name resolves for real, the connects are real. Both tests fail on main."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any

import pytest

from kvgate.multicluster import hub
from kvgate.multicluster.hub import connects
from multicluster.hung_resolver import HungResolver

HUNG = "hung.kvgate-review.test"


@pytest.fixture
def hung(monkeypatch: pytest.MonkeyPatch) -> Any:
    real = socket.getaddrinfo
    release = threading.Event()

    def fake(host: Any, *a: Any, **k: Any) -> Any:
        if host == HUNG:
            release.wait(60)  # (a name server that does not answer)
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return real(host, *a, **k)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    yield release
    release.set()
    # (until the released lookups are out: one of HUNG still running makes the next test's probe of HUNG
    # do no lookup of its own, inconclusive: None, not False; 1 in 6 runs at load 8 failed so, kvhub17)
    for _ in range(3000):  # (30 s: 5 s before)
        if HUNG not in hub._LOOKUPS.inflight:
            break
        time.sleep(0.01)


async def test_a_hung_name_does_not_make_another_listening_gateways_probe_fail(hung: Any) -> None:
    listener = await asyncio.start_server(lambda _r, w: w.close(), "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        assert await connects(f"localhost:{port}", 0.5)  # (control: before the hung lookups)
        # one cluster whose name does not resolve, probed once a second for 40 s (PROBE_EVERY_S): each
        # probe gives up after its timeout, its lookup stays in a worker
        for _ in range(40):
            assert not await connects(f"{HUNG}:80", 0.01)
        # the other cluster: listening, its name resolved at once from /etc/hosts
        assert await connects(f"localhost:{port}", 0.5)
    finally:
        hung.set()
        listener.close()
        await listener.wait_closed()


def test_a_given_up_lookup_does_not_hold_asyncio_runs_end(hung: Any) -> None:
    async def main() -> bool:
        return await connects(f"{HUNG}:80", 0.05)

    out: list[bool] = []
    t = threading.Thread(target=lambda: out.append(asyncio.run(main())), daemon=True)
    t.start()
    t.join(30.0)  # (the probe itself ends in 0.05 s; the lookup hangs until released: 60 s)
    ended = not t.is_alive()
    hung.set()
    t.join(30.0)
    assert out == [False]
    assert ended, "asyncio.run did not return: its end waits for the given-up lookup's executor thread"


async def _reaches(running: list[int], n: int) -> bool:
    """Whether ``n`` lookups are in getaddrinfo within 5 s (a thread may start late on a loaded host),
    and then still 0.1 s later (no other on its way)."""
    for _ in range(3000):  # (30 s: 5 s before)
        if running[0] >= n:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)
    return running[0] == n


async def test_the_lookup_threads_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A dead name server grows no threads without bound: while a given-up lookup of a name runs, a probe of
    that name starts no other (it fails at once), and at most MAX_LOOKUP_THREADS run at once (here 3;
    MAX_LOOKUPS until k8s18, which now bounds only the lookups not yet given up:
    test_hub_lookups_hung_names.py); once the resolver answers, the count is back to zero. On main the 40
    probes of one name each queued a lookup in the default executor: as many ran at once as it has workers (6
    on 2 cores)."""
    fake = HungResolver(HUNG)
    release, running = fake.release, fake.running  # (running: now, most at once)
    await asyncio.sleep(0.2)  # (the lookups of the tests before, released: out of getaddrinfo)
    monkeypatch.setattr(socket, "getaddrinfo", fake)
    monkeypatch.setattr(hub, "MAX_LOOKUP_THREADS", 3, raising=False)  # (raising: none before k8s18)
    try:
        for _ in range(40):
            assert not await connects(f"{HUNG}:80", 0.01)
        assert await _reaches(running, 1)
        assert running == [1, 1]  # one name: one thread
        for i in range(5):
            assert not await connects(f"n{i}.{HUNG}:80", 0.01)
        assert await _reaches(running, 3)
        assert running == [3, 3]  # five more names: the cap
    finally:
        release.set()
    for _ in range(3000):  # (30 s: 5 s before)
        if running[0] == 0 and hub._LOOKUPS.running == 0:
            break
        await asyncio.sleep(0.01)
    assert running[0] == 0 and hub._LOOKUPS.running == 0 and not hub._LOOKUPS.inflight
