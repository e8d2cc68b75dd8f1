"""Under a linger flood an honest client with a small refused body is let on first (session-22 closing
note: an honest client got 1/(K+1) of the linger pace, its turn behind every flooder's). The pace's
waiters take their turns smallest refused body first (what it may send: its ``Content-Length`` and a
head; chunked: unknown, last), equal ones in turn. Fake transports
as the s22 pace tests (``test_front_linger_pace_s22fix.py``); the turn is one ``_pace_next`` with room
for one read, no clock involved."""

from __future__ import annotations

import asyncio

from gateway.test_front_linger_pace_s22gw import _Kernel
from kvgate.httpfront.server import FrontProtocol, FrontServer, Request, Response


async def _ok(req: Request) -> Response:
    return Response(body=b"ok")


async def _waiting(front: FrontServer, head: bytes) -> tuple[FrontProtocol, _Kernel]:
    """A connection refused at ``head`` (413: over ``max_body``), lingering, its reading paused in the
    pace's queue."""
    proto = front.protocol()
    t = _Kernel()
    proto.connection_made(t)  # type: ignore[arg-type]
    proto.data_received(head)
    for _ in range(20):
        await asyncio.sleep(0)
    assert t.eof and proto.linger_until is not None
    if t.reading:
        proto._read_paused = True
        t.pause_reading()
    front.pace_wait(proto)
    return proto, t


def _head(length: int | None) -> bytes:
    """A head announcing ``length`` bytes; None: chunked, and a first chunk line of 1 MiB (its 413)."""
    if length is None:
        return b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n100000\r\n"
    return f"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: {length}\r\n\r\n".encode()


async def test_the_small_refused_body_reads_before_the_flood_that_waited_longer() -> None:
    """Eight flooders (900 MB announced) wait their turn, then an honest client refused for a 1 MiB
    body; the next turn has room for one read: the honest client's (FAILS on 51c4190c: the first
    flooder's, in arrival order; the honest one's came after all eight)."""
    front = FrontServer({}, _ok, max_body=64 << 10)
    pace = front.linger_pace
    # (deep in debt while they queue: no turn comes before the one below)
    pace.rate, pace.burst, pace.tokens = 1.0, 64 << 10, -1000.0
    loop = asyncio.get_running_loop()
    try:
        flood = [await _waiting(front, _head(900_000_000)) for _ in range(8)]
        chunked = await _waiting(front, _head(None))
        honest = await _waiting(front, _head(1 << 20))
        if front._pace_timer is not None:
            front._pace_timer.cancel()
            front._pace_timer = None
        pace.tokens, pace.stamp = 1.0, loop.time()  # (room for one read: one let on)
        front._pace_next()
        assert honest[1].reading, "the honest client's turn"
        assert not any(t.reading for _, t in flood) and not chunked[1].reading
        # The flooders next, in arrival order, and the chunked one (unknown length) last.
        order: list[int] = []
        rest = [t for _, t in [*flood, chunked]]
        for _ in range(9):
            pace.tokens, pace.stamp = 1.0, loop.time()
            front._pace_next()
            order.append(next(i for i, t in enumerate(rest) if t.reading and i not in order))
        assert order == list(range(9)), order
    finally:
        front.close_all()


def test_the_turn_queue_orders_by_key_then_arrival_and_stays_bounded_under_churn() -> None:
    from kvgate.httpfront.budget import TurnQueue  # (new with the order: not on 51c4190c)

    q: TurnQueue[str] = TurnQueue()
    for name, key in (("a", 5.0), ("b", 1.0), ("c", 5.0), ("d", float("inf"))):
        q.push(name, key)
    q.discard("b")
    assert len(q) == 3 and [q.pop(), q.pop(), q.pop()] == ["a", "c", "d"] and len(q) == 0
    q.push("w", 1.0)
    for i in range(10_000):  # (each joins and leaves before any turn: its entry must not stay)
        q.push(f"x{i}", 0.0)
        q.discard(f"x{i}")
    assert len(q) == 1 and len(q._heap) <= 2 * len(q) + 65
    assert q.pop() == "w"
