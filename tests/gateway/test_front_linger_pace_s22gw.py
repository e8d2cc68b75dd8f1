"""Review s22-gw: the linger pace (gw22) orders only the connections already waiting. A lingering
connection that is not waiting (a new refusal) reads at once, whatever the debt: new refused connections
keep the bucket in debt and a waiter never gets its turn, and what lingering reads is not bounded by
``LINGER_RATE`` but by the rate of new refusals. Fake transports as gw22's own test; the pace's clock is
the loop's (set small: 1 MiB/s, bucket 64 KiB), the waiter's turn polled for."""

from __future__ import annotations

import asyncio

from gateway.conftest import until
from gateway.front_transport import FrontTransport
from kvgate.httpfront.server import FrontProtocol, FrontServer, Request, Response

_READ = 256 << 10  # (asyncio's read size)
_HEAD = b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 900000000\r\n\r\n"


async def _ok(req: Request) -> Response:
    return Response(body=b"ok")


class _Kernel(FrontTransport):
    """A client whose bytes wait in the kernel: each time reading resumes, a read arrives."""

    def __init__(self) -> None:
        super().__init__()
        self.proto: FrontProtocol | None = None
        self.turns = 0

    def resume_reading(self) -> None:
        super().resume_reading()
        self.turns += 1
        if self.proto is not None and not self.closed:
            self.proto.data_received(b"a" * _READ)


async def _lingering(front: FrontServer) -> tuple[FrontProtocol, _Kernel]:
    proto = front.protocol()
    t = _Kernel()
    proto.connection_made(t)  # type: ignore[arg-type]
    proto.data_received(_HEAD)
    for _ in range(20):
        await asyncio.sleep(0)
    assert t.eof and proto.linger_until is not None
    return proto, t


async def test_a_waiter_gets_its_turn_while_new_refusals_keep_coming() -> None:
    """``a`` lingers and waits its turn; meanwhile a new refused connection every 20 ms reads what its
    kernel holds (one read) and leaves. Each new one reads at once, ahead of ``a``, and its read is new
    debt: ``a`` is never let on within its linger (2 s), its client never read (FAILS on add20c07)."""
    front = FrontServer({}, _ok, max_body=64 << 10)
    pace = front.linger_pace
    pace.rate, pace.burst, pace.tokens = 1 << 20, 64 << 10, 64 << 10
    loop = asyncio.get_running_loop()
    read_by_new = 0
    try:
        a, ta = await _lingering(front)
        a.data_received(b"a" * _READ)  # (overdraws: a waits its turn)
        assert not ta.reading
        ta.proto = a
        stop = loop.time() + 1.5

        async def churn() -> None:
            nonlocal read_by_new
            while loop.time() < stop and not ta.turns:
                c, tc = await _lingering(front)
                if tc.reading:  # (what a real transport does: it reads while not paused)
                    c.data_received(b"a" * _READ)
                    read_by_new += _READ
                c.connection_lost(None)  # (its client leaves)
                await asyncio.sleep(0.02)

        task = loop.create_task(churn())
        try:
            await until(lambda: ta.turns > 0, 1.5, "a's turn")
        finally:
            task.cancel()
    finally:
        front.close_all()


async def test_lingering_reads_stay_within_the_pace_across_new_connections() -> None:
    """The pace bounds what all lingering connections read: 64 KiB of bucket and 1 MiB/s here. 20 new
    refused connections in a row, each finding its kernel holding one read: at most the bucket and one
    read (the overdraft) should be read before the debt is paid (FAILS on add20c07: each reads at once,
    5 MiB read in well under a second)."""
    front = FrontServer({}, _ok, max_body=64 << 10)
    pace = front.linger_pace
    pace.rate, pace.burst, pace.tokens = 1 << 20, 64 << 10, 64 << 10
    loop = asyncio.get_running_loop()
    read = 0
    conns = []
    try:
        t0 = loop.time()
        for _ in range(20):
            c, tc = await _lingering(front)
            conns.append(c)
            if tc.reading:
                c.data_received(b"a" * _READ)
                read += _READ
        elapsed = loop.time() - t0
        allowed = (64 << 10) + _READ + elapsed * pace.rate
        assert read <= allowed, f"{read} B read in {elapsed:.3f} s (pace allows {allowed:.0f})"
    finally:
        front.close_all()


async def test_closed_connections_do_not_stay_queued_for_their_turn() -> None:
    """200 refused connections each read once (in debt: each pauses and queues for its turn), then their
    clients leave. The queue should hold only live connections; it holds all 200 closed ones (FAILS on
    add20c07: ``connection_lost`` leaves them queued until the debt is paid, and the debt has no floor:
    under churn it is never paid, the queue grows by one per connection without bound). The debt they
    left outlives them too: a lingerer arriving after them waits for all of it."""
    front = FrontServer({}, _ok, max_body=64 << 10)
    pace = front.linger_pace
    pace.rate, pace.burst, pace.tokens = 1 << 20, 64 << 10, 64 << 10
    try:
        for _ in range(200):
            c, tc = await _lingering(front)
            if tc.reading:
                c.data_received(b"a" * _READ)
            c.connection_lost(None)
        assert not front.connections
        due = pace.due(asyncio.get_running_loop().time())
        assert len(front._pace_waiting) == 0, (len(front._pace_waiting), f"debt {due:.1f} s")
    finally:
        front.close_all()
