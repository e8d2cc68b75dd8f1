"""The linger pace's turn tests' set-up (``test_front_linger_share_s23gw.py``,
``test_linger_chunked_starved_revgw23.py``): a front whose pace is deep in debt (no turn comes by itself),
connections refused at their head and queued for the pace's turns, and one turn given by hand (room for one
read). Fake transports as the s22 pace tests (``test_front_linger_pace_s22gw._Kernel``); no clock."""

from __future__ import annotations

import asyncio

from gateway.test_front_linger_pace_s22gw import _Kernel
from kvgate.httpfront.server import FrontProtocol, FrontServer, Request, Response


async def _ok(req: Request) -> Response:
    return Response(body=b"ok")


def front_in_debt() -> FrontServer:
    """A front refusing bodies over 64 KiB, its linger pace deep in debt while connections queue."""
    front = FrontServer({}, _ok, max_body=64 << 10)
    pace = front.linger_pace
    pace.rate, pace.burst, pace.tokens = 1.0, 64 << 10, -1000.0
    return front


def head(length: int | None) -> bytes:
    """A head announcing ``length`` bytes; None: chunked, and a first chunk line of 1 MiB (its 413)."""
    if length is None:
        return b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n100000\r\n"
    return f"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: {length}\r\n\r\n".encode()


async def waiting(front: FrontServer, raw: bytes) -> tuple[FrontProtocol, _Kernel]:
    """A connection refused at ``raw`` (413: over ``max_body``), lingering, its reading paused in the
    pace's queue."""
    proto = front.protocol()
    t = _Kernel()
    proto.connection_made(t)  # type: ignore[arg-type]
    proto.data_received(raw)
    for _ in range(20):
        await asyncio.sleep(0)
    assert t.eof and proto.linger_until is not None
    if t.reading:
        proto._read_paused = True
        t.pause_reading()
    front.pace_wait(proto)
    return proto, t


def no_timer(front: FrontServer) -> None:
    """The pace's own timer off: the test gives the turns."""
    if front._pace_timer is not None:
        front._pace_timer.cancel()
        front._pace_timer = None


def one_turn(front: FrontServer) -> None:
    """Room for one read: one waiter let on."""
    front.linger_pace.tokens, front.linger_pace.stamp = 1.0, asyncio.get_running_loop().time()
    front._pace_next()


def requeue(front: FrontServer, proto: FrontProtocol, t: _Kernel) -> None:
    """The waiter read its turn's bytes and overdrew the pace: it waits again (what ``_drop`` does)."""
    proto._read_paused = True
    t.pause_reading()
    front.pace_wait(proto)
