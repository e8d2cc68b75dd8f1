"""Review s18-qa2 M2: an HTTP/1.0 client that asks for ``Connection: keep-alive`` and gets an answer
streamed (a relayed big answer, an event stream; ``kvgate serve --clusters`` relays every answer so) is
told ``Connection: close`` (HTTP/1.0 has no chunked framing), but the front kept the connection open after
the last byte: ``FrontProtocol._run`` read ``keep_alive`` before ``StreamResponse.prepare`` turned it off.
A close-delimited body's client then hung until the idle timeout. Now the connection closes after the
body. Both doors run on this front, so the front's test covers ``kvgate serve`` and ``--clusters``; the
gateway test below is the reviewer's case end to end."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from gateway.conftest import make_config, running_gateway
from gateway.test_big_json_answer import RawServer, answer_body
from kvgate.httpfront.server import FrontServer, Request, StreamResponse

KEEP_ALIVE = [b"connection: keep-alive\r\n", b"Connection: Keep-Alive\r\n"]


async def _read_to_close(reader: asyncio.StreamReader) -> tuple[bytes, bool]:
    """Everything until the server closes, or what came in 5 s of waiting (``closed`` False)."""
    out = b""
    try:
        async with asyncio.timeout(5):
            while chunk := await reader.read(65536):
                out += chunk
    except TimeoutError:
        return out, False
    return out, True


async def _front_exchange(handler: Any, request: bytes) -> tuple[bytes, bool]:
    """``request`` written to a front (``handler`` answers every path) on a loopback port: what came back
    (``_read_to_close``)."""
    front = FrontServer({"/a": handler}, handler, max_body=1 << 20)
    server = await asyncio.get_running_loop().create_server(front.protocol, "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
    try:
        writer.write(request)
        return await _read_to_close(reader)
    finally:
        writer.close()
        front.close_all()
        server.close()


@pytest.mark.parametrize("length", [None, 11])
@pytest.mark.parametrize("connection", KEEP_ALIVE)
async def test_an_http10_keep_alive_stream_is_closed_after_its_body(connection: bytes, length) -> None:
    """FAILED before (all four): the body came whole, the connection stayed open."""

    async def handler(req: Request) -> StreamResponse:
        out = StreamResponse(headers={"Content-Type": "text/plain"}, length=length)
        await out.prepare(req)
        await out.write(b"hello ")
        await out.write(b"world")
        return out

    out, closed = await _front_exchange(handler, b"GET /a HTTP/1.0\r\n%b\r\n" % connection)
    head, _, body = out.partition(b"\r\n\r\n")
    assert body == b"hello world", out
    assert b"connection: close" in head.lower()
    assert closed, f"the head said Connection: close, the connection stayed open 5 s after the body: {out!r}"


async def test_an_http11_keep_alive_stream_stays_open() -> None:
    """The change is HTTP/1.0's only: an HTTP/1.1 stream (chunked) keeps its connection for the next
    request."""

    async def handler(req: Request) -> StreamResponse:
        out = StreamResponse(headers={"Content-Type": "text/plain"})
        await out.prepare(req)
        await out.write(b"hi")
        return out

    first = b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n"
    out, closed = await _front_exchange(
        handler, first + b"GET /a HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    assert out.count(b"HTTP/1.1 200 ") == 2, out
    assert closed


@pytest.mark.parametrize("connection", KEEP_ALIVE)
async def test_an_http10_keep_alive_client_of_a_relayed_answer_sees_its_end(connection: bytes) -> None:
    """kvgate serve: a big answer relayed as it arrives, to an HTTP/1.0 keep-alive client (review's repro)."""
    body = answer_body(300_000)
    s = await RawServer(body, piece=8192).start()
    try:
        async with running_gateway(make_config([s.address])) as gw:
            gw.proxy.whole_max = 100_000  # relayed as it arrives
            raw = orjson.dumps({"model": "m", "prompt": "x"})
            r, w = await asyncio.open_connection("127.0.0.1", gw.port)
            try:
                w.write(
                    b"POST /v1/completions HTTP/1.0\r\ncontent-type: application/json\r\n%b"
                    b"content-length: %d\r\n\r\n%b" % (connection, len(raw), raw)
                )
                out, closed = await _read_to_close(r)
            finally:
                w.close()
    finally:
        await s.stop()
    head, _, got = out.partition(b"\r\n\r\n")
    assert got == body
    assert b"connection: close" in head.lower()
    assert closed, "the whole body came, the connection stayed open"
