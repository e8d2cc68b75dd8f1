"""rev-c28 F1 (code) and F2: a retired address is remembered (bounded) until the store adds it back.

F1: a connection still connecting when its address is retired (the server has accepted it, the client's
``_connect`` has not resumed) was missed by ``retire`` and pooled idle to a departed address until the
300 s sweep. F2: ``retire`` walked every open connection per removed address (K removals x all open).
Both fail on 7b05ed51.
"""

from __future__ import annotations

import asyncio

from gateway.conftest import read_body
from kvgate.gateway import upstream
from kvgate.gateway.upstream import UpstreamPool

from ._keepalive_upstreams import HEAD, keepalive_backend

WAIT_S = 30.0


async def test_a_connection_opening_when_its_address_is_retired_is_not_kept_idle() -> None:
    runner, a = await keepalive_backend()
    pool = UpstreamPool(5.0, None)
    try:
        sent = asyncio.create_task(pool.request(a, HEAD, b"{}"))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT_S
        in_window = False
        while not sent.done() and loop.time() < deadline:
            await asyncio.sleep(0)  # every loop turn: lands in the accept window every time
            assert runner.server is not None
            if runner.server.connections:
                in_window = not any(c.address == a for c in pool._open)
                pool.retire(a)  # the endpoint leaves every pool now
                break
        resp = await asyncio.wait_for(sent, WAIT_S)
        await asyncio.wait_for(read_body(resp), WAIT_S)
        resp.release()
        assert in_window, "setup: the server had the connection before pool._open did"
        assert not pool._idle.get(a), "retired while connecting, the connection was pooled idle"
        # the store adds it back: connections to it are kept again
        pool.restore(a)
        resp = await asyncio.wait_for(pool.request(a, HEAD, b"{}"), WAIT_S)
        await asyncio.wait_for(read_body(resp), WAIT_S)
        resp.release()
        assert len(pool._idle[a]) == 1
    finally:
        pool.close()
        await runner.cleanup()


class _CountingSet(set):
    visited = 0

    def __iter__(self):
        for x in super().__iter__():
            _CountingSet.visited += 1
            yield x


class _Fake:
    def __init__(self, address: str) -> None:
        self.address, self.transport, self.closed = address, None, False


def test_retire_does_not_walk_every_open_connection() -> None:
    pool = UpstreamPool(5.0, None)
    pool._open = _CountingSet()  # type: ignore[assignment]
    addresses = [f"10.0.{i // 250}.{i % 250}:8000" for i in range(200)]
    for a in addresses:
        for _ in range(20):
            pool._open.add(_Fake(a))  # type: ignore[arg-type]
    _CountingSet.visited = 0
    for a in addresses:
        pool.retire(a)
    # at most its own connections per retire (4,000 in all), not all 4,000 open ones each time (800,000)
    assert _CountingSet.visited <= 4_000, f"{_CountingSet.visited} connection visits for 200 retires"


def test_the_retired_addresses_are_bounded(monkeypatch) -> None:
    monkeypatch.setattr(upstream, "_MAX_RETIRED", 3)
    pool = UpstreamPool(5.0, None)
    for i in range(10):
        pool.retire(f"10.0.0.{i}:8000")
    assert list(pool._retired) == [f"10.0.0.{i}:8000" for i in (7, 8, 9)]
