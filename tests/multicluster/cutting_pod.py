"""A raw model server on 127.0.0.1:0 for the hub's lost-answer tests (fail32): it reads each request, writes
one canned answer (a head, then part of a body) and closes, so the answer is lost before its end."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

# (head, body): a JSON body short of its Content-Length, then a clean close
JSON_CUT = (
    b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\ncontent-length: 400\r\n\r\n",
    b'{"id": "cmpl-cut", "object": "text_completion", "choices": [{"text": "half',
)
# an event stream framed by the close: a comment (no progress), then the close before any data event
SSE_CUT = (b"HTTP/1.1 %d X\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n", b": ping\n\n")


@asynccontextmanager
async def cutting_pod(
    answer: tuple[bytes, bytes], status: int = 200, pause_s: float = 0.0
) -> AsyncIterator[tuple[str, list[int]]]:
    """Yields (address, hits): every request is answered ``answer`` (its head with ``status``), then, after
    ``pause_s`` (the reader has had the bytes: aiohttp raises a cut before the bytes it buffered), the
    connection closes."""
    head, body = answer
    hits: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            got = await reader.readuntil(b"\r\n\r\n")
            length = None
            for line in got.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if length is not None:
                await reader.readexactly(length)
            else:  # (chunked)
                await reader.readuntil(b"0\r\n\r\n")
            hits.append(1)
            writer.write(head % status + body)
            await writer.drain()
            if pause_s:
                await asyncio.sleep(pause_s)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}", hits
    finally:
        server.close()
        await server.wait_closed()
