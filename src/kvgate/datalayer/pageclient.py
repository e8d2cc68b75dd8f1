"""A lean HTTP/1.1 GET over one kept-alive connection: the metrics scraper's client.

Why not aiohttp here: a scrape is the same small GET to the same server 10-20 times a second, and
aiohttp's general client (URL objects, header multidicts, request/response objects, tracing hooks,
timers, the connector's pool) costs ~0.25 ms of CPU per request on this machine against ~0.13 ms
for a protocol that writes prebuilt request bytes and reads the answer (``kvgate bench scrape-cpu``:
263 against 134 us per scrape of vLLM's filtered page, parse included, both with the label-set cache;
docs/benchmarks/realvllm.md section 4.4). On a
loaded host every wake-up of the gateway's event loop waits for a core (docs/benchmarks/realvllm.md
section 4.3), so background CPU is taken from requests.

What it speaks: ``GET`` with ``Host``; the answer is read by llhttp (``httptools``, the parser
under uvicorn), which frames it by ``Content-Length``, ``Transfer-Encoding: chunked`` or the
connection's close and refuses what RFC 9112 calls unrecoverable (two Content-Lengths, both CL and
TE, a malformed chunk size or header line). 1xx interim heads are skipped; ``Connection: close`` and
HTTP/1.0 end the connection after the answer. Memory is capped while bytes arrive: the body at
``max_bytes``, and the rest of the answer (heads, chunk lines, trailers) at ``MAX_HEAD_BYTES`` plus
the body so far. A body framed by the close ends only on a clean close (a reset mid-body fails the
answer: a cut page would parse as a valid one). A kept-alive connection the server closed while idle
(uvicorn does after 5 s) is found when the next request gets no byte back, and that request is sent
once more on a new connection (a GET of a metrics page is safe to repeat). Anything else (a
redirect, a ``Content-Encoding``) is returned to the caller as is: the scraper falls back to aiohttp
for a server that redirects, and fails an encoded page (it never asks for one).
"""

from __future__ import annotations

import asyncio
import re
import ssl
from dataclasses import dataclass

import httptools

MAX_HEAD_BYTES = 64 << 10
# A request target or Host value: visible ASCII only (no CR, LF, NUL, space, other controls or
# non-ASCII, which would end the request line or a header early: header injection, request smuggling).
_VISIBLE = re.compile(r"[\x21-\x7e]+")


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
    """Reads one answer at a time with llhttp (httptools); ``expect`` arms it for the next one.

    One parser per connection: llhttp carries the framing from one answer to the next, and any
    framing it refuses (two Content-Lengths, CL with TE, a bad chunk size, a bad header line) fails
    the answer and the connection. It buffers nothing but a header (or trailer) being read, so the
    bound on memory is ours: the answer's bytes that are not body (heads, chunk lines, trailers) may
    not pass ``MAX_HEAD_BYTES`` plus the body read so far, and the body may not pass ``max_bytes``."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[tuple[Page, bool]] | None = None
        self.closed = False
        self._parser = httptools.HttpResponseParser(self)
        self._reset()

    def _reset(self) -> None:
        self._got_any = False
        self._status = 0  # 0 until a final (non-1xx) head is complete
        self._headers: dict[str, str] = {}
        self._chunks: list[bytes] = []
        self._body_len = 0
        self._wire = 0  # every byte of this answer
        self._complete = False
        self._keep = False
        self._extra = False  # bytes past the answer's end: the stream is out of step

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport subclass

    def expect(self) -> asyncio.Future[tuple[Page, bool]]:
        self._reset()
        self.waiter = asyncio.get_running_loop().create_future()
        return self.waiter

    # httptools callbacks (a raise fails feed_data with HttpParserCallbackError)
    def on_message_begin(self) -> None:
        if self._complete:
            self._extra = True
        self._headers = {}

    def on_header(self, name: bytes, value: bytes) -> None:
        # llhttp refuses a repeated Content-Length that differs; for other headers the last wins.
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            return  # an interim head: the real one follows
        self._status = status
        te = self._headers.get("transfer-encoding")
        if te is not None and te.strip().lower() != "chunked":
            raise PageError(f"Transfer-Encoding {te!r} (only chunked is read)")
        n = self._headers.get("content-length")
        if n is not None and int(n) > self.max_bytes:  # llhttp has checked it is digits
            raise PageError(f"body of {n} bytes over {self.max_bytes}")

    def on_body(self, body: bytes) -> None:
        self._body_len += len(body)
        if self._body_len > self.max_bytes:
            raise PageError(f"body over {self.max_bytes} bytes")
        self._chunks.append(body)

    def on_message_complete(self) -> None:
        if self._status == 0 or self._complete:
            return  # the end of an interim head, or of bytes past the answer
        self._complete = True
        self._keep = self._parser.should_keep_alive()  # Connection: close, HTTP/1.0 rules

    def data_received(self, data: bytes) -> None:
        self._got_any = True
        if self.waiter is None or self.waiter.done():
            # Bytes after the answer was complete (or before a request): the stream is out of step.
            self._fail(PageError("unexpected bytes from the server"))
            return
        self._wire += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as e:
            cause = e.__context__
            self._fail(cause if isinstance(cause, PageError) else PageError(f"bad answer: {cause!r}"))
            return
        except httptools.HttpParserError as e:  # incl. HttpParserUpgrade: never asked for
            if not self._complete:
                self._fail(PageError(f"malformed answer: {e}"))
                return
            self._extra = True  # garbage after a complete answer: deliver it, drop the connection
        if self._complete:
            self._done()
        elif self._wire - self._body_len > MAX_HEAD_BYTES + self._body_len:
            self._fail(PageError("answer's head, chunk lines or trailers too large"))

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost finishes the answer

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        w = self.waiter
        if w is None or w.done():
            return
        if not self._got_any:
            w.set_exception(StaleConnectionError("connection closed before the answer"))
        elif exc is None and self._status and self._runs_to_close():
            # httptools 0.9 has no finish(): a body framed by the close ends here, on a clean close
            # only (a reset mid-body is a truncated page, not a short one).
            self._complete = True
            self._keep = False
            self._done()
        else:
            w.set_exception(PageError(f"connection closed mid-answer ({exc!r})"))

    def _runs_to_close(self) -> bool:
        return "transfer-encoding" not in self._headers and "content-length" not in self._headers

    def _fail(self, e: PageError) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(e)
        if self.transport is not None:
            self.transport.close()

    def _done(self) -> None:
        assert self.waiter is not None
        if self.waiter.done():
            return
        page = Page(self._status, b"".join(self._chunks), self._headers)
        self.waiter.set_result((page, self._keep and not self._extra))


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
        """The GET of ``target`` (origin-form, percent-encoded); ``ValueError`` for a target (or an
        address) with a CR, LF, NUL, space, other control or non-ASCII character: such bytes would
        split the request line or add headers of the caller's choosing."""
        for what, text in (("request target", target), ("address", self.address)):
            if _VISIBLE.fullmatch(text) is None:
                raise ValueError(
                    f"{what} {text!r} has a CR, LF, NUL, space, control or non-ASCII character "
                    "(refused: it would inject into the request)"
                )
        return f"GET {target} HTTP/1.1\r\nHost: {self.address}\r\nAccept: */*\r\n\r\n".encode("ascii")

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
