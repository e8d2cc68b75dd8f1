"""A lean pooled HTTP/1.1 client for the upstream leg (gateway -> model server).

Why not aiohttp's client: per request it builds request/response objects, cookie and tracing state
and several futures; on this path that was the larger part of the gateway's CPU per request. Here a
request is one ``transport.write`` of pre-built bytes on a kept-alive connection, and the response is
read by llhttp (``httptools``, the parser under uvicorn; the metrics scraper's ``pageclient`` uses it
too) as it arrives in ``data_received``: status line and headers, then a Content-Length, chunked or
read-until-close body, with RFC 9112's framing rules (two Content-Lengths, Content-Length with
Transfer-Encoding, a bad chunk size or a missing CRLF after chunk data, a bare LF, obs-fold: a clear
``malformed response`` error, never a wait for bytes that will not come).

Limits: the head at ``_MAX_HEAD`` bytes (received before it is complete, interim 1xx heads
included, and its header lines as llhttp hands them) and ``_MAX_HEADERS`` lines; everything that is
not body (head, chunk-size lines and extensions, trailers: what httptools may buffer is a header or
trailer line being read) at ``2 * _MAX_HEAD`` plus ``_CHUNK_LINE`` per chunk, and at ``2 * _MAX_HEAD``
received since the last chunk-size line (give or take one read; so one trailer line or chunk extension
cannot spend what the chunks before it earned).
Memory is bounded: reading pauses when more than ``_HIGH_WATER`` bytes wait for the consumer, and idle
connections per endpoint are capped.

Connections do not outlive their use (review s28-qa Q2: with endpoint churn the fds grew without end):
an endpoint that left every pool has its idle connections closed at once and its busy ones when their
exchange ends, as do ones opened to it until a pool adds it back (``retire``/``restore``, the proxy's
store listener); an idle connection unused for
``IDLE_MAX_AGE_S`` is closed (swept every quarter of it); and TCP keepalive (``KEEPALIVE``) ends one to
a host that vanished without a FIN (a node gone), which the server's own idle timeout never would.

When a connection is reused: the response was read to its end, it was HTTP/1.1 without
``Connection: close`` (in its head or, as llhttp reads it, its trailers; an HTTP/1.0 answer is never
reused, with or without ``keep-alive``), nothing arrived past its end, and no error; reading resumes
if it was paused (a response released unread). Bytes past a complete response drop the connection but
never fail that response. Bytes that arrive on an idle pooled connection (nobody asked)
drop it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import httptools

# (the exceptions: a module of their own, interpreted, as mypyc cannot compile an ``OSError`` subclass and
# this one is in the optional compiled build; importable from here as before)
from kvgate.gateway.upstream_errors import DeadlinePassed as DeadlinePassed
from kvgate.gateway.upstream_errors import ReadTimeout as ReadTimeout
from kvgate.gateway.upstream_errors import StaleConnection as StaleConnection
from kvgate.gateway.upstream_errors import TruncatedBody as TruncatedBody
from kvgate.gateway.upstream_errors import UpstreamError as UpstreamError
from kvgate.gateway.upstream_errors import UpstreamTimeout as UpstreamTimeout
from kvgate.sockopts import tcp_keepalive

_HIGH_WATER = 1 << 20
_MAX_HEAD = 64 * 1024
_MAX_HEADERS = 100
_CHUNK_LINE = 1024  # allowance per chunk for its size line (extensions included) and CRLFs
_MAX_IDLE_PER_ENDPOINT = 512
# An idle connection is closed after this long unused (Envoy's upstream idle_timeout defaults to 1 h; a
# model server's own keep-alive timeout is usually far shorter: uvicorn's, vLLM's, 5 s).
IDLE_MAX_AGE_S = 300.0
# TCP keepalive on upstream connections (idle s, interval s, probes): a peer gone without a FIN is seen
# within ~2 min, idle or mid-exchange (the peer's kernel answers probes while its server computes); with
# TCP_USER_TIMEOUT at the same 2 min, also when the request written to it is never acknowledged.
KEEPALIVE = (60, 10, 6)
# The idle connections are swept this many times per ``IDLE_MAX_AGE_S``.
_SWEEPS_PER_AGE = 4
# The most addresses remembered as retired (``UpstreamPool.retire``): past it the oldest is forgotten.
_MAX_RETIRED = 4096


# Content-Type values as sent -> their media types: servers send the same few values on every response.
# Only short values are kept (an upstream value may be nearly 64 KiB): at most 256 x 128 characters.
_MEDIA_TYPES: dict[str, str] = {}
_MEDIA_TYPES_MAX = 256
_MEDIA_TYPE_KEY_MAX = 128

# Fields read as one value, of which the last line of a repeated one counts (any other repeated field is
# a list: its lines joined; rev-e32 F1).
_LAST_WINS = frozenset(("content-length", "content-type", "retry-after"))

# Header names as sent -> lower-case str: servers send the same few names on every response (one lookup
# where a decode and a lower were). Bounded as ``_MEDIA_TYPES``: at most 256 names of up to 64 bytes.
_NAMES: dict[bytes, str] = {}
_NAMES_MAX = 256
_NAME_KEY_MAX = 64


class _Refused(Exception):
    """Raised inside an httptools callback: a response this client does not accept (the message)."""


@dataclass(slots=True)
class ResponseHead:
    status: int
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def content_type(self) -> str:
        """The media type, lower-case, without parameters."""
        raw = self.headers.get("content-type", "application/octet-stream")
        media = _MEDIA_TYPES.get(raw)
        if media is None:
            media = raw.split(";", 1)[0].strip().lower()
            if len(raw) <= _MEDIA_TYPE_KEY_MAX and len(_MEDIA_TYPES) < _MEDIA_TYPES_MAX:
                _MEDIA_TYPES[raw] = media
        return media


class _Conn:
    """One upstream connection, one exchange at a time; llhttp keeps the framing across responses.

    An ``asyncio.Protocol`` by its methods, not by its base: compiled (``make compiled``), a class with an
    interpreted base gets ``__dict__`` and ``__weakref__`` slots that mypyc's deallocator does not clear
    (mypyc/mypyc#1102): a weak reference to a freed connection dangled (a segfault, session 33)."""

    # Set on connect. Cached: asyncio.get_running_loop() costs a getpid() system call on Python 3.11.
    loop: asyncio.AbstractEventLoop

    def __init__(self, pool: UpstreamPool, address: str) -> None:
        self.pool = pool
        self.address = address
        # A request was written on it (not reset per exchange): only such a connection's failure before
        # any answer byte is taken for the keep-alive race. One opened ahead (``warm``) has carried
        # nothing; a server that closes it after reading its first request crashed (qa24 F2).
        self.used = False
        self.idle_at = 0  # the pool's sweep count when it was last put idle (``UpstreamPool._sweep_idle``)
        self.transport: asyncio.Transport | None = None
        self.body: collections.deque[bytes] = collections.deque()
        self.waiter: asyncio.Future[None] | None = None
        self.paused = False
        self.closed = False
        # The read deadline (event-loop time) while a read waits, and the one timer that enforces it:
        # armed once and moved on lazily (see ``_wait``), not a timer per read.
        self._due: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        # (the parser holds this connection's bound callbacks: a cycle, broken in connection_lost)
        self._parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self.reset()

    def reset(self) -> None:
        """Ready for the next exchange (the parser carries over: it is at a message boundary)."""
        self.head: ResponseHead | None = None
        self.body.clear()
        self.buffered = 0
        if self.paused and self.transport is not None:
            # Paused with a complete response waiting (released unread): nothing waits now, and the
            # next response, or a close while idle, must be seen.
            self.paused = False
            self.transport.resume_reading()
        self.done = False  # whole response received
        self.keep_alive = True
        self.error: BaseException | None = None
        self.busy = False  # a request was sent and its response is not complete: bytes are expected
        self.got_any = False  # a byte of this exchange's response arrived (no transparent resend then)
        self.extra = False  # bytes past the response's end: the stream is out of step
        self._headers: dict[str, str] = {}
        self._nheaders = 0
        self._head_bytes = 0
        self._until_close = False
        self._wire = 0  # bytes of this response on the wire
        self._body_len = 0
        self._chunks = 0
        # Bytes not body when the last chunk's size line was read (as counted at the end of that read:
        # the body after it in that read makes it larger, by one read at most).
        self._nonbody_mark = 0

    # --- asyncio.Protocol -------------------------------------------------------------------
    def pause_writing(self) -> None:
        pass  # (as ``asyncio.BaseProtocol``'s: a request is one write, nothing more to hold back)

    def resume_writing(self) -> None:
        pass

    def eof_received(self) -> bool | None:
        return None  # (as ``asyncio.Protocol``'s: the transport closes itself; connection_lost follows)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.loop = asyncio.get_running_loop()
        _keepalive(transport.get_extra_info("socket"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.done and self.error is None:
            if self._until_close and self.head is not None and exc is None:
                # A body framed by the close ends on a clean close only (a reset cut it short).
                self.done = True
                self.keep_alive = False
            else:
                self.error = UpstreamError(f"{self.address}: connection closed" + (f": {exc}" if exc else ""))
        self.pool._forget(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        # Break the cycle so a closed connection (its unread body, head, error) is freed at once, not at
        # the cyclic collector's next full pass. (connection_lost never runs inside feed_data.)
        self._parser = None
        self._wake()

    def data_received(self, data: bytes) -> None:
        # (the error read into a local: a test of ``self.error`` would hold it None for mypy below, after
        # feed_data's callbacks may set it, and mypyc compiles that read as a None: session 30's TypeError)
        error = self.error
        if not self.busy or self.done or error is not None:
            # Nobody asked (an idle pooled connection), or past a complete / failed response.
            self.extra = True
            self.keep_alive = False
            if not self.busy:
                self.closed = True  # at once: never handed out before connection_lost runs
                self.pool._forget(self)
                if self.transport is not None:
                    self.transport.abort()
            return
        parser = self._parser
        if parser is None:  # (closed)
            return
        self.got_any = True
        self._wire += len(data)
        try:
            parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as e:
            if self.done:
                # Bytes past a complete response (refused by llhttp, by a callback, or a 101 head):
                # the response is delivered, the connection never reused.
                self.extra = True
                self.keep_alive = False
            elif isinstance(e, httptools.HttpParserUpgrade):
                self._fail("malformed response: protocol upgrade (101) that was not asked for")
            elif isinstance(e, httptools.HttpParserCallbackError):
                cause = e.__context__
                self._fail(
                    f"malformed response: {cause}"
                    if isinstance(cause, _Refused)
                    else f"bad response: {cause!r}"
                )
            else:
                self._fail(f"malformed response: {e}")
        if self.error is None and not self.done:
            if self.head is None:
                if self._wire > _MAX_HEAD:
                    self._fail("malformed response: response head too large")
            elif (nonbody := self._wire - self._body_len) > 2 * _MAX_HEAD and (
                nonbody > 2 * _MAX_HEAD + _CHUNK_LINE * self._chunks
                # Since the last chunk's size line: one chunk line or the trailers (what httptools
                # holds) may not spend the allowance the chunks before them earned.
                or nonbody - self._nonbody_mark > 2 * _MAX_HEAD
            ):
                self._fail("malformed response: chunk lines or trailers too large")
        if self.buffered > _HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        w = self.waiter  # (``_wake`` inlined: once per read, at least once per exchange)
        if w is not None and not w.done():
            w.set_result(None)

    def _fail(self, why: str) -> None:
        self.error = UpstreamError(f"{self.address}: {why}")
        self.keep_alive = False
        if self.transport is not None:
            self.transport.abort()

    # --- httptools callbacks (a raise fails feed_data with HttpParserCallbackError) ------------
    def on_message_begin(self) -> None:
        if self.done:
            self.extra = True  # a second response to one request

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.done:
            return  # a second response (``extra``): not counted against this one's limits
        self._nheaders = n = self._nheaders + 1
        self._head_bytes = size = self._head_bytes + len(name) + len(value) + 4
        if n > _MAX_HEADERS or size > _MAX_HEAD:
            if n > _MAX_HEADERS:
                raise _Refused(f"more than {_MAX_HEADERS} header lines")
            raise _Refused("response head too large")
        if self.head is None:  # (after it: trailers, read and dropped)
            key = _NAMES.get(name)
            if key is None:
                key = name.decode("latin-1").lower()
                if len(name) <= _NAME_KEY_MAX and len(_NAMES) < _NAMES_MAX:
                    _NAMES[name] = key
            text = value.decode("latin-1").strip()
            headers = self._headers
            if key in headers and key not in _LAST_WINS:
                # A repeated list field is its lines joined (RFC 9110 5.3; all codings count, llhttp reads
                # the last); ``Set-Cookie`` cannot be (RFC 6265 3): its lines are kept apart by a newline,
                # which no parsed value holds (``stream.pass_upstream_headers`` writes one line each).
                text = headers[key] + ("\n" if key == "set-cookie" else ", ") + text
            headers[key] = text

    def on_headers_complete(self) -> None:
        if self.done:
            return  # a second response (``extra``)
        p = self._parser
        assert p is not None  # (a callback runs inside feed_data)
        status = p.get_status_code()
        if status < 100:  # (llhttp reads it as a final response: never taken for an interim head)
            raise _Refused(f"status {status:03d}")
        if status < 200:
            self._headers = {}  # an interim head (100 Continue): the real one follows
            return
        headers = self._headers
        te = headers.get("transfer-encoding")
        if te is not None and te.lower() != "chunked":
            raise _Refused(f"Transfer-Encoding {te!r} (only chunked is read)")
        if not p.should_keep_alive() or ("connection" in headers and p.get_http_version() != "1.1"):
            # Connection: close, HTTP/1.0 (with or without keep-alive: llhttp keeps an HTTP/1.0
            # answer alive only if it says so), or a body framed by the close.
            self.keep_alive = False
        self._until_close = te is None and "content-length" not in headers and status not in (204, 304)
        self.head = ResponseHead(status, headers)

    def on_chunk_header(self) -> None:
        self._chunks += 1
        self._nonbody_mark = self._wire - self._body_len

    def on_body(self, body: bytes) -> None:
        if self.done:
            return  # a second response (``extra``)
        self.body.append(body)
        n = len(body)
        self.buffered += n
        self._body_len += n

    def on_message_complete(self) -> None:
        if self.head is None or self.done:
            return  # the end of an interim head, or of a second response (``extra``)
        self.done = True
        p = self._parser
        if p is not None and not p.should_keep_alive():
            # (llhttp also reads ``Connection: close`` in trailers: it will refuse the next response)
            self.keep_alive = False

    # --- consumer side ------------------------------------------------------------------------
    def _wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def _wait(self, due: float | None) -> None:
        """Until data, an error or the close; ``UpstreamTimeout`` at ``due`` (event-loop time; None:
        no limit). The wait for a body's read; the head's is the same, inlined (``UpstreamPool.request``:
        one coroutine fewer per request)."""
        waiter = self._arm(due)
        try:
            await waiter
        finally:
            self.waiter = None
            self._due = None
        if isinstance(self.error, UpstreamTimeout):
            raise self.error

    def _arm(self, due: float | None) -> asyncio.Future[None]:
        """The future a read waits on (``waiter``: woken by data, an error or the close), and its timer
        at ``due``. The waiter clears ``waiter`` and ``_due`` once woken or cancelled (``_wait``)."""
        self.waiter = waiter = self.loop.create_future()
        if due is not None:
            self._due = due
            # One timer per connection: left armed when a read ends, it fires at the earlier read's
            # deadline and moves itself on to the current one (``_on_timer``). A timer armed and
            # cancelled per read (a libuv timer and its close each time) cost more than the read.
            if self._timer is None or self._timer_at > due:
                if self._timer is not None:
                    self._timer.cancel()
                self._timer_at = due
                self._timer = self.loop.call_at(due, self._on_timer)
        return waiter

    def _on_timer(self) -> None:
        self._timer = None
        due = self._due
        if due is None or self.closed:
            return  # no read waits (the connection is idle or closed): nothing to time
        now = self.loop.time()
        if now < due:  # a later read's deadline (or an early fire): on to it
            # At least 1 ms: uvloop rounds a delay to whole ms and fires up to 0.5 ms early; a 0 ms
            # re-arm would spin until its clock ticks over. So at most 1 ms late, never early.
            self._timer_at = due
            self._timer = self.loop.call_later(max(due - now, 0.001), self._on_timer)
            return
        self._timeout()

    def _timeout(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.error = ReadTimeout(f"{self.address}: no data within the idle timeout")
            self.keep_alive = False
            self.waiter.set_result(None)


def _keepalive(sock: socket.socket | None) -> None:
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    with contextlib.suppress(OSError):  # (best effort: the connection serves without it)
        tcp_keepalive(sock, *KEEPALIVE)


def _due(conn: _Conn, idle: float | None, deadline: float | None) -> float | None:
    """When a read that starts now times out (event-loop time): after ``idle`` seconds without data, and
    at ``deadline`` at the latest; None: never."""
    if idle is None:
        return deadline
    due = conn.loop.time() + idle
    return due if deadline is None or due < deadline else deadline


class UpstreamResponse:
    """One response being read from a pooled connection; ``release()`` it exactly once."""

    __slots__ = ("_conn", "_deadline", "_idle", "_released", "content_type", "head", "status")

    def __init__(
        self, conn: _Conn, head: ResponseHead, idle_timeout: float | None, deadline: float | None
    ) -> None:
        self._conn = conn
        self.head = head
        self.status = head.status  # (an attribute: the proxy reads it several times per request)
        # The media type, lower-case, without parameters (read once per request: an attribute, no call).
        self.content_type = head.content_type
        self._idle = idle_timeout
        self._deadline = deadline
        self._released = False

    @property
    def deadline(self) -> float | None:
        """The exchange's deadline (event-loop time; None: none)."""
        return self._deadline

    @property
    def received(self) -> bool:
        """The whole body arrived (its end seen, no error), whether or not all of it was read."""
        c = self._conn
        return c.done and c.error is None

    async def read_chunk(self) -> bytes:
        """The next piece of the body (de-chunked); b"" at the end; raises ``UpstreamError`` on loss."""
        c = self._conn
        while True:
            if c.body:
                data = b"".join(c.body) if len(c.body) > 1 else c.body[0]
                c.body.clear()
                c.buffered = 0
                if c.paused and c.transport is not None:
                    c.paused = False
                    c.transport.resume_reading()
                return data
            if c.error is not None:
                raise c.error
            if c.done:
                return b""
            await c._wait(_due(c, self._idle, self._deadline))

    @property
    def framed_by_close(self) -> bool:
        """The body has no Content-Length and is not chunked: its end is the connection's clean close,
        which a server that dies mid-body (its process gone, the kernel closing its socket) also sends."""
        return self._conn._until_close

    def read_now(self) -> bytes | None:
        """The whole body if all of it is here already (the usual case), without a coroutine; else
        None (read it by ``read_chunk``: the proxy's ``_hold``, as it comes, within its bounds)."""
        c = self._conn
        if not c.done or c.error is not None:
            return None
        body = c.body
        data = body[0] if len(body) == 1 else b"".join(body)
        body.clear()
        c.buffered = 0
        if c.paused and c.transport is not None:
            c.paused = False
            c.transport.resume_reading()
        return data

    def release(self) -> None:
        """Back to the pool if the response was read to its end on a reusable connection, else close."""
        if self._released:
            return
        self._released = True
        c = self._conn
        if (
            c.done
            and c.keep_alive
            and c.error is None
            and not c.closed
            and not c.extra
            # An answer that came before the request was all written (an early 413): the rest of
            # the request would go ahead of the next one.
            and not (c.transport is not None and c.transport.get_write_buffer_size())
        ):
            c.reset()
            self._conn.pool._put_idle(c)
        else:
            c.keep_alive = False
            if c.transport is not None:
                c.transport.abort()

    def close(self) -> None:
        """Abort the upstream request (the client went away): the server sees the connection drop."""
        self._conn.keep_alive = False
        self.release()


class UpstreamPool:
    def __init__(
        self,
        connect_timeout: float,
        idle_timeout: float | None,
        max_idle_per_endpoint: int = _MAX_IDLE_PER_ENDPOINT,
        max_idle_age_s: float = IDLE_MAX_AGE_S,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.max_idle = max_idle_per_endpoint
        self.max_idle_age = max_idle_age_s
        self._idle: dict[str, list[_Conn]] = {}  # oldest first (``_take_idle`` takes the newest)
        self._open: set[_Conn] = set()
        # Addresses that left every pool (``retire``) and have not come back (``restore``): a connection to
        # one closes when released, whenever it was opened (one still connecting at the ``retire``, or a
        # request that picked the address before it left). Insertion-ordered, the oldest dropped past
        # ``_MAX_RETIRED`` (a connection to such an address then waits for the sweep).
        self._retired: dict[str, None] = {}
        self._sweep: asyncio.TimerHandle | None = None  # armed while a connection is idle
        self._sweeps = 0  # sweeps run: a release stamps this, not the clock (review s28-rev-c28 F6)

    def _put_idle(self, conn: _Conn) -> None:
        if conn.address in self._retired:  # (its exchange done: nothing takes it again)
            if conn.transport is not None:
                conn.transport.close()
            return
        idle = self._idle.get(conn.address)
        if idle is None:  # (not ``setdefault``: its default list was built and dropped on every release)
            idle = self._idle[conn.address] = []
        if len(idle) >= self.max_idle and conn.transport is not None:
            conn.transport.close()
            return
        conn.idle_at = self._sweeps
        idle.append(conn)
        if self._sweep is None:
            self._sweep = conn.loop.call_later(self.max_idle_age / _SWEEPS_PER_AGE, self._sweep_idle)

    def _sweep_idle(self) -> None:
        """Close the connections idle for ``max_idle_age`` or longer (up to one sweep period more); forget
        addresses left with none."""
        self._sweep = None
        loop = asyncio.get_running_loop()
        self._sweeps += 1
        # One stamped s was put idle at most one period before sweep s + 1 ran (the sweep is armed or is
        # armed then), and the sweeps run a period apart while anything is idle: at sweep
        # s + _SWEEPS_PER_AGE + 1 it has been idle for at least _SWEEPS_PER_AGE periods.
        old = self._sweeps - _SWEEPS_PER_AGE - 1
        for address, idle in list(self._idle.items()):
            n = 0
            while n < len(idle) and idle[n].idle_at <= old:
                n += 1
            stale, idle[:n] = idle[:n], []
            for conn in stale:  # (``_forget``, from connection_lost, finds them gone already)
                if conn.transport is not None:
                    conn.transport.close()
            if not idle:
                del self._idle[address]
        if self._idle:
            self._sweep = loop.call_later(self.max_idle_age / _SWEEPS_PER_AGE, self._sweep_idle)

    def retire(self, address: str) -> None:
        """``address`` left every pool: its idle connections close now, its busy ones (and any opened to it
        from now on) when released (their exchanges finish), until ``restore``."""
        for conn in self._idle.pop(address, ()):
            if conn.transport is not None:
                conn.transport.close()
        self._retired.pop(address, None)
        self._retired[address] = None
        if len(self._retired) > _MAX_RETIRED:
            del self._retired[next(iter(self._retired))]

    def restore(self, address: str) -> None:
        """``address`` is in a pool again: its connections are kept idle again when released."""
        self._retired.pop(address, None)

    def _forget(self, conn: _Conn) -> None:
        self._open.discard(conn)
        idle = self._idle.get(conn.address)
        if idle and conn in idle:
            idle.remove(conn)

    def _take_idle(self, address: str) -> _Conn | None:
        idle = self._idle.get(address)
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None

    async def _acquire(self, address: str, tls: ssl.SSLContext | None = None) -> tuple[_Conn, bool]:
        conn = self._take_idle(address)
        if conn is not None:
            return conn, True
        return await self._connect(address, tls), False

    async def _connect(
        self, address: str, tls: ssl.SSLContext | None, deadline: float | None = None
    ) -> _Conn:
        """A new connection within ``connect_timeout``, and by ``deadline`` (event-loop time) at the
        latest: a connect the deadline ends raises ``DeadlinePassed`` (not the endpoint's fault)."""
        host, _, port = address.rpartition(":")
        loop = asyncio.get_running_loop()
        due = loop.time() + self.connect_timeout
        by_deadline = deadline is not None and deadline < due
        if by_deadline:
            assert deadline is not None
            due = deadline
        try:  # (asyncio.timeout: Python 3.11's wait_for dropped a cancel landing as it connected, gh-86296)
            async with asyncio.timeout_at(due):
                # A DNS name is resolved here, on every new connection (the system resolver's TTL).
                _, proto = await loop.create_connection(
                    cast("Callable[[], asyncio.Protocol]", lambda: _Conn(self, address)),
                    host.strip("[]"),
                    int(port),
                    ssl=tls,
                    server_hostname=host.strip("[]") if tls is not None else None,
                )
        except TimeoutError as late:  # (a name of its own: mypyc types ``e`` by one clause)
            if by_deadline:
                raise DeadlinePassed(f"{address}: the request's deadline passed while connecting") from late
            raise UpstreamTimeout(f"{address}: connect timed out") from late
        except OSError as e:
            raise UpstreamError(f"{address}: connect failed: {e.strerror or e}") from e
        conn = cast(_Conn, proto)
        self._open.add(conn)
        return conn

    async def warm(self, address: str, tls: ssl.SSLContext | None = None) -> bool:
        """Open one kept-alive connection to ``address`` ahead of the first request (start-up), unless one
        is idle already; False if it could not connect (a later request connects as usual)."""
        if any(not c.closed for c in self._idle.get(address, ())):
            return True
        try:
            conn, _ = await self._acquire(address, tls)
        except UpstreamError:
            return False
        self._put_idle(conn)
        return True

    async def request(
        self,
        address: str,
        head: bytes,
        body: bytes,
        deadline: float | None = None,
        tls: ssl.SSLContext | None = None,
        on_sent: Callable[[], None] | None = None,
        head_idle: bool = True,
        resend: bool = True,
        fresh: bool = False,
    ) -> UpstreamResponse:
        """Send ``head`` (request line + headers, ending in CRLF CRLF) and ``body``; wait for the head.

        A request on a connection that carried an earlier request and fails (FIN or RST) before any
        response byte is resent once on a new connection (``resend``; the proxy passes False and gets
        ``StaleConnection`` instead, to resend it as a counted attempt). The case this is for: the
        server closed the connection while idle (its keep-alive timeout) as the request was written, so
        it never read it. But the gateway cannot tell that from a server that read the whole request and
        then crashed before answering (an OOM kill); the resend then runs it again wherever that address
        now answers (a restarted pod behind it, a proxy): a duplicate generation. It is the trade-off a
        proxy makes when it retries on a connection reset (docs/gateway.md "Retries, ejection,
        probing"). A request on a new connection, one opened ahead by ``warm`` included, or one that got
        any byte of an answer, is never resent. ``fresh``: a new connection, not an idle one (which may
        be just as stale).
        ``deadline`` (event-loop time) bounds the whole exchange on top of the idle timeout.
        ``head_idle=False``: the wait for the head is bounded by ``deadline`` only (a non-streamed
        answer's head comes when the whole generation is done); the body's reads by both.
        ``on_sent`` runs once the request is written (timing breakdowns). Nothing is written once
        ``deadline`` has passed (a connect that completed, or was ended, after it): ``DeadlinePassed``,
        the connection kept idle for the next request.
        """
        idle = self.idle_timeout if head_idle else None
        for attempt in range(2):
            # (an idle connection without a coroutine's await: the usual case; the resend: a new one)
            conn = self._take_idle(address) if attempt == 0 and not fresh else None
            reused = conn is not None and conn.used
            if conn is None:
                conn = await self._connect(address, tls, deadline)
                if deadline is not None and asyncio.get_running_loop().time() >= deadline:
                    # Connected after it (the timeout's wake-up came late): the answer would come for
                    # nobody (review s18-fixes-c M1), so nothing is written. (An idle connection is
                    # taken without a wait: no check on the hot path.)
                    self._put_idle(conn)
                    raise DeadlinePassed(f"{address}: the request's deadline passed before it was sent")
            assert conn.transport is not None
            conn.busy = conn.used = True
            conn.transport.write(head + body)
            if on_sent is not None:
                on_sent()
            try:
                while conn.head is None:
                    error = conn.error  # (a local: as ``data_received``'s, ``conn.error`` never held None)
                    if error is not None:
                        raise error
                    # (``conn._wait`` inlined, and ``_due`` without an idle bound: the non-streamed case)
                    waiter = conn._arm(_due(conn, idle, deadline) if idle is not None else deadline)
                    try:
                        await waiter
                    finally:
                        conn.waiter = None
                        conn._due = None
                    error = conn.error
                    if isinstance(error, UpstreamTimeout):
                        raise error
            except UpstreamTimeout:
                if conn.transport is not None:
                    conn.transport.abort()
                raise
            except UpstreamError:
                if reused and attempt == 0 and not conn.got_any:
                    if not resend:
                        why = f"{address}: kept-alive connection closed before an answer"
                        raise StaleConnection(why) from None
                    continue
                raise
            except BaseException:
                # Cancelled while waiting (client gone, shutdown): the connection is mid-exchange
                # and can never be reused.
                if conn.transport is not None:
                    conn.transport.abort()
                raise
            return UpstreamResponse(conn, conn.head, self.idle_timeout, deadline)
        raise UpstreamError(f"{address}: connection closed")  # pragma: no cover (loop always returns)

    def close(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for conn in list(self._open):
            if conn.transport is not None:
                conn.transport.abort()
        self._open.clear()
        self._idle.clear()
