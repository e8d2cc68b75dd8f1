"""rev-c28 F6: a release stamps the pool's sweep count, not the clock (``loop.time()`` per release was
most of Q2's +2,800 instructions a request), and the idle-age cap still holds: a connection is closed
at the fifth sweep after it was put idle (idle >= 4 sweep periods = ``max_idle_age``), not before.
Fails on f0ea526b (no ``_sweeps``; the release read the clock).
"""

from __future__ import annotations

import asyncio

from gateway.conftest import read_body
from kvgate.gateway.upstream import UpstreamPool

from ._keepalive_upstreams import HEAD, keepalive_backend

WAIT_S = 30.0


async def test_release_reads_no_clock_and_the_age_cap_counts_sweeps() -> None:
    runner, a = await keepalive_backend()
    pool = UpstreamPool(5.0, None, max_idle_age_s=3600.0)  # (the timer never fires here: sweeps by hand)
    loop = asyncio.get_running_loop()
    try:
        for _ in range(2):  # the first release arms the sweep (a timer: one clock read); time the second
            resp = await asyncio.wait_for(pool.request(a, HEAD, b"{}"), WAIT_S)
            await asyncio.wait_for(read_body(resp), WAIT_S)
            if pool._sweep is None:
                resp.release()
        assert pool._sweep is not None and not pool._idle.get(a)
        reads = []
        real = loop.time

        def counting() -> float:
            reads.append(1)
            return real()

        loop.time = counting  # type: ignore[method-assign]
        try:
            resp.release()
        finally:
            del loop.time  # type: ignore[method-assign]
        assert pool._idle[a], "setup: the connection was pooled"
        assert not reads, f"{len(reads)} clock reads on a release"
        conn = pool._idle[a][0]

        def sweep() -> None:
            assert pool._sweep is not None
            pool._sweep.cancel()  # (the armed timer: these sweeps replace it)
            pool._sweep_idle()

        for _ in range(4):
            sweep()
            assert pool._idle.get(a) == [conn] and not conn.closed, "closed before max_idle_age"
        sweep()
        assert not pool._idle.get(a), "kept past max_idle_age plus a sweep period"
    finally:
        pool.close()
        await runner.cleanup()
