"""Guards from review s25-rev-cpu25 (F3): the front's body budget on the exit paths session 25's read-path
cut touches or sits beside (the ``_serve`` finally's inlined give, ``_parse_first``'s inlined take), and the
parts of the merged ``_parse_head`` that the one-read-vs-two-reads equality of
test_front_read_path_cpu25.py cannot see (``Expect`` behind a busy answer, the body deadline, the chunked
state's reset), over real loopback sockets, with two connections so that a double give (hidden by the floor
at 0 when one connection is alone) shows as the other connection's hold going missing. They pass on main
(no behaviour change): each fails when the line it names is broken. Every server is closed by its test;
no sleeps (polls)."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable

from kvgate.httpfront.server import FrontServer, Request, Response


async def _until(cond: Callable[[], bool], what: str, within: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while not cond():
        assert loop.time() < end, what
        await asyncio.sleep(0.005)


def _req(body: bytes, extra: str = "") -> bytes:
    return f"POST /a HTTP/1.1\r\nHost: h\r\n{extra}Content-Length: {len(body)}\r\n\r\n".encode() + body


class _Front:
    def __init__(self, max_body: int = 1 << 20) -> None:
        self.gate = asyncio.Event()
        self.entered: list[int] = []

        async def handler(req: Request) -> Response:
            self.entered.append(len(req.body))
            await self.gate.wait()
            return Response(body=b"ok:%d" % len(req.body))

        self.front = FrontServer({"/a": handler}, handler, max_body=max_body, max_buffered=1 << 20)

    async def __aenter__(self) -> _Front:
        self.server = await asyncio.get_running_loop().create_server(self.front.protocol, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.gate.set()
        self.front.close_all()
        self.server.close()
        await self.server.wait_closed()

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)


def _reset(w: asyncio.StreamWriter) -> None:
    """The client vanishes: RST (SO_LINGER 0), as a killed client's kernel does."""
    sock = w.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    w.transport.abort()


async def test_disconnect_while_answered_gives_back_exactly_its_own_body() -> None:
    """A whole request in one read (the inlined take), its client gone while it is answered (the task
    cancelled: the inlined give in ``_serve``'s finally); another connection's hold stays counted."""
    async with _Front() as f:
        _ra, wa = await f.connect()
        _rb, wb = await f.connect()
        wa.write(_req(b"a" * 1000))
        wb.write(_req(b"b" * 300))
        await _until(lambda: sorted(f.entered) == [300, 1000], "both answered")
        assert f.front.budget.used == 1300
        _reset(wa)
        await _until(lambda: f.front.budget.used != 1300, "A's hold given back")
        await asyncio.sleep(0)
        assert f.front.budget.used == 300  # (given once: B's 300 still held)
        f.gate.set()
        await _until(lambda: f.front.budget.used == 0, "B's hold given back once answered")
        wb.close()


async def test_disconnect_mid_body_then_pipelined_rest_accounted() -> None:
    """A body split over reads (``_parse``'s ``_count``), the client gone mid-body: its partial hold is
    given back and nothing else; a pipelined pair in one read (``_parse_first`` then ``_parse``) holds
    both bodies until each is answered."""
    async with _Front() as f:
        _ra, wa = await f.connect()
        rb, wb = await f.connect()
        full = _req(b"x" * 4000)
        wa.write(full[:-2500])
        await _until(lambda: f.front.budget.used == 1500, "A's partial body counted")
        wb.write(_req(b"p" * 200) + _req(b"q" * 70))
        await _until(lambda: f.entered == [200], "B's first answered")
        await _until(lambda: f.front.budget.used == 1500 + 270, "B's two bodies held")
        _reset(wa)
        await _until(lambda: f.front.budget.used == 270, "A's partial hold given back, B's kept")
        f.gate.set()
        got = b""
        while got.count(b"ok:") < 2:
            got += await asyncio.wait_for(rb.read(4096), 5)
        assert b"ok:200" in got and b"ok:70" in got
        await _until(lambda: f.front.budget.used == 0, "all given back")
        wb.close()


async def test_close_all_cancels_and_gives_back() -> None:
    """The front closing (``close_all``) while two requests are answered and a third is queued behind one:
    every hold given back, none twice."""
    async with _Front() as f:
        _ra, wa = await f.connect()
        _rb, wb = await f.connect()
        wa.write(_req(b"a" * 10) + _req(b"c" * 7))
        wb.write(_req(b"b" * 5))
        await _until(lambda: sorted(f.entered) == [5, 10], "two answered")
        assert f.front.budget.used == 22
        f.front.close_all()
        await _until(lambda: f.front.budget.used == 0, "all given back")


async def test_pipelined_expect_behind_a_busy_answer_gets_no_interim_100() -> None:
    """An ``Expect: 100-continue`` head pipelined behind a request being answered: no 100 into the middle
    of the earlier answer (nor before it); the body then sent is answered."""
    async with _Front() as f:
        r, w = await f.connect()
        w.write(
            _req(b"1" * 3)
            + b"POST /a HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n"
        )
        await _until(lambda: f.entered == [3], "first answered")
        f.gate.set()
        got = b""
        while b"ok:3" not in got:
            got += await asyncio.wait_for(r.read(4096), 5)
        w.write(b"2222")
        while b"ok:4" not in got:
            got += await asyncio.wait_for(r.read(4096), 5)
        assert b"100 Continue" not in got, got
        assert got.count(b"HTTP/1.1 200 ") == 2
        await _until(lambda: f.front.budget.used == 0, "all given back")
        w.close()


async def test_a_body_still_arriving_after_a_one_read_head_is_timed_and_given_back() -> None:
    """The body deadline (``body_since``, now armed inside ``_parse_head``'s ``if length:``) for a head that
    came in one read with part of its body (``_parse_first`` buffers the rest): the sweep past
    ``body_timeout_s`` answers 408 and the partial hold is given back. A whole request in one read arms
    nothing left over (the next sweep does not 408 the kept-alive connection). Time injected
    (``FrontServer.sweep(now)``); no other test of the front suite notices the deadline left unarmed."""
    async with _Front() as f:
        f.gate.set()
        r, w = await f.connect()
        w.write(_req(b"w" * 5))
        got = b""
        while b"ok:5" not in got:
            got += await asyncio.wait_for(r.read(4096), 5)
        now = asyncio.get_running_loop().time()
        f.front.sweep(now + f.front.body_timeout_s + 1)  # (nothing pending: kept)
        r2, w2 = await f.connect()
        w2.write(_req(b"s" * 100)[:-60])
        await _until(lambda: f.front.budget.used == 40, "the partial body counted")
        f.front.sweep(now + f.front.body_timeout_s + 1)
        out = b""
        while b"\r\n\r\n" not in out:
            chunk = await asyncio.wait_for(r2.read(4096), 5)
            assert chunk, out
            out += chunk
        assert out.startswith(b"HTTP/1.1 408 "), out[:80]
        await _until(lambda: f.front.budget.used == 0, "the partial hold given back")
        assert f.front.timed_out["body"] == 1
        w.write(_req(b"k" * 2))  # (the first connection was kept)
        while b"ok:2" not in got:
            got += await asyncio.wait_for(r.read(4096), 5)
        w.close()
        w2.close()


async def test_two_chunked_bodies_on_one_connection_each_under_the_cap() -> None:
    """The chunked state (``_ctotal``: what the body's chunks have added up to) is reset per head, in
    ``_parse_head`` (moved by the cut into the one function): two chunked bodies of 60 bytes each under a
    100-byte cap on one keep-alive connection are both answered (not the second a 413 for 120 bytes), each
    in one read (``_parse_first``) and together in one read (``_parse``)."""

    def chunked(body: bytes) -> bytes:
        return (
            b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"%x\r\n" % len(body)
            + body
            + b"\r\n0\r\n\r\n"
        )

    async with _Front(max_body=100) as f:
        f.gate.set()
        r, w = await f.connect()
        got = b""
        for i in range(2):
            w.write(chunked(b"c" * 60))
            while got.count(b"ok:60") < i + 1:
                chunk = await asyncio.wait_for(r.read(4096), 5)
                assert chunk, got
                got += chunk
        w.write(chunked(b"d" * 60) + chunked(b"e" * 60))
        while got.count(b"ok:60") < 4:
            chunk = await asyncio.wait_for(r.read(4096), 5)
            assert chunk, got
            got += chunk
        assert got.count(b"HTTP/1.1 200 ") == 4 and b" 413 " not in got, got
        await _until(lambda: f.front.budget.used == 0, "all given back")
        w.close()
