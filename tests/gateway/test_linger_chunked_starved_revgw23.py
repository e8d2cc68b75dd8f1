"""Review s23-rev-gw23 F2: the linger pace's strict order (smallest announced body first, chunked last,
no aging) starves an honest client refused for a chunked body for as long as any flooder keeps sending,
whatever it announced: the flooders re-queue after every read (each announced 100 MB, so each may linger
its whole ``LINGER_S``) and always sort before ``math.inf``. On 51c4190c (arrival order) the chunked
client had 1/(K+1) of the turns; at 83f8785f it has none, so it is cut at the linger's end without its
413 read (the failure the s22 note fixed for announced bodies). Fake transports as the s23gw test; no
clock."""

from __future__ import annotations

import asyncio

import pytest

from gateway.test_front_linger_pace_s22gw import _Kernel
from kvgate.httpfront.server import FrontProtocol, FrontServer, Request, Response

pytestmark = pytest.mark.asyncio
K = 8


async def _ok(req: Request) -> Response:
    return Response(body=b"ok")


async def _waiting(front: FrontServer, head: bytes) -> tuple[FrontProtocol, _Kernel]:
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


def _requeue(front: FrontServer, proto: FrontProtocol, t: _Kernel) -> None:
    """The flooder read its turn's bytes and overdrew the pace: it waits again (what ``_drop`` does)."""
    proto._read_paused = True
    t.pause_reading()
    front.pace_wait(proto)


async def test_a_chunked_honest_client_gets_a_turn_under_a_flood_that_keeps_sending() -> None:
    front = FrontServer({}, _ok, max_body=64 << 10)
    pace = front.linger_pace
    pace.rate, pace.burst, pace.tokens = 1.0, 64 << 10, -1000.0
    loop = asyncio.get_running_loop()
    try:
        flood = [await _waiting(front, b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 100000000\r\n\r\n")
                 for _ in range(K)]  # fmt: skip
        chunked = b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n100000\r\n"
        honest = await _waiting(front, chunked)
        if front._pace_timer is not None:
            front._pace_timer.cancel()
            front._pace_timer = None
        got_turn = False
        for _ in range(4 * (K + 1)):  # (arrival order: its turn within K + 1)
            pace.tokens, pace.stamp = 1.0, loop.time()  # (room for one read: one let on)
            front._pace_next()
            if honest[1].reading:
                got_turn = True
                break
            for proto, t in flood:
                if t.reading:
                    _requeue(front, proto, t)
        # FAILS on main 470c6a1c (and at 83f8785f): every turn goes to a flooder (100 MB < inf),
        # the chunked client never reads
        assert got_turn, "the chunked honest client never got a turn in 4(K+1) turns"
    finally:
        front.close_all()
