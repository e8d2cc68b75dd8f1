"""A lean HTTP/1.1 GET over one kept-alive connection: the metrics scraper's client.

Why not aiohttp here: a scrape is the same small GET to the same server 10-20 times a second, and
aiohttp's general client (URL objects, header multidicts, request/response objects, tracing hooks,
timers, the connector's pool) costs ~0.2 ms of CPU per request on this machine against ~0.12 ms for
a protocol that writes prebuilt request bytes and reads the answer (``kvgate bench scrape-cpu``:
232 against 148 us per scrape of vLLM's filtered page, parse included). On a
loaded host every wake-up of the gateway's event loop waits for a core (docs/benchmarks/realvllm.md
section 4.3), so background CPU is taken from requests.

What it speaks: ``GET`` with ``Host``, answers framed by ``Content-Length``, ``Transfer-Encoding:
chunked`` or the connection's close; 1xx interim heads skipped; ``Connection: close`` honoured. The
body is capped (``max_bytes``) while it arrives. A kept-alive connection the server closed while idle
(uvicorn does after 5 s) is found when the next request gets no byte back, and that request is sent
once more on a new connection (a GET of a metrics page is safe to repeat). Anything else
(a redirect, a ``Content-Encoding``) is returned to the caller as is: the scraper falls back to
aiohttp for a server that redirects, and fails an encoded page (it never asks for one).
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass

MAX_HEAD_BYTES = 64 << 10


class PageError(Exception):
    """The server's answer could not be read (malformed, too large, connection lost mid-answer)."""


class StaleConnectionError(PageError):
    """The connection closed before any byte of the answer: safe to send the request again."""


@dataclass(slots=True)
class Page:
    status: int
    body: bytes
    headers: dict[str, str]  # lower-cased names; the last value of a repeated header


class _Reader(asyncio.Protocol):
    """Reads one answer at a time; ``expect`` arms it for the next one."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[Page, bool]] | None = None
        self.closed = False
        self._got_any = False
        self._head: tuple[int, dict[str, str]] | None = None
        self._chunks: list[bytes] = []
        self._body_len = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport subclass

    def expect(self) -> asyncio.Future[tuple[Page, bool]]:
        self.buf.clear()
        self._got_any = False
        self._head = None
        self._chunks = []
        self._body_len = 0
        self.waiter = asyncio.get_running_loop().create_future()
        return self.waiter

    def data_received(self, data: bytes) -> None:
        self._got_any = True
        if self.waiter is None or self.waiter.done():
            # Bytes after the answer was complete (or before a request): the stream is out of step.
            self._fail(PageError("unexpected bytes from the server"))
            return
        self.buf += data
        try:
            self._advance(eof=False)
        except PageError as e:
            self._fail(e)

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost finishes the answer

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        w = self.waiter
        if w is None or w.done():
            return
        if not self._got_any:
            w.set_exception(StaleConnectionError("connection closed before the answer"))
            return
        try:
            self._advance(eof=True)
        except PageError as e:
            w.set_exception(e)
            return
        if not w.done():
            w.set_exception(PageError("connection closed mid-answer"))

    def _fail(self, e: PageError) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(e)
        if self.transport is not None:
            self.transport.close()

    def _advance(self, eof: bool) -> None:
        """Parse as far as the buffer allows; resolve the waiter when the answer is complete."""
        while self._head is None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEAD_BYTES:
                    raise PageError("response head too large")
                return
            status, headers = _parse_head(bytes(self.buf[:end]))
            del self.buf[: end + 4]
            if 100 <= status < 200:
                continue  # an interim head: the real one follows
            self._head = (status, headers)
        status, headers = self._head
        keep = headers.get("connection", "").lower() != "close"
        if status in (204, 304):
            return self._done(b"", keep)
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return self._chunked(keep)
        length = headers.get("content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                raise PageError(f"bad Content-Length {length!r}") from None
            if n < 0:
                raise PageError(f"bad Content-Length {length!r}")
            if n > self.max_bytes:
                raise PageError(f"body of {n} bytes over {self.max_bytes}")
            if len(self.buf) >= n:
                body = bytes(self.buf[:n])
                del self.buf[:n]
                return self._done(body, keep and not self.buf)
            return None
        # Neither: the body runs to the connection's close.
        if len(self.buf) > self.max_bytes:
            raise PageError(f"body over {self.max_bytes} bytes")
        if eof:
            return self._done(bytes(self.buf), False)
        return None

    def _chunked(self, keep: bool) -> None:
        buf = self.buf
        while True:
            line_end = buf.find(b"\r\n")
            if line_end < 0:
                if len(buf) > 1024:
                    raise PageError("chunk size line too long")
                return
            size_text = bytes(buf[:line_end]).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise PageError(f"bad chunk size {size_text!r}") from None
            if size < 0:
                raise PageError(f"bad chunk size {size_text!r}")
            if size == 0:
                # Trailers, if any, then an empty line.
                trailer_end = buf.find(b"\r\n\r\n", line_end)
                if trailer_end == line_end:  # no trailers: "0\r\n\r\n"
                    del buf[: line_end + 4]
                elif trailer_end < 0:
                    return
                else:
                    del buf[: trailer_end + 4]
                return self._done(b"".join(self._chunks), keep and not buf)
            if len(buf) < line_end + 2 + size + 2:
                if self._body_len + size > self.max_bytes:
                    raise PageError(f"body over {self.max_bytes} bytes")
                return
            start = line_end + 2
            if buf[start + size : start + size + 2] != b"\r\n":
                raise PageError("chunk not followed by CRLF")
            self._body_len += size
            if self._body_len > self.max_bytes:
                raise PageError(f"body over {self.max_bytes} bytes")
            self._chunks.append(bytes(buf[start : start + size]))
            del buf[: start + size + 2]

    def _done(self, body: bytes, keep: bool) -> None:
        assert self._head is not None and self.waiter is not None
        status, headers = self._head
        self.waiter.set_result((Page(status, body, headers), keep))


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
        raise PageError(f"bad status line {lines[0][:80]!r}")
    try:
        status = int(parts[1])
    except ValueError:
        raise PageError(f"bad status line {lines[0][:80]!r}") from None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise PageError(f"bad header line {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    return status, headers


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"address {address!r} is not host:port")
    return host.strip("[]"), int(port)


class PageClient:
    """GETs to one server over one kept-alive connection, one request at a time (a lock orders
    concurrent callers). Not thread-safe; lives on one event loop."""

    def __init__(self, address: str, *, tls: ssl.SSLContext | None = None, max_bytes: int = 4 << 20) -> None:
        self.address = address
        self.host, self.port = split_address(address)
        self.tls = tls
        self.max_bytes = max_bytes
        self._reader: _Reader | None = None
        self._lock = asyncio.Lock()
        self.connects = 0  # connections opened (tests, bench)

    def request_bytes(self, target: str) -> bytes:
        return f"GET {target} HTTP/1.1\r\nHost: {self.address}\r\nAccept: */*\r\n\r\n".encode("latin-1")

    async def _connect(self) -> _Reader:
        loop = asyncio.get_running_loop()
        transport, reader = await loop.create_connection(
            lambda: _Reader(self.max_bytes),
            self.host,
            self.port,
            ssl=self.tls,
            server_hostname=self.host if self.tls is not None else None,
        )
        reader.transport = transport
        self.connects += 1
        return reader

    async def get(self, request: bytes) -> Page:
        """Send ``request`` (from ``request_bytes``) and read the answer. The caller bounds the time
        (a cancelled or failed request closes the connection: a late answer would be read as the next
        one's)."""
        async with self._lock:
            for attempt in (0, 1):
                reused = self._reader is not None and not self._reader.closed
                if not reused:
                    self._reader = await self._connect()
                reader = self._reader
                assert reader is not None and reader.transport is not None
                waiter = reader.expect()
                try:
                    reader.transport.write(request)
                    page, keep = await waiter
                except StaleConnectionError:
                    self._drop()
                    if reused and attempt == 0:
                        continue  # the server had closed the idle connection: once more, fresh
                    raise
                except BaseException:
                    self._drop()
                    raise
                if not keep:
                    self._drop()
                return page
            raise AssertionError("unreachable")

    def _drop(self) -> None:
        if self._reader is not None:
            if self._reader.transport is not None:
                self._reader.transport.close()
            self._reader = None

    def close(self) -> None:
        self._drop()
