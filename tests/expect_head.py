"""An ``Expect: 100-continue`` request's first answer, read raw (no HTTP library: it would send the body):
what a door answers from the head alone. Both doors answer a method other than GET or HEAD on a read-only
path from the head with the 405 the handler gives the request sent whole (small33 c)."""

from __future__ import annotations

import asyncio

EXPECT = b"%s %s HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 4000000\r\n\r\n"  # (no body)
PLAIN = b"%s %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}"


async def answer(port: int, request: bytes) -> tuple[bytes, bytes]:
    """The first answer's head and (a final answer's) body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        body = await asyncio.wait_for(reader.readexactly(length), 60) if length else b""
        return head, body
    finally:
        writer.close()


async def check_405_from_the_head(port: int, method: bytes, path: bytes) -> None:
    """``method`` on the read-only ``path`` asking for ``100 Continue``: a 405 (``Allow: GET, HEAD``) first,
    with the status line and body of the answer to the same request sent whole."""
    head, body = await answer(port, EXPECT % (method, path))
    assert head.startswith(b"HTTP/1.1 405 "), head
    assert b"Allow: GET, HEAD" in head, head
    plain_head, plain_body = await answer(port, PLAIN % (method, path))
    assert plain_head.split(b"\r\n")[0] == head.split(b"\r\n")[0], plain_head
    assert plain_body == body
