"""Review s21-fixes-b F2: a client flooding after a refusal was read at full speed for the whole linger
(2 s), each flooder adding ~0.4 ms to every other connection's latency. The linger now stops at what the
refused request announced (its Content-Length and a head) and reads, all connections together, at most
``LINGER_RATE`` bytes/s (a token bucket: over it a lingering connection pauses until its turn). What
lingering is for stays (the client reads its answer): test_front_linger_s21gw.py's M1 cases. The front's
transport is a recording fake; the pace's clock is the event loop's, and the turns are polled for."""

from __future__ import annotations

import asyncio

import pytest

from gateway.conftest import until
from gateway.front_transport import FrontTransport
from kvgate.httpfront.server import FrontProtocol, FrontServer, Request, Response

_PIECE = 16384


async def _ok(req: Request) -> Response:
    return Response(body=b"ok")


async def _lingering(front: FrontServer, head: bytes) -> tuple[FrontProtocol, FrontTransport]:
    """A connection whose request ``head`` was refused, its answer out and its linger begun."""
    proto = front.protocol()
    transport = FrontTransport()
    proto.connection_made(transport)  # type: ignore[arg-type]
    proto.data_received(head)
    for _ in range(20):
        await asyncio.sleep(0)
    assert transport.out.startswith(b"HTTP/1.1 4"), transport.out[:60]
    assert transport.eof and proto.linger_until is not None
    return proto, transport


def _feed(proto: FrontProtocol, transport: FrontTransport, limit: int) -> int:
    """Bytes fed until the front stops reading (or closes), at most ``limit``."""
    sent = 0
    while transport.reading and not transport.closed and sent < limit:
        proto.data_received(b"a" * _PIECE)
        sent += _PIECE
    return sent


async def test_the_linger_stops_past_what_the_refused_request_announced() -> None:
    """A 413 on a 200,000-byte Content-Length: its body (and a head after it) is read and dropped, a byte
    more and the connection closes (FAILED before: read on for the whole linger, 8 MiB here)."""
    front = FrontServer({}, _ok, max_body=64 << 10)
    try:
        head = b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 200000\r\n\r\n"
        proto, transport = await _lingering(front, head)
        sent = _feed(proto, transport, 200_000 + (64 << 10) - _PIECE)
        assert transport.reading and not transport.closed, sent  # an honest client's body: read
        sent += _feed(proto, transport, 8 << 20)
        assert transport.closed, sent
        assert sent <= 200_000 + (64 << 10) + _PIECE, sent
    finally:
        front.close_all()


class _Flooder(FrontTransport):
    """A client whose bytes wait in the kernel: each time reading resumes, 64 KiB reads arrive until the
    front pauses reading again (at most 64 of them). (One read only, as before, was not the kernel's
    behaviour: on a loaded machine a late turn found the bucket refilled, the one read fitted, the
    connection stayed unpaused with nothing more delivered and never queued again: ['a', 'b', 'b', 'b'],
    CI at load ~10.)"""

    def __init__(self, name: str, order: list[str]) -> None:
        super().__init__()
        self.name, self.order = name, order
        self.proto: FrontProtocol | None = None

    def resume_reading(self) -> None:
        super().resume_reading()
        self.order.append(self.name)
        for _ in range(64):
            if self.proto is None or self.closed or not self.reading:
                break
            self.proto.data_received(b"a" * (64 << 10))


@pytest.mark.parametrize(
    "head",
    [
        b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n" + b"zz\r\n",
        b"GET /a HTTP/1.1\r\nHost: h\r\nX-Big: " + b"a" * (70 << 10),
        b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 900000000\r\n\r\n",
    ],
    ids=["400-chunked", "431", "413-announced"],
)
async def test_lingering_reads_share_one_pace_and_take_turns(head: bytes) -> None:
    """Two lingering flooders and a pace of 64 KiB (1 MiB/s): the first reads the bucket empty and
    pauses; the second, in debt already, pauses at its first read; once the debt is paid they read again
    in turns, one 64 KiB read each per turn (FAILED before: no pace, each read 8 MiB and read on)."""
    front = FrontServer({}, _ok, max_body=64 << 10)
    pace = getattr(front, "linger_pace", None)  # (None before: no pace to set)
    if pace is not None:
        pace.rate, pace.burst, pace.tokens = 1 << 20, 64 << 10, 64 << 10
    order: list[str] = []
    try:
        conns = []
        for name in "ab":
            proto = front.protocol()
            transport = _Flooder(name, order)
            proto.connection_made(transport)  # type: ignore[arg-type]
            proto.data_received(head)
            conns.append((proto, transport))
        for _ in range(20):
            await asyncio.sleep(0)
        (a, ta), (b, tb) = conns
        assert ta.eof and tb.eof and a.linger_until is not None  # both answered, lingering
        sent = _feed(a, ta, 8 << 20)
        assert not ta.reading and not ta.closed, sent
        assert sent <= (64 << 10) + _PIECE, sent
        assert _feed(b, tb, 8 << 20) == _PIECE and not tb.reading  # the pace is the process's
        ta.proto, tb.proto = a, b
        await until(lambda: len(order) >= 4, 10, "four turns")
        assert order[:4] == ["a", "b", "a", "b"], order
        assert not ta.reading or not tb.reading  # never both: one turn at a time
    finally:
        front.close_all()


def test_the_pace_is_a_token_bucket_that_may_be_overdrawn() -> None:
    from kvgate.httpfront.budget import ReadPace

    pace = ReadPace(rate=1000, burst=500)
    assert pace.take(400, now=10.0)
    assert not pace.take(300, now=10.0)  # overdrawn by 200 (the read happened)
    assert pace.due(10.0) == pytest.approx(0.2)
    assert pace.due(10.1) == pytest.approx(0.1)
    assert pace.due(10.3) == 0.0
    assert pace.take(500, now=20.0) and not pace.take(1, now=20.0)  # refilled to the burst, no more
