"""RFC 9112 §6.1: an HTTP/1.0 request with Transfer-Encoding has faulty framing (a 1.0 peer or an
intermediary does not know chunked): refused with 400, and the connection closed, not read as chunked.
(Review s9-gw I1, pre-existing.)"""

from __future__ import annotations

import asyncio

from kvgate.httpfront.server import FrontServer, Request, Response


async def _exchange(raw: bytes) -> tuple[list[bytes], bytes]:
    seen: list[bytes] = []

    async def handler(req: Request) -> Response:
        seen.append(req.body)
        return Response(body=b"ok")

    front = FrontServer({"/a": handler}, handler, max_body=1 << 20)
    server = await asyncio.get_running_loop().create_server(front.protocol, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    out = b""
    try:
        async with asyncio.timeout(5):
            while chunk := await reader.read(65536):  # until the server closes
                out += chunk
    finally:
        writer.close()
        front.close_all()
        server.close()
    return seen, out


async def test_an_http10_request_with_transfer_encoding_is_refused_and_closed() -> None:
    """FAILED before: the body was read as chunked and the request answered 200."""
    raw = b"POST /a HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    seen, out = await _exchange(raw + b"GET /a HTTP/1.0\r\n\r\n")
    assert not seen
    assert out.startswith(b"HTTP/1.1 400 "), out[:60]
    assert out.count(b"HTTP/1.1 ") == 1, out  # closed after the 400: the next request is not read


async def test_an_http11_chunked_request_is_still_read() -> None:
    raw = b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    seen, out = await _exchange(raw + b"3\r\nabc\r\n0\r\n\r\n")
    assert seen == [b"abc"] and out.startswith(b"HTTP/1.1 200 "), out[:60]
