"""Review s22-gw F1/F5, the cases its tests leave open. A real refused connection's first read carries
its body's start with the head (dropped before the linger begins): that read cannot be paced, and its
debt must not stall the lingerers waiting their turn. And once the debt is paid, the queue drains as fast
as the bucket allows, not one waiter per timer. Fake transports as test_front_linger_pace.py; the pace's
clock is the loop's."""

from __future__ import annotations

import asyncio

from gateway.conftest import until
from gateway.front_transport import FrontTransport
from gateway.test_front_linger_pace_s22gw import _READ, _lingering
from kvgate.httpfront.budget import ReadPace
from kvgate.httpfront.server import FrontServer, Request, Response

_HEAD = b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 900000000\r\n\r\n"


async def _ok(req: Request) -> Response:
    return Response(body=b"ok")


async def test_a_waiter_gets_its_turn_while_new_refusals_bring_their_first_read() -> None:
    """``a`` waits its turn; a new connection every 20 ms sends its head, then 256 KiB of body read before
    its refusal is out (refused from its head: dropped before its linger), then leaves. That read is not
    lingering's: it empties the bucket but makes no debt, and ``a`` gets its turn (FAILS on add20c07:
    each such read is 256 KiB more debt at 1 MiB/s, 1.3 s of it per 5 new connections, ``a`` never let
    on; a debt floor alone would leave one bucket's debt renewed every 20 ms)."""
    front = FrontServer({}, _ok, max_body=64 << 10)
    pace = front.linger_pace
    pace.rate, pace.burst, pace.tokens = 1 << 20, 64 << 10, 64 << 10
    loop = asyncio.get_running_loop()
    try:
        a, ta = await _lingering(front)
        a.data_received(b"a" * _READ)  # (overdraws: a waits its turn)
        assert not ta.reading
        ta.proto = a
        stop = loop.time() + 1.5

        async def churn() -> None:
            while loop.time() < stop and not ta.turns:
                c = front.protocol()
                tc = FrontTransport()
                c.connection_made(tc)  # type: ignore[arg-type]
                c.data_received(_HEAD)
                c.data_received(b"a" * _READ)  # (the next read, before its refusal is out)
                await asyncio.sleep(0.02)
                c.connection_lost(None)

        task = loop.create_task(churn())
        try:
            await until(lambda: ta.turns > 0, 1.5, "a's turn")
        finally:
            task.cancel()
    finally:
        front.close_all()


async def test_the_queue_drains_as_fast_as_the_bucket_allows() -> None:
    """20 lingerers wait their turn and the bucket is full again (8 MiB: 32 reads): one turn lets all 20
    read (FAILS on add20c07: one per turn, the next at least 1 ms later; 2,000 waiters took 2 s, the
    linger's end, and the later ones never read their 413)."""
    front = FrontServer({}, _ok, max_body=64 << 10)
    pace = front.linger_pace
    pace.rate, pace.burst = 1 << 20, 8 << 20
    loop = asyncio.get_running_loop()
    try:
        pace.tokens = -1.0  # (in debt: each lingers paused, in its turn)
        conns = [await _lingering(front) for _ in range(20)]
        for c, tc in conns:  # (queued in one go: no timer's turn in between)
            if tc.reading:
                c._read_paused = True
                tc.pause_reading()
            front.pace_wait(c)
        transports = [tc for _, tc in conns]
        if front._pace_timer is not None:
            front._pace_timer.cancel()
        pace.tokens, pace.stamp = pace.burst, loop.time()
        front._pace_next()
        assert sum(t.reading for t in transports) == 20, [t.reading for t in transports]
        assert not front._pace_waiting
    finally:
        front.close_all()


def test_the_debt_has_a_floor_and_reads_before_the_linger_make_none() -> None:
    """Lingering reads may overdraw the bucket by at most one bucket; reads before the linger only
    empty it, and leave an existing debt as it was (FAILS on add20c07: no ``owe``, no floor)."""
    pace = ReadPace(1 << 20, 64 << 10)
    assert not pace.take(10 << 20, 0.0)
    assert pace.tokens == -(64 << 10)  # (10 MiB read: the debt is one bucket, 62.5 ms, not 10 s)
    pace = ReadPace(1 << 20, 64 << 10)
    assert not pace.take(10 << 20, 0.0, owe=False)
    assert pace.tokens == 0 and pace.due(0.0) == 0.0
    assert pace.take(1000, 1.0, owe=False)  # (refilled: fits)
    pace.take(100 << 10, 1.0)  # (a lingering read's debt)
    debt = pace.tokens
    assert not pace.take(1 << 20, 1.0, owe=False)
    assert pace.tokens == debt
