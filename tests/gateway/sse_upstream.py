"""Raw asyncio upstreams for the drain, cut and deadline tests (``kvgate serve`` and ``kvgate serve
--clusters``): each reads one HTTP request and writes its answer byte by byte as the test needs (a chunked
event stream, a half event, a late head, a body that stalls), then holds the connection open like a model
server still generating, until the client (the gateway) goes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

# One OpenAI completions event.
EV = b'data: {"id":"c","object":"text_completion","model":"m","choices":[{"index":0,"text":"tok"}]}\n\n'
# A 200 chunked text/event-stream answer's head.
SSE_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"

Answer = Callable[[bytes, asyncio.StreamWriter], Awaitable[None]]


def chunk(data: bytes) -> bytes:
    """``data`` as one chunk of a chunked body."""
    return b"%x\r\n%s\r\n" % (len(data), data)


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """Reads one HTTP request (head, then a body of its content-length) and returns the body."""
    head = await reader.readuntil(b"\r\n\r\n")
    n = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            n = int(line.split(b":", 1)[1])
    return await reader.readexactly(n)


async def serve_raw(answer: Answer) -> asyncio.Server:
    """A server on a loopback port: on each connection one request is read, ``answer(body, writer)``
    writes its answer, then the connection is held until the client goes; a connection error or a
    request cut short ends it quietly."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            body = await read_request(reader)
            await answer(body, writer)
            await writer.drain()
            await reader.read()  # (until the gateway aborts the connection)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(serve, "127.0.0.1", 0)


def listen_address(server: asyncio.Server) -> str:
    """``host:port`` of ``server``'s listener."""
    return f"127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def late_stream(late_after_s: float) -> asyncio.Server:
    """Answers every POST with a 200 event stream and one event (``EV``), then holds the stream open; a
    request whose body says ``late`` is answered (head and event) ``late_after_s`` later."""

    async def answer(body: bytes, writer: asyncio.StreamWriter) -> None:
        if b"late" in body:
            await asyncio.sleep(late_after_s)
        writer.write(SSE_HEAD + chunk(EV))

    return await serve_raw(answer)


class Staller:
    """Answers every request with a 200 JSON head of Content-Length ``length`` and the body's first bytes
    (``sent``, fewer than ``length``), then nothing: an engine wedged mid-body, until ``stop`` aborts its
    connections. ``requests``: how many it read."""

    def __init__(self, length: int, sent: bytes) -> None:
        self.head = (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % length
        )
        self.sent = sent
        self.requests = 0
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> str:
        """Listens on a loopback port; its ``host:port``."""
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return listen_address(self.server)

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.writers.append(w)
        try:
            await read_request(r)
            self.requests += 1
            w.write(self.head)
            w.write(self.sent)
            await w.drain()
            await asyncio.sleep(3600)
        except (asyncio.CancelledError, ConnectionError, asyncio.IncompleteReadError):
            pass

    async def stop(self) -> None:
        for w in self.writers:
            w.transport.abort()
        if self.server is not None:
            self.server.close()
