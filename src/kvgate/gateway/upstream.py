"""A lean pooled HTTP/1.1 client for the upstream leg (gateway -> model server).

Why not aiohttp's client: per request it builds request/response objects, cookie and tracing state
and several futures; on this path that was the larger part of the gateway's CPU per request. Here a
request is one ``transport.write`` of pre-built bytes on a kept-alive connection, and the response is
parsed incrementally in ``data_received`` (status line, a few headers, then Content-Length, chunked or
read-until-close bodies). Memory is bounded: reading pauses when more than ``_HIGH_WATER`` bytes wait
for the consumer, and idle connections per endpoint are capped.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

_HIGH_WATER = 1 << 20
_MAX_HEAD = 64 * 1024
_MAX_IDLE_PER_ENDPOINT = 512


class UpstreamError(OSError):
    """Connection lost, malformed response, or timeout on the upstream leg."""


class UpstreamTimeout(UpstreamError, TimeoutError):
    pass


# body modes
_LENGTH, _CHUNKED, _UNTIL_CLOSE, _NONE = range(4)
# chunked sub-states
_SIZE, _DATA, _DATA_CRLF, _TRAILER = range(4)


@dataclass(slots=True)
class ResponseHead:
    status: int
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "application/octet-stream").split(";", 1)[0].strip().lower()


class _Conn(asyncio.Protocol):
    # Set on connect. Cached: asyncio.get_running_loop() costs a getpid() system call on Python 3.11.
    loop: asyncio.AbstractEventLoop

    def __init__(self, pool: UpstreamPool, address: str) -> None:
        self.pool = pool
        self.address = address
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.head: ResponseHead | None = None
        self.mode = _NONE
        self.remaining = 0
        self.chunk_state = _SIZE
        self.body: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.done = False  # whole response received
        self.keep_alive = True
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.paused = False
        self.closed = False

    # --- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.loop = asyncio.get_running_loop()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.mode == _UNTIL_CLOSE and self.head is not None and not self.done:
            self.done = True
        elif not self.done and self.error is None:
            self.error = UpstreamError(f"{self.address}: connection closed" + (f": {exc}" if exc else ""))
        self.pool._forget(self)
        self._wake()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        try:
            if self.head is None:
                self._parse_head()
            if self.head is not None:
                self._parse_body()
        except (ValueError, IndexError) as e:
            self.error = UpstreamError(f"{self.address}: malformed response: {e}")
            self.keep_alive = False
            if self.transport is not None:
                self.transport.abort()
        if self.buffered > _HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    # --- parsing ------------------------------------------------------------------------------
    def _parse_head(self) -> None:
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > _MAX_HEAD:
                    raise ValueError("response head too large")
                return
            lines = bytes(self.buf[:end]).split(b"\r\n")
            del self.buf[: end + 4]
            status = int(lines[0][9:12])
            if 100 <= status < 200:
                continue  # interim (100 Continue): the real head follows
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
            self.head = ResponseHead(status, headers)
            if headers.get("connection", "").lower() == "close" or not lines[0].startswith(b"HTTP/1.1"):
                self.keep_alive = False
            if status in (204, 304):
                self.mode = _NONE
                self.done = True
            elif "chunked" in headers.get("transfer-encoding", "").lower():
                self.mode = _CHUNKED
            elif "content-length" in headers:
                self.mode = _LENGTH
                self.remaining = int(headers["content-length"])
                if self.remaining < 0:
                    raise ValueError("negative content-length")
                self.done = self.remaining == 0
            else:
                self.mode = _UNTIL_CLOSE
                self.keep_alive = False
            return

    def _emit(self, data: bytes) -> None:
        if data:
            self.body.append(data)
            self.buffered += len(data)

    def _parse_body(self) -> None:
        buf = self.buf
        if self.mode == _LENGTH:
            if buf and self.remaining:
                take = min(len(buf), self.remaining)
                self._emit(bytes(buf[:take]))
                del buf[:take]
                self.remaining -= take
            self.done = self.remaining == 0
        elif self.mode == _UNTIL_CLOSE:
            if buf:
                self._emit(bytes(buf))
                buf.clear()
        elif self.mode == _CHUNKED:
            while buf and not self.done:
                if self.chunk_state == _DATA:
                    take = min(len(buf), self.remaining)
                    self._emit(bytes(buf[:take]))
                    del buf[:take]
                    self.remaining -= take
                    if self.remaining == 0:
                        self.chunk_state = _DATA_CRLF
                elif self.chunk_state == _SIZE:
                    nl = buf.find(b"\r\n")
                    if nl < 0:
                        if len(buf) > 1024:
                            raise ValueError("chunk size line too long")
                        return
                    size = int(bytes(buf[:nl]).split(b";", 1)[0].strip(), 16)
                    del buf[: nl + 2]
                    if size < 0:
                        raise ValueError("negative chunk size")
                    if size == 0:
                        self.chunk_state = _TRAILER
                    else:
                        self.remaining = size
                        self.chunk_state = _DATA
                elif self.chunk_state == _DATA_CRLF:
                    if len(buf) < 2:
                        return
                    if buf[:2] != b"\r\n":
                        raise ValueError("missing CRLF after chunk")
                    del buf[:2]
                    self.chunk_state = _SIZE
                else:  # trailer section: ends at an empty line
                    if buf[:2] == b"\r\n":
                        del buf[:2]
                        self.done = True
                        return
                    end = buf.find(b"\r\n\r\n")
                    if end < 0:
                        return
                    del buf[: end + 4]
                    self.done = True

    # --- consumer side ------------------------------------------------------------------------
    def _wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def _wait(self, limit_s: float | None) -> None:
        loop = self.loop
        self.waiter = loop.create_future()
        try:
            if limit_s is None:
                await self.waiter
            else:
                # call_later + one future is cheaper than asyncio.timeout's context per read.
                handle = loop.call_later(limit_s, self._timeout)
                try:
                    await self.waiter
                finally:
                    handle.cancel()
        finally:
            self.waiter = None
        if isinstance(self.error, UpstreamTimeout):
            raise self.error

    def _timeout(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.error = UpstreamTimeout(f"{self.address}: no data within the idle timeout")
            self.keep_alive = False
            self.waiter.set_result(None)

    def reset(self) -> None:
        self.head = None
        self.mode = _NONE
        self.remaining = 0
        self.chunk_state = _SIZE
        self.body.clear()
        self.buffered = 0
        self.done = False
        self.error = None


def _timeout(conn: _Conn, idle: float | None, deadline: float | None) -> float | None:
    if deadline is None:
        return idle
    left = max(0.0, deadline - conn.loop.time())
    return left if idle is None else min(idle, left)


class UpstreamResponse:
    """One response being read from a pooled connection; ``release()`` it exactly once."""

    __slots__ = ("_conn", "_deadline", "_idle", "_released", "head")

    def __init__(
        self, conn: _Conn, head: ResponseHead, idle_timeout: float | None, deadline: float | None
    ) -> None:
        self._conn = conn
        self.head = head
        self._idle = idle_timeout
        self._deadline = deadline
        self._released = False

    @property
    def status(self) -> int:
        return self.head.status

    @property
    def content_type(self) -> str:
        return self.head.content_type

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
            await c._wait(_timeout(c, self._idle, self._deadline))

    async def read(self) -> bytes:
        parts: list[bytes] = []
        c = self._conn
        while True:
            data = await self.read_chunk()
            if not data:
                return b"".join(parts)
            parts.append(data)
            if c.done and not c.body and c.error is None:  # the end is here: no second read
                return b"".join(parts) if len(parts) > 1 else data

    def release(self) -> None:
        """Back to the pool if the response was read to its end on a reusable connection, else close."""
        if self._released:
            return
        self._released = True
        c = self._conn
        if c.done and c.keep_alive and c.error is None and not c.closed and not c.buf:
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
    ) -> None:
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.max_idle = max_idle_per_endpoint
        self._idle: dict[str, list[_Conn]] = {}
        self._open: set[_Conn] = set()

    def _put_idle(self, conn: _Conn) -> None:
        idle = self._idle.setdefault(conn.address, [])
        if len(idle) >= self.max_idle and conn.transport is not None:
            conn.transport.close()
            return
        idle.append(conn)

    def _forget(self, conn: _Conn) -> None:
        self._open.discard(conn)
        idle = self._idle.get(conn.address)
        if idle and conn in idle:
            idle.remove(conn)

    async def _acquire(self, address: str, tls: ssl.SSLContext | None = None) -> tuple[_Conn, bool]:
        idle = self._idle.get(address)
        while idle:
            reuse = idle.pop()
            if not reuse.closed:
                return reuse, True
        host, _, port = address.rpartition(":")
        loop = asyncio.get_running_loop()
        try:
            _, proto = await asyncio.wait_for(
                # A DNS name is resolved here, on every new connection (the system resolver's TTL).
                loop.create_connection(
                    lambda: _Conn(self, address),
                    host.strip("[]"),
                    int(port),
                    ssl=tls,
                    server_hostname=host.strip("[]") if tls is not None else None,
                ),
                self.connect_timeout,
            )
        except TimeoutError as e:
            raise UpstreamTimeout(f"{address}: connect timed out") from e
        except OSError as e:
            raise UpstreamError(f"{address}: connect failed: {e.strerror or e}") from e
        conn: _Conn = proto
        self._open.add(conn)
        return conn, False

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
    ) -> UpstreamResponse:
        """Send ``head`` (request line + headers, ending in CRLF CRLF) and ``body``; wait for the head.

        A kept-alive connection the server closed while idle fails before any response byte; that
        case is retried once on a fresh connection, since the request cannot have been processed.
        ``deadline`` (event-loop time) bounds the whole exchange on top of the idle timeout.
        ``on_sent`` runs once the request is written (timing breakdowns).
        """
        for attempt in range(2):
            conn, reused = await self._acquire(address, tls)
            assert conn.transport is not None
            conn.transport.write(head + body)
            if on_sent is not None:
                on_sent()
            try:
                while conn.head is None:
                    if conn.error is not None:
                        raise conn.error
                    await conn._wait(_timeout(conn, self.idle_timeout, deadline))
            except UpstreamTimeout:
                if conn.transport is not None:
                    conn.transport.abort()
                raise
            except UpstreamError:
                if reused and attempt == 0 and not conn.buf:
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
        for conn in list(self._open):
            if conn.transport is not None:
                conn.transport.abort()
        self._open.clear()
        self._idle.clear()
