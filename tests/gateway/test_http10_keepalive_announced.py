"""Review s19-qa L5: an HTTP/1.0 client that asks for ``Connection: keep-alive`` and whose connection the
front keeps (a whole answer, framed by ``Content-Length``) must be told so: ``Connection: keep-alive`` in
the answer's head (RFC 9112 Appendix C.2.2). Before, the connection was kept but the head said nothing, so
ApacheBench ``-k``, HTTP/1.0 proxies and ``curl --http1.0`` closed after every answer. An answer that closes
the connection (an HTTP/1.0 stream, no keep-alive asked, a refusal) still says ``Connection: close``;
HTTP/1.1 heads are unchanged. Both doors run on ``kvgate.httpfront`` (``--clusters``:
``tests/multicluster/test_http10_keepalive.py``)."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from gateway.conftest import make_config, running_gateway
from kvgate.httpfront.server import FrontServer, Request, Response, StreamResponse, json_error

KEEP_ALIVE = [b"connection: keep-alive\r\n", b"Connection: Keep-Alive\r\n"]


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[bytes, dict[bytes, bytes], bytes]:
    """One request on an open connection and its answer, read by its ``Content-Length`` (so the
    connection stays usable): (status line, lower-case headers, body)."""
    writer.write(request)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head[:-4].split(b"\r\n")
    headers = {
        name.strip().lower(): value.strip().lower()
        for name, _, value in (ln.partition(b":") for ln in lines[1:])
    }
    body = await asyncio.wait_for(reader.readexactly(int(headers.get(b"content-length", b"0"))), 5)
    return lines[0], headers, body


async def _front(handler) -> tuple[FrontServer, asyncio.Server, int]:
    front = FrontServer({"/a": handler}, handler, max_body=1 << 20)
    server = await asyncio.get_running_loop().create_server(front.protocol, "127.0.0.1", 0)
    return front, server, server.sockets[0].getsockname()[1]


async def _whole(req: Request) -> Response:
    if req.path == "/a":
        return Response(text="hello", content_type="text/plain")
    return json_error(404, f"no route {req.path}", code="not_found")


@pytest.mark.parametrize("connection", KEEP_ALIVE)
async def test_an_http10_keep_alive_whole_answer_says_keep_alive(connection: bytes) -> None:
    """FAILED before (both): ``[None, None]``: no ``Connection`` header, the connection kept anyway."""
    front, server, port = await _front(_whole)
    r, w = await asyncio.open_connection("127.0.0.1", port)
    try:
        heads = []
        for path in (b"/a", b"/missing"):  # a 200 and an OpenAI-style JSON error, on one connection
            status, headers, _ = await _exchange(r, w, b"GET %b HTTP/1.0\r\n%b\r\n" % (path, connection))
            heads.append((status, headers.get(b"connection")))
    finally:
        w.close()
        front.close_all()
        server.close()
    assert heads == [(b"HTTP/1.1 200 OK", b"keep-alive"), (b"HTTP/1.1 404 Not Found", b"keep-alive")], heads


async def test_answers_that_close_say_close_and_http11_says_nothing() -> None:
    """The other heads are as before: HTTP/1.0 without keep-alive and an HTTP/1.0 stream (no chunks: its
    body ends at the close) say ``Connection: close``; HTTP/1.1 kept says nothing (persistent is its
    default)."""

    async def handler(req: Request) -> Response | StreamResponse:
        if req.path == "/s":
            out = StreamResponse(headers={"Content-Type": "text/plain"}, length=2)
            await out.prepare(req)
            await out.write(b"hi")
            return out
        return await _whole(req)

    front, server, port = await _front(handler)
    got = []
    try:
        for request in (
            b"GET /a HTTP/1.0\r\n\r\n",
            b"GET /s HTTP/1.0\r\nconnection: keep-alive\r\n\r\n",
            b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n",
        ):
            r, w = await asyncio.open_connection("127.0.0.1", port)
            try:
                _, headers, body = await _exchange(r, w, request)
                got.append((headers.get(b"connection"), body))
            finally:
                w.close()
    finally:
        front.close_all()
        server.close()
    assert got == [(b"close", b"hello"), (b"close", b"hi"), (None, b"hello")], got


async def test_kvgate_serve_says_keep_alive_to_an_http10_keep_alive_client(backends) -> None:
    """The reviewer's case end to end: ``kvgate serve``, one HTTP/1.0 keep-alive connection, a completion
    (200, the upstream's answer) and an unknown model (404), each answered on it with ``Connection:
    keep-alive`` (FAILED before: ``[None, None]``)."""
    (b,) = await backends(1)
    async with running_gateway(make_config([b.address])) as gw:
        r, w = await asyncio.open_connection("127.0.0.1", gw.port)
        try:
            got = []
            for model in ("m", "nope"):
                raw = orjson.dumps({"model": model, "prompt": "hi", "max_tokens": 2})
                status, headers, body = await _exchange(
                    r,
                    w,
                    b"POST /v1/completions HTTP/1.0\r\nconnection: keep-alive\r\ncontent-length: %d\r\n\r\n%b"
                    % (len(raw), raw),
                )
                got.append((status.split(b" ")[1], headers.get(b"connection")))
                assert orjson.loads(body)  # (a whole JSON answer, framed)
        finally:
            w.close()
    assert got == [(b"200", b"keep-alive"), (b"404", b"keep-alive")], got


@pytest.mark.parametrize("value", [b"keep-alive, close", b"close, keep-alive"])
async def test_http10_close_beside_keep_alive_closes(value: bytes) -> None:
    """Review s19-fixes-a L2: ``close`` is a connection option that always wins (RFC 9112 9.6), beside
    ``keep-alive`` too, as the HTTP/1.1 branch reads it. Before: told ``Connection: keep-alive`` and kept."""
    _, server, port = await _front(_whole)
    r, w = await asyncio.open_connection("127.0.0.1", port)
    try:
        w.write(b"GET /a HTTP/1.0\r\nConnection: %b\r\n\r\n" % value)
        head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)
        assert b"connection: keep-alive" not in head.lower(), head
        assert b"connection: close" in head.lower(), head
        assert await asyncio.wait_for(r.read(), 5) == b"hello"  # the body, then closed (kept: a timeout)
    finally:
        w.close()
        server.close()
