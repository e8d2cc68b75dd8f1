"""Passive health's probes (``datalayer.ejection``), closing-s30 "Failover leftovers":

- the ejected endpoints due a probe were probed one after another, so ``k`` servers that never answer took
  ``k`` probe timeouts a round (the last one probed ``k - 1`` timeouts late). Now they are probed at once,
  at most ``PROBES_AT_ONCE`` in flight. Real servers on loopback (port 0) that take the probe's
  connection and never answer; ``probeTimeoutSeconds`` 60, so no probe ends during the test;
- an address's failure count outlived its leaving the pool: two failures before it left made one after it
  came back (a new ``Endpoint``) an ejection. A new membership now starts a fresh record, as Envoy's
  outlier detection does for a host added again.

The first two fail on main 691110b3 (one probe in flight until the first times out, 60 s later); the third
too (ejected at the first failure after the return)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import aiohttp

from kvgate.config.gateway import HealthConfig
from kvgate.datalayer import ejection
from kvgate.datalayer.ejection import HealthTracker
from kvgate.datalayer.endpoint import Endpoint

WAIT_S = 30.0


@asynccontextmanager
async def silent_servers(n: int) -> AsyncIterator[tuple[list[str], list[int]]]:
    """``n`` servers on 127.0.0.1:0 that read a request and never answer; yields (addresses, [requests])."""
    seen = [0]
    held: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        try:
            await reader.readuntil(b"\r\n\r\n")
            seen[0] += 1
            await reader.read()  # (until the prober gives up)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass

    servers = [await asyncio.start_server(serve, "127.0.0.1", 0) for _ in range(n)]
    try:
        yield [f"127.0.0.1:{s.sockets[0].getsockname()[1]}" for s in servers], seen
    finally:
        for w in held:
            w.close()
        for s in servers:
            s.close()


async def _until(cond: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not cond():
        assert time.monotonic() < deadline, f"not within {WAIT_S}s: {what}"
        await asyncio.sleep(0.02)


async def _probing(n: int) -> tuple[int, int]:
    """``n`` silent ejected endpoints under the probe loop: (requests seen once the expected number came
    or the wait ended, the bound)."""
    cfg = HealthConfig(probe_timeout_s=60.0)
    tracker = HealthTracker(cfg, time.monotonic)
    async with silent_servers(n) as (addresses, seen), aiohttp.ClientSession() as session:
        eps = [Endpoint(address=a, pool="p") for a in addresses]
        for ep in eps:
            ep.healthy = False  # ejected (never charged here: due at once)
        task = asyncio.create_task(tracker.run(session, lambda: eps, interval_s=0.05))
        try:
            want = min(n, getattr(ejection, "PROBES_AT_ONCE", 16))  # (getattr: the test runs on 691110b3 too)
            await _until(lambda: seen[0] >= want, f"{want} probes in flight at once")
            await asyncio.sleep(0.3)  # (more would only show a broken bound)
            return seen[0], want
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def test_silent_ejected_endpoints_are_probed_at_once():
    got, want = await _probing(6)
    assert got == want == 6


async def test_probes_in_flight_are_bounded():
    got, want = await _probing(ejection.PROBES_AT_ONCE + 4)
    assert got == want == ejection.PROBES_AT_ONCE


def test_an_endpoint_that_left_and_came_back_starts_a_fresh_record():
    now = [0.0]
    tracker = HealthTracker(HealthConfig(eject_after_failures=3), lambda: now[0])
    peer = Endpoint(address="10.0.0.2:8000", pool="p")
    tracker.success(peer)  # (a peer serving: an ejection is allowed)
    before = Endpoint(address="10.0.0.1:8000", pool="p")
    assert not tracker.failure(before, [before, peer])
    assert not tracker.failure(before, [before, peer])
    after = Endpoint(address="10.0.0.1:8000", pool="p")  # left its pool, came back: a new Endpoint
    assert not tracker.failure(after, [after, peer])  # (before: its third failure, ejected)
    assert after.healthy
    assert not tracker.failure(after, [after, peer])
    assert tracker.failure(after, [after, peer])  # its own third
