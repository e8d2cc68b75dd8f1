"""A model server (or cluster gateway) that writes its answer's bytes itself: the framings and heads no
HTTP library writes on purpose (a body framed by the close, one short of its Content-Length, a gzip body
with a JSON content type, JSON orjson refuses).

``raw_upstream(answer)`` listens on 127.0.0.1:0 (the port read back, never picked beforehand), reads each
request whole (its head, then a Content-Length body or a chunked one), writes ``answer`` (head and body),
and closes: the close ends the body when the head gives no length. It yields its address and the list of
requests answered (one entry each). ``lines_upstream`` keeps its connections and writes header lines as
given (repeated names, bytes past ASCII); ``header_values`` reads a header's values back from a head;
``loopback(serve)`` is the server under both, for a test's own connection handler."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field


@dataclass
class RawUpstream:
    address: str  # "127.0.0.1:PORT"
    hits: list[int] = field(default_factory=list)  # one entry per request answered


async def read_request(reader: asyncio.StreamReader) -> None:
    """One request read whole: its head, then a Content-Length body or a chunked one."""
    head = await reader.readuntil(b"\r\n\r\n")
    for line in head.lower().split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name == b"content-length":
            await reader.readexactly(int(value))
            return
        if name == b"transfer-encoding" and b"chunked" in value:
            await reader.readuntil(b"0\r\n\r\n")  # (the bodies sent here hold no such bytes)
            return


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def loopback(serve: Handler) -> AsyncIterator[str]:
    """``serve`` each connection on 127.0.0.1:0 (the port read back); a client that leaves mid-way ends it
    quietly, and the connection is closed after it. Yields the address; the server closed at the end."""

    async def guarded(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await serve(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(guarded, "127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        await server.wait_closed()


@asynccontextmanager
async def raw_upstream(answer: bytes) -> AsyncIterator[RawUpstream]:
    """127.0.0.1:0: reads one request per connection, writes ``answer`` (head + body), closes."""
    up = RawUpstream("")

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        up.hits.append(1)
        writer.write(answer)
        await writer.drain()

    async with loopback(serve) as up.address:
        yield up


@asynccontextmanager
async def lines_upstream(extra: bytes, body: bytes, ctype: bytes = b"application/json") -> AsyncIterator[str]:
    """127.0.0.1:0: answers every request of a connection (kept alive) 200 with ``extra`` header lines (each
    ending in CRLF, written as given: repeated names, bytes past ASCII) and ``body``; yields its address."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\n%bContent-Length: %d\r\n\r\n%b"
                         % (ctype, extra, len(body), body))  # fmt: skip
            await writer.drain()

    async with loopback(serve) as address:
        yield address


def header_values(head: bytes, name: bytes) -> list[bytes]:
    """Each value of the header ``name`` (lower case) in an answer head, in order, its bytes as sent."""
    return [
        line.split(b":", 1)[1].strip()
        for line in head.split(b"\r\n")[1:]
        if line.split(b":", 1)[0].lower() == name
    ]
