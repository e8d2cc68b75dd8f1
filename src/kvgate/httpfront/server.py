"""The client-facing HTTP/1.1 server: a lean asyncio protocol instead of aiohttp's web server.

Why: after the upstream leg (``upstream.py``), aiohttp's per-request server machinery (request and
response objects, header multidicts, the router) was the largest Python cost left on the data path.
This front parses requests itself (request line, headers, Content-Length or chunked bodies) and writes
responses as single byte strings. It keeps the part of aiohttp's web API the proxy uses
(``Response``, ``StreamResponse.prepare/write/write_eof``, ``request.headers.get``) so handlers stay
plain.

Robustness rules: anything malformed gets a 400 and the connection is closed; header block <= 64 KB
(431), body <= the configured limit (413, checked on Content-Length before reading and while reading
chunked bodies); a chunked body's lines end in CRLF only and follow RFC 9112 §7.1's grammar, its trailer
lines are header lines, at most 64 KB of them (400, 431; read and dropped); every refusal but a 408
lingers (half-close, read and drop for up to ``LINGER_S``; over TLS, which cannot half-close, it closes at
once) so the client reads the answer instead of a reset; CR, LF or NUL inside a header line is
refused (no response splitting through echoed headers), and any other control character but HTAB in a
value (RFC 9110 §5.5); header names must be RFC 9110 tokens,
Content-Length ASCII digits, HTTP/1.1 requests must carry Host; Content-Length together with
Transfer-Encoding is refused (no request smuggling); requests on one connection are answered in order
(pipelining), at most ``_MAX_PIPELINE`` queued before reading pauses.

Deadlines (one sweeper task checks them all, no per-byte timers): idle keep-alive connections close
after ``keepalive_s``; a request head must be complete within ``header_timeout_s`` and its body within
``body_timeout_s`` of the head (408, then close: slowloris); a write the client does not take within
``send_timeout_s`` (the output buffer stays above ``write_buffer_bytes``) aborts the connection, which
cancels the handler and so releases its concurrency slot, in-flight accounting and upstream request.
More than ``max_connections`` open connections: the new one gets 503 ``too_many_connections``.

Memory: every request body takes its bytes from one budget per front (``max_buffered``, all connections
together) as they arrive, and gives them back once answered (or refused, or the client gone). A head
whose Content-Length does not fit in what is free gets 503 with ``Retry-After`` before its body is read
(nothing is reserved for it: a head alone holds no budget); a body that stops fitting while it arrives
gets the same 503 then, and the connection closes. ``head_check`` (the gateway's API-key
check) may refuse a request from its head, its body never buffered. Both refusals linger too.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import re
import resource
import select
import socket
import struct
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Protocol, cast

from kvgate.httpfront.budget import ByteBudget, ReadPace, TurnQueue
from kvgate.openai.protocol import error_body

log = logging.getLogger("kvgate.httpfront")

_MAX_HEAD = 64 * 1024
_MAX_PIPELINE = 16
_REASONS = {s.value: s.phrase for s in HTTPStatus}
_STATUS_LINES = {code: f"HTTP/1.1 {code} {phrase}\r\n" for code, phrase in _REASONS.items()}
_BAD_HEADER_BYTES = (b"\r", b"\n", b"\x00")
# RFC 9110 token: the only characters a header name may have.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# How long a refused request (not a 408) keeps reading (and discarding) so the client sees the answer.
LINGER_S = 2.0
# What lingering may read, all connections of a front (one listening port) together (bytes/s, and the
# bucket's size): an honest client's refused body is read at once up to the bucket, then at this pace
# (160 MiB in ``LINGER_S`` alone), a flood of lingering clients costs the loop no more than that (review
# s21-fixes-b F2: each flooder read at full speed for the whole linger added ~0.4 ms to every other
# connection's latency). The bucket holds a 32 MiB body: its 413 in 0.01 s, not 0.3 s at 8 MiB, for no
# more flood CPU; a faster rate costs the flood's CPU (review s22-gw F4; docs/hardening.md).
LINGER_RATE = 64 << 20
LINGER_BURST = 32 << 20
# What one read of a socket takes at most (asyncio's selector transports: ``max_size``).
_READ = 256 << 10
# SO_LINGER on, 0 s: closing the socket resets the connection (``FrontProtocol.abort(reset=True)``).
_LINGER_RESET = struct.pack("ii", 1, 0)


class Request:
    __slots__ = (
        "_proto",
        "body",
        "content_length",
        "error",
        "headers",
        "held",
        "http11",
        "keep_alive",
        "method",
        "path",
        "query",
    )

    def __init__(
        self,
        proto: FrontProtocol,
        method: str,
        path: str,
        query: str,
        headers: dict[str, str],
        body: bytes,
        keep_alive: bool,
    ) -> None:
        self._proto = proto
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers  # lower-case names; repeated headers joined with ","
        self.body = body
        self.content_length = len(body)
        self.keep_alive = keep_alive
        # False for HTTP/1.0 clients: no chunked encoding (a stream closes the connection after it); a
        # whole answer keeps it only if asked (``Connection: keep-alive``, said back in the answer's head)
        self.http11 = True
        # Set on a synthetic request standing for a refusal by the front: the response it gets.
        self.error: Response | None = None
        self.held = 0  # bytes of the front's body budget this request holds until it is answered

    async def read(self) -> bytes:
        return self.body

    @property
    def peer(self) -> str:
        """The client's address (its host, without the port: one client's many connections are one), ""
        if unknown. Read for a big body's turn on the parse thread (``offload``), not per request."""
        transport = getattr(self._proto, "transport", None)  # (a test's stand-in may have none)
        name = transport.get_extra_info("peername") if transport is not None else None
        return str(name[0]) if isinstance(name, tuple) and name else str(name or "")


class Response:
    """A whole response (the aiohttp ``web.Response`` keywords the gateway uses)."""

    __slots__ = ("body", "close", "content_type", "headers", "release", "set_cookies", "status")

    def __init__(
        self,
        status: int = 200,
        body: bytes = b"",
        text: str | None = None,
        headers: dict[str, str] | None = None,
        content_type: str | None = None,
        set_cookies: tuple[str, ...] = (),
    ) -> None:
        # (positional too: a class called with keywords builds a dict for them, ~0.2 us for three; the
        # proxy's whole answer, once per request, passes them by position)
        self.status = status
        self.body = text.encode() if text is not None else body
        self.headers = headers or {}
        self.content_type = content_type
        # ``Set-Cookie`` lines, written one header line each (RFC 6265 3: the one field never joined)
        self.set_cookies = set_cookies
        self.close = False
        # Called once when the body has left the gateway (its output buffer back under
        # ``write_buffer_bytes``) or the connection ended: what held the body gives its bytes back then
        # (``kvgate serve``'s held answers: the process budget bounds answers not yet read too).
        self.release: Callable[[], None] | None = None

    def force_close(self) -> None:
        self.close = True


class WriteWaits(Protocol):
    """Told when a ``StreamResponse.write`` waits on the client (event-loop times)."""

    def waiting(self, at: float) -> None: ...

    def resumed(self, at: float) -> None: ...


class StreamResponse:
    """A chunked response written piece by piece (SSE, a relayed big answer).

    ``length``: the body's length when known in advance (a relayed answer passed unchanged in length):
    an HTTP/1.0 client is told it (``Content-Length``) instead of a body delimited by the close alone;
    the writer must then write exactly that many bytes. HTTP/1.1 clients get chunks either way.

    ``waits``: when set, told (event-loop time) when a ``write`` begins waiting on the client's
    back-pressure (its output buffer full) and when it goes on, so a relay can tell the client's stall
    from its upstream's (``kvgate.openai.progress.Progress``).

    A ``HEAD`` request's answer is its head alone (RFC 9110 §9.3.2): ``Content-Length`` the GET's body's
    when ``length`` is known (else chunked, as the GET's), the writes dropped, no last chunk."""

    __slots__ = (
        "_bodiless", "_chunked", "_length", "_proto", "ended", "headers", "prepared", "set_cookies", "status",
        "waits",
    )  # fmt: skip

    def __init__(
        self,
        status: int = 200,
        headers: dict[str, str] | None = None,
        length: int | None = None,
        set_cookies: tuple[str, ...] = (),
    ) -> None:
        # (positional too, as ``Response``: the proxy's relay passes them by position, once per stream)
        self.status = status
        self.headers = headers or {}
        self.set_cookies = set_cookies  # (as ``Response``'s)
        self._proto: FrontProtocol | None = None
        self.prepared = False
        self.ended = False
        self._chunked = True
        self._bodiless = False
        self._length = length
        self.waits: WriteWaits | None = None

    async def prepare(self, request: Request) -> None:
        self._proto = request._proto
        if request.method == "HEAD":
            self._bodiless = True
            length = self._length if self._length is not None or request.http11 else -1  # (no chunks in 1.0)
            if self._proto.server.draining:
                request.keep_alive = False  # (as below: said in the head, so kept)
            close = not request.keep_alive
            self._proto.send(
                _head(self.status, self.headers, None, length, close, not request.http11, self.set_cookies)
            )
        elif request.http11:
            # The connection closes after this answer (its client asked, or the drain began): said in
            # the head, as a whole ``Response``'s says it (``FrontProtocol._serve``; doors18), and kept
            # (``keep_alive`` off): nothing may be answered after a head that said it (RFC 9112 9.6).
            if self._proto.server.draining:
                request.keep_alive = False
            close = not request.keep_alive
            self._proto.send(_head(self.status, self.headers, None, None, close, False, self.set_cookies))
        else:
            # HTTP/1.0 has no chunked encoding: the body ends when the connection closes, and with a
            # known length at it (the client can tell a cut body). Any abort resets the connection
            # either way (``close_delimited``: a close must never end a body that is cut).
            self._chunked = False
            request.keep_alive = False
            self._proto.close_delimited = True
            length = -1 if self._length is None else self._length
            self._proto.send(_head(self.status, self.headers, None, length, True, False, self.set_cookies))
        self.prepared = True

    async def write(self, data: bytes) -> None:
        proto = self._proto
        if proto is None or proto.closed:
            raise ConnectionResetError("client connection closed")
        if not data or self._bodiless:
            return
        step = proto.server.write_buffer_bytes
        if len(data) <= step:
            proto.send(b"%x\r\n%b\r\n" % (len(data), data) if self._chunked else data)
            if proto.write_paused:
                await self._drain(proto)
            return
        # A piece larger than the client's buffer (a relayed big answer's read): written in slices of
        # it, each once the client took the last, never copied whole into the output buffer (review
        # s17-bigbody M3: the output buffer stays near ``write_buffer_bytes`` per connection).
        if self._chunked:
            proto.send(b"%x\r\n" % len(data))
        view = memoryview(data)
        for at in range(0, len(data), step):
            if proto.closed:
                raise ConnectionResetError("client connection closed")
            proto.send(view[at : at + step])
            if proto.write_paused:
                await self._drain(proto)
        if self._chunked:
            proto.send(b"\r\n")

    async def _drain(self, proto: FrontProtocol) -> None:
        """Wait for the client to take the output buffer (``waits`` told when, if set)."""
        waits = self.waits
        if waits is None:
            await proto.drain()
            return
        loop = asyncio.get_running_loop()
        waits.waiting(loop.time())
        try:
            await proto.drain()
        finally:
            waits.resumed(loop.time())

    def abort(self) -> None:
        """End a started response as broken: no terminating chunk, the connection is aborted, so the
        client sees it incomplete instead of a well-formed but truncated body. An HTTP/1.0 body (no
        chunks, delimited by the close) ends with a reset, not a close: a close would be its clean end,
        a cut answer taken as complete (review s17-bigbody L1; ``FrontProtocol.abort`` resets it
        whoever aborts)."""
        self.ended = True
        if self._proto is not None:
            self._proto.abort()

    async def write_eof(self) -> None:
        if self.ended or self._proto is None:
            return
        self.ended = True
        if self._proto.closed:
            raise ConnectionResetError("client connection closed")
        if self._chunked and not self._bodiless:
            self._proto.send(b"0\r\n\r\n")


def _head(
    status: int,
    headers: dict[str, str],
    content_type: str | None,
    length: int | None,
    close: bool,
    keep10: bool = False,
    set_cookies: tuple[str, ...] = (),
) -> bytes:
    """An answer's head. ``close``: ``Connection: close``; else ``keep10`` (an HTTP/1.0 client whose
    connection is kept): ``Connection: keep-alive``, which such a client needs to see to reuse it (RFC 9112
    Appendix C.2.2; review s19-qa L5: ApacheBench ``-k``, HTTP/1.0 proxies and ``curl --http1.0`` closed
    after every answer). ``set_cookies``: a ``set-cookie`` line each."""
    # (one string grown in place: a handful of short pieces, cheaper than a list and a join)
    head = _STATUS_LINES.get(status) or f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\n"
    if content_type:
        head += f"Content-Type: {content_type}\r\n"
    for k, v in headers.items():
        head += f"{k}: {v}\r\n"
    if set_cookies:  # (a test, not a loop: no cost to an answer without)
        for v in set_cookies:
            head += f"set-cookie: {v}\r\n"
    if length is None:
        head += "Transfer-Encoding: chunked\r\n"
    elif length >= 0:  # -1: neither (an HTTP/1.0 stream, delimited by closing the connection)
        head += f"Content-Length: {length}\r\n"
    if close:
        head += "Connection: close\r\n"
    elif keep10:
        head += "Connection: keep-alive\r\n"
    return (head + "\r\n").encode("utf-8", "surrogateescape")


def json_error(
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """An OpenAI-style error (``{"error": {"message", "type", "param", "code"}}``), JSON content type."""
    return Response(
        status=status,
        body=error_body(status, message, param, code),
        content_type="application/json",
        headers=headers,
    )


def _error(status: int, message: str, code: str | None = None) -> Response:
    resp = json_error(status, message, code=code)
    resp.force_close()
    return resp


class LimitsLike(Protocol):
    """What ``FrontServer.with_limits`` reads: ``FrontLimits``, or the gateway config's ``limits``
    (``kvgate.config.gateway.Limits``, which carries the same knobs among its own)."""

    max_body_bytes: int
    keepalive_s: float
    header_timeout_s: float
    body_timeout_s: float
    send_timeout_s: float
    write_buffer_bytes: int
    max_connections: int
    max_buffered_bytes: int


@dataclass(slots=True)
class FrontLimits:
    """The front's knobs; the YAML names (``LIMIT_KEYS``) are the same in the gateway config's ``limits``
    and the clusters file's ``limits``."""

    max_body_bytes: int = 8 * 1024 * 1024
    keepalive_s: float = 75.0
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    send_timeout_s: float = 30.0
    write_buffer_bytes: int = 256 * 1024
    max_connections: int = 10_000
    max_buffered_bytes: int = 1 << 30


LIMIT_KEYS = {
    "maxBodyBytes": "max_body_bytes",
    "keepAliveSeconds": "keepalive_s",
    "headerTimeoutSeconds": "header_timeout_s",
    "bodyTimeoutSeconds": "body_timeout_s",
    "sendTimeoutSeconds": "send_timeout_s",
    "writeBufferBytes": "write_buffer_bytes",
    "maxConnections": "max_connections",
    "maxBufferedBytes": "max_buffered_bytes",
}
_INT_LIMITS = {"max_body_bytes", "write_buffer_bytes", "max_connections", "max_buffered_bytes"}


def parse_limits(raw: Mapping[str, Any] | None, where: str = "limits") -> FrontLimits:
    """``LIMIT_KEYS`` from a YAML mapping, each a positive number; raises ``ValueError`` naming the key."""
    out = FrontLimits()
    if raw is None:
        return out
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: expected a mapping")
    for key, value in raw.items():
        attr = LIMIT_KEYS.get(key)
        if attr is None:
            raise ValueError(f"{where}.{key}: unknown key (known: {', '.join(LIMIT_KEYS)})")
        whole = attr in _INT_LIMITS
        number = not isinstance(value, bool) and isinstance(value, int if whole else (int, float))
        if not (number and 0 < value < math.inf):  # (``.nan`` fails every comparison; ``.inf``: s19-qa M1)
            kind = "a positive integer" if whole else "a finite positive number"
            raise ValueError(f"{where}.{key}: expected {kind}, got {value!r}")
        setattr(out, attr, value)
    if out.max_buffered_bytes < out.max_body_bytes:  # (s17-qafix-bc L1: such a body is told to retry forever)
        raise ValueError(
            f"{where}.maxBufferedBytes: must be >= {where}.maxBodyBytes ({out.max_body_bytes}), got "
            f"{out.max_buffered_bytes}: a body between the two could never be held"
        )
    return out


# File descriptors kept out of the client-connection cap: listeners, scrapes, probes, logs.
FD_RESERVE = 64


def connection_cap(wanted: int, limits: tuple[int, int] | None = None) -> int:
    """``limits.maxConnections`` clamped to what the fd limit allows (raised to the hard limit first).

    Each proxied client connection may hold an upstream connection too, so half the fds go to each
    side. Staying under the limit keeps accept() working: at EMFILE asyncio stops accepting for a
    second at a time and every new client is reset; under the cap it gets a clear 503 instead.
    """
    if limits is None:
        try:
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            want = 2 * wanted + FD_RESERVE
            if soft != resource.RLIM_INFINITY and soft < want:
                new = want if hard == resource.RLIM_INFINITY else min(hard, want)
                resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
                soft = new
        except (ValueError, OSError):
            return wanted
        limits = (soft, hard)
    soft = limits[0]
    if soft == resource.RLIM_INFINITY:
        return wanted
    cap = max(1, (soft - FD_RESERVE) // 2)
    if cap < wanted and (wanted, cap, soft) not in _CLAMPS_LOGGED:
        # Once per process for the same values (each listener asks: it was logged twice; qa24 F4).
        _CLAMPS_LOGGED.add((wanted, cap, soft))
        log.info("limits.maxConnections %d clamped to %d by the open-file limit %d", wanted, cap, soft)
    return min(wanted, cap)


_CLAMPS_LOGGED: set[tuple[int, int, int]] = set()


# The header section of the usual request read in one pass: one regex finds each line that is a token
# name, a colon and a value without control characters but HTAB; when those lines make up the whole
# section, every line is such a line (so no obs-fold, no empty name, no stray line break: what the
# line-by-line read would refuse or read otherwise). A section they do not cover goes line by line
# (``FrontProtocol._fields_slow``), which refuses it with the reason or reads it the same.
_FIELD_LINE = re.compile(r"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):([^\x00-\x08\x0a-\x1f\x7f]*)\r\n")
# RFC 9110 §5.5: a field value has no control character but HTAB (CR, LF, NUL refused as before; the
# others too, review s17-qa L3: they were forwarded upstream and echoed raw).
_VALUE_CTL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_WHITESPACE = " \t\n\r\x0b\x0c"  # what bytes.strip() strips (str.strip() strips \x1c-\x1f too)


def _fields(section: bytes) -> dict[str, str] | None:
    """Header lines (each ending in CRLF) as {lower-case name: stripped value, repeats joined with
    ","}; None unless every line is plain (see ``_FIELD_LINE``) and all of it ASCII."""
    if not section.isascii():
        return None
    headers: dict[str, str] = {}
    covered = 0
    for name, value in _FIELD_LINE.findall(section.decode("ascii")):
        covered += len(name) + len(value) + 3  # (the matches never overlap: all of it when this is)
        name = name.lower()
        value = value.strip(_WHITESPACE)
        headers[name] = f"{headers[name]},{value}" if name in headers else value
    return headers if covered == len(section) else None


# RFC 9112 §7.1: a chunk line, without its CRLF. chunk-size [ chunk-ext ]: hex digits, then any number of
# ``;name`` or ``;name=value`` (a token or a quoted string), with optional blanks (BWS) around ``;`` and
# ``=``; trailing blanks are taken too. Anything else (an LF or CR, a control byte, a blank first) is a
# 400. Possessive quantifiers: no backtracking (each piece ends where the next cannot start).
_CHUNK_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]++"
_CHUNK_QUOTED = rb'"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])*+"'
_CHUNK_LINE = re.compile(
    rb"([0-9A-Fa-f]++)(?:[ \t]*+;[ \t]*+" + _CHUNK_TOKEN
    + rb"(?:[ \t]*+=[ \t]*+(?:" + _CHUNK_TOKEN + rb"|" + _CHUNK_QUOTED + rb"))?+)*+[ \t]*+"
)  # fmt: skip
_MAX_CHUNK_LINE = 1024


def _empty_lines(data: bytes | bytearray) -> int:
    """How many bytes of empty lines (CRLF) ``data`` starts with."""
    i = 0
    while data.startswith(b"\r\n", i):
        i += 2
    return i


def _absolute_form(target: str, headers: dict[str, str]) -> str:
    """A request target that is not a path (the query already split off): the absolute-form
    ``http://authority/path`` (RFC 9112 §3.2.2: a server MUST accept it; a client that has the gateway as
    its HTTP proxy sends it) is routed by its path, its authority taking the place of ``Host``; any other
    form is left as it is (no route takes it)."""
    scheme, sep, rest = target.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        return target
    authority, _, path = rest.partition("/")
    if not authority or "@" in authority or not authority.isprintable() or " " in authority:
        raise _BadRequest(400, "malformed request target")
    headers["host"] = authority
    return "/" + path


def _bare_lf(buf: bytearray) -> bool:
    """Does the incomplete head in ``buf`` end its request line, or its header section, in a bare LF?
    Refused at once (RFC 9112 §2.2 lets a server accept it; the front does not: one line ending for the
    gateway, the servers behind it and every check here). Before review s17-qa L4 such a head was never
    complete, so it waited ``headerTimeoutSeconds`` for a 408."""
    nl = buf.find(b"\n")
    return nl >= 0 and (nl == 0 or buf[nl - 1] != 0x0D or b"\n\n" in buf or b"\n\r\n" in buf)


# A refused request's (method, path, headers), when its head was read (``on_refused``).
Head = tuple[str, str, dict[str, str]]


class _BadRequest(Exception):
    def __init__(self, status: int, message: str, length: int = -1, head: Head | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.length = length  # the refused request's Content-Length, when its head said it (else -1)
        self.head = head


class _Refused(Exception):
    """A request refused with ``resp`` before its body was read (the client may still be sending it).
    ``counted``: reported to ``on_reject`` (not ``route_check``'s 404 / 405, which the handler answers
    uncounted to the same request without ``Expect``: rev-e32 F5)."""

    def __init__(
        self, resp: Response, length: int = -1, counted: bool = True, head: Head | None = None
    ) -> None:
        super().__init__(resp.status)
        self.resp = resp
        self.length = length  # its Content-Length (-1: chunked, or not known)
        self.counted = counted
        self.head = head


# Seconds a client is told to wait (``Retry-After``) when the body budget is spent: bodies are given
# back as requests are answered, so a short wait usually finds room.
BUDGET_RETRY_S = 1
# ``Retry-After`` of the connection cap's 503 (``max_connections``).
CAP_RETRY_AFTER = "1"


def _over_budget(limit: int, length: int = -1, head: Head | None = None) -> _Refused:
    resp = _error(
        503, f"the gateway holds {limit} bytes of request bodies (limits.maxBufferedBytes); retry",
        "service_unavailable",
    )  # fmt: skip
    resp.headers["Retry-After"] = str(BUDGET_RETRY_S)
    return _Refused(resp, length, head=head)


Handler = Callable[[Request], Awaitable["Response | StreamResponse"]]

# RFC 9110 §9.1: a resource that takes GET takes HEAD (the front sends a HEAD answer's head alone).
READ_METHODS = ("GET", "HEAD")


def get_only(handler: Handler) -> Handler:
    """``handler`` for GET and HEAD; any other method gets 405 with ``Allow: GET, HEAD`` and an
    OpenAI-style JSON error (the admin routes: ``POST /metrics`` answered 200 before session 23)."""

    async def only_get(request: Request) -> Response | StreamResponse:
        if request.method in READ_METHODS:
            return await handler(request)
        return read_only(request.method, request.path)

    return only_get


def read_only(method: str, path: str) -> Response:
    """The 405 a GET-only path answers another method (``get_only``'s; a front's ``route_check`` sends the
    same from the head, without a ``100 Continue``)."""
    why = f"{method} is not allowed on {path}; use GET"
    return json_error(405, why, headers={"Allow": "GET, HEAD"})


def _knobs(limits: LimitsLike) -> dict[str, Any]:
    """The front's attributes (and constructor keywords) each limit sets: one map for start and reload."""
    return {
        "max_body": limits.max_body_bytes,
        "keepalive_s": limits.keepalive_s,
        "header_timeout_s": limits.header_timeout_s,
        "body_timeout_s": limits.body_timeout_s,
        "send_timeout_s": limits.send_timeout_s,
        "write_buffer_bytes": limits.write_buffer_bytes,
        "max_connections": connection_cap(limits.max_connections),
        "max_buffered": limits.max_buffered_bytes,
    }


class FrontServer:
    """Routes, limits, deadlines and the set of live connections (for draining)."""

    def __init__(
        self,
        routes: dict[str, Handler],
        fallback: Handler,
        *,
        max_body: int,
        prefix_routes: dict[str, Handler] | None = None,
        keepalive_s: float = 75.0,
        header_timeout_s: float = 10.0,
        body_timeout_s: float = 60.0,
        send_timeout_s: float = 30.0,
        write_buffer_bytes: int = 256 * 1024,
        max_connections: int = 10_000,
        max_buffered: int = 1 << 30,
    ) -> None:
        self.routes = routes
        self.prefix_routes = prefix_routes or {}
        self.fallback = fallback
        self.max_body = max_body
        self.keepalive_s = keepalive_s
        self.header_timeout_s = header_timeout_s
        self.body_timeout_s = body_timeout_s
        self.send_timeout_s = send_timeout_s
        self.write_buffer_bytes = write_buffer_bytes
        self.max_connections = max_connections
        # Request bodies held (arriving, queued, being answered), all connections together: a body's
        # bytes are taken from it at its head (Content-Length; chunk by chunk when chunked), so a
        # request over it gets 503 before its body is read, and given back once it is answered.
        self.budget = ByteBudget(max_buffered)
        self.connections: set[FrontProtocol] = set()
        self.draining = False
        # The drain: connections that had (part of) a request received, or readable bytes waiting, and
        # nothing being answered yet when it started; each leaves when it closes (answered, then closed:
        # the drain closes every connection after its response). ``_reads_done`` is set while none is.
        self.reading: set[FrontProtocol] = set()
        self._reads_done = asyncio.Event()
        self._reads_done.set()
        # Counters for the metrics page and the soak report.
        self.refused = 0  # connections over max_connections
        self.timed_out = {"header": 0, "body": 0, "send": 0}
        # Called with the status of each request the front refuses itself (400, 408, 413, 431, 501):
        # the gateway counts them on its request error metric, as it counts its own refusals.
        self.on_reject: Callable[[int], None] | None = None
        # Called with (method, path, headers) as soon as a request head is complete, before its body
        # is read: a response refuses the request from its head (the gateway's API-key check: a
        # keyless client cannot make it buffer a body it will refuse); None lets it through.
        self.head_check: Callable[[str, str, dict[str, str]], Response | None] | None = None
        # Called with (method, path, headers, response) of each request refused here once its head was
        # read (401 of ``head_check``, 413, 408, ...), before the answer is written: the gateway's access
        # line and request id (qa35b F3).
        self.on_refused: Callable[[str, str, dict[str, str], Response], None] | None = None
        # Called with (method, path) for a request that asks ``Expect: 100-continue``: a response is its
        # answer whatever its body says (no route: 404; a method the route does not take: 405), sent from
        # the head with no 100 Continue, so the client does not upload a body for nothing (qa32a Q5).
        self.route_check: Callable[[str, str], Response | None] | None = None
        # One sweeper enforces every deadline, instead of a timer armed and cancelled per request.
        self._sweeper: asyncio.Task[None] | None = None
        # Lingering reads' pace (``LINGER_RATE``): a lingering connection that overdraws it, or that
        # begins to linger while others wait or the pace is in debt, stops reading and waits here; one
        # timer lets the waiters read again once the debt is paid, the smallest refused body first (what
        # it may send: its Content-Length and a head, ``_linger_cap``; chunked: unknown, last), equal
        # ones in turn (arrival order): an honest client with a small refused body reads before a flood
        # announcing more (gw23; before, its turn came after every flooder's); every other turn goes to
        # the longest waiting, so none starves (a chunked refusal under a flood: review s23-rev-gw23 F2).
        # A closed connection leaves from anywhere in O(1) (review s22-gw F2).
        self.linger_pace = ReadPace(LINGER_RATE, LINGER_BURST)
        self._pace_waiting: TurnQueue[FrontProtocol] = TurnQueue()
        self._pace_timer: asyncio.TimerHandle | None = None

    @property
    def max_buffered(self) -> int:
        return self.budget.limit

    @max_buffered.setter
    def max_buffered(self, value: int) -> None:
        self.budget.limit = value

    @classmethod
    def with_limits(
        cls, routes: dict[str, Handler], fallback: Handler, limits: LimitsLike, *,
        prefix_routes: dict[str, Handler] | None = None,
    ) -> FrontServer:  # fmt: skip
        """A front with ``limits`` (the connection cap clamped to the fd limit)."""
        return cls(routes, fallback, prefix_routes=prefix_routes, **_knobs(limits))

    def apply_limits(self, limits: LimitsLike) -> dict[str, tuple[float, float]]:
        """Change the limits live (a config reload); returns {knob: (old, new)} for those that changed.

        Every knob applies at once, nothing needs a restart: the deadlines at the sweeper's next tick (to
        connections already waiting too, measured from when they started waiting), the body cap to the
        next request head, the connection cap to the next accept (connections over a lowered cap stay
        until they close), the write buffer bound to open connections as well as new ones."""
        new = _knobs(limits)
        changed = {k: (getattr(self, k), v) for k, v in new.items() if getattr(self, k) != v}
        for k, (_, v) in changed.items():
            setattr(self, k, v)
        if "write_buffer_bytes" in changed:
            for conn in self.connections:
                if conn.transport is not None and not conn.closed:
                    conn.transport.set_write_buffer_limits(high=self.write_buffer_bytes)
        return changed

    def watch_idle(self) -> None:
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        while self.connections:
            # Granularity: a quarter of the shortest deadline, at most 1 s (75 s keep-alive: closes at
            # 75-76 s); recomputed each tick, as a reload may change the deadlines.
            shortest = min(self.keepalive_s, self.header_timeout_s, self.body_timeout_s, self.send_timeout_s)
            await asyncio.sleep(min(1.0, shortest / 4))
            self.sweep(loop.time())

    def sweep(self, now: float) -> None:
        """Enforce every connection deadline once (the sweeper calls this each tick)."""
        idle_cut = now - self.keepalive_s
        head_cut = now - self.header_timeout_s
        body_cut = now - self.body_timeout_s
        send_cut = now - self.send_timeout_s
        for c in list(self.connections):
            if c.blocked_since is not None and c.blocked_since <= send_cut and not c.progressed(now):
                # The client took nothing for the whole send deadline: give up on it. Abort, not close
                # (close would wait for the buffer to flush); connection_lost cancels the handler.
                self.timed_out["send"] += 1
                c.abort()
            elif c.linger_until is not None and c.linger_until <= now:
                c.linger_ended()
            elif c.idle_since is not None and c.idle_since <= idle_cut:
                c.close()
            elif c._read_paused:
                continue  # the server is the slow one (a full pipeline): not the client's deadline
            elif c.head_since is not None and c.head_since <= head_cut:
                self.timed_out["header"] += 1
                c.deadline_passed("request header block not complete in time")
            elif c.body_since is not None and c.body_since <= body_cut:
                self.timed_out["body"] += 1
                c.deadline_passed("request body not complete in time")

    def pace_wait(self, conn: FrontProtocol) -> None:
        """``conn`` lingers with its reading paused: it reads again in its turn (``_pace_next``)."""
        if conn._pacing:
            return
        conn._pacing = True
        self._pace_waiting.push(conn, conn._linger_cap)
        if self._pace_timer is None:
            loop = asyncio.get_running_loop()
            self._pace_timer = loop.call_later(self.linger_pace.due(loop.time()), self._pace_next)

    def _pace_next(self) -> None:
        """The pace's debt is paid: the first lingerers in the queue's order (``TurnQueue``: by turns the
        smallest refused body and the longest waiting) read again, as many as the bucket holds reads
        (``_READ``; at least one: each overdraws by at most one read), not one per timer: after a flood,
        hundreds queued drain at the pace, not at the timer's (review s22-gw F5). The next turn when the new
        debt is paid."""
        self._pace_timer = None
        loop = asyncio.get_running_loop()
        waiting = self._pace_waiting
        pace = self.linger_pace
        if pace.due(loop.time()) == 0.0:
            expect = pace.tokens  # (what the let-on will read, before it has read it)
            while waiting and expect >= 0 and pace.tokens >= 0:
                conn = waiting.pop()
                conn._pacing = False
                if conn.linger_until is not None and not conn.closed and conn._read_paused:
                    conn._read_paused = False
                    assert conn.transport is not None
                    conn.transport.resume_reading()
                    expect -= _READ
        if waiting and self._pace_timer is None:  # (set already if the reader paused at once again)
            # (at least 1 ms apart: a turn that found no debt lets on the next one soon)
            delay = max(self.linger_pace.due(loop.time()), 0.001)
            self._pace_timer = loop.call_later(delay, self._pace_next)

    def handler_for(self, path: str) -> Handler:
        h = self.routes.get(path)
        if h is not None:
            return h
        for prefix, ph in self.prefix_routes.items():
            if path.startswith(prefix):
                return ph
        return self.fallback

    def protocol(self) -> FrontProtocol:
        return FrontProtocol(self)

    def drain(self) -> None:
        """Stop keeping connections alive: idle ones close now, busy ones after their response. Busy is
        also a connection whose request is still arriving (head or body bytes received) or whose bytes
        wait unread in the kernel: its request is read (the header and body deadlines apply) and
        answered, then it closes; closing it now would drop (or reset) a request its client sent
        (review s17-doors F2). ``reads_done`` waits for those."""
        self.draining = True
        waiting: list[FrontProtocol] = []
        for conn in list(self.connections):
            if conn.busy or conn.queue:
                continue
            if conn.buf or conn._pending is not None:
                self._reading(conn)
            else:
                waiting.append(conn)
        unread = _readable(waiting)
        for conn in waiting:
            if conn in unread:
                self._reading(conn)
            else:
                conn.close()

    def _reading(self, conn: FrontProtocol) -> None:
        self.reading.add(conn)
        self._reads_done.clear()

    def read_done(self, conn: FrontProtocol) -> None:
        """``conn`` closed: it is no longer a request the drain waits to read."""
        if self.reading:
            self.reading.discard(conn)
            if not self.reading:
                self._reads_done.set()

    async def reads_done(self) -> None:
        """Until every connection the drain found mid-request (``drain``) is answered and closed."""
        await self._reads_done.wait()

    def close_all(self) -> None:
        for conn in list(self.connections):
            conn.abort()
        if self._pace_timer is not None:
            self._pace_timer.cancel()
            self._pace_timer = None
        self._pace_waiting.clear()
        if self._sweeper is not None:
            self._sweeper.cancel()


def _readable(conns: list[FrontProtocol]) -> set[FrontProtocol]:
    """Those of ``conns`` whose socket has bytes (or its end) waiting unread in the kernel, from one
    ``poll`` that does not wait; a connection whose socket is not at hand counts as not readable."""
    if not conns or not hasattr(select, "poll"):
        return set()
    poller = select.poll()
    by_fd: dict[int, FrontProtocol] = {}
    for conn in conns:
        sock = conn.transport.get_extra_info("socket") if conn.transport is not None else None
        try:
            fd = sock.fileno() if sock is not None else -1
        except (OSError, ValueError):
            fd = -1
        if fd >= 0:
            by_fd[fd] = conn
            poller.register(fd, select.POLLIN)
    return {by_fd[fd] for fd, ev in poller.poll(0) if ev & select.POLLIN and fd in by_fd}


class FrontProtocol(asyncio.Protocol):
    def __init__(self, server: FrontServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.queue: collections.deque[Request] = collections.deque()
        # The connection's one task: it answers the queued requests in order, one at a time, and waits
        # (``_wake``) while none is queued; created at the first request, it ends with the connection
        # (cancelled in ``connection_lost``). Not a task per request: a task costs its creation, its
        # registration and its first step's callback; waking one costs a future's result (``--stages`` of
        # scripts/gateway_path_cost.py). ``busy``: a request was taken from the queue and is not answered yet.
        self.task: asyncio.Task[None] | None = None
        self.busy = False
        self._wake: asyncio.Future[None] | None = None
        self.closed = False
        self.write_paused = False
        # A started body delimited by the connection's close (HTTP/1.0 stream): every abort resets.
        self.close_delimited = False
        self._drain_kept = False  # kept open past one answer in the drain: the next closes (``_serve``)
        self._drain: asyncio.Future[None] | None = None
        # Event-loop times the sweeper checks (None = not in that state):
        self.idle_since: float | None = None  # waiting for a next request, nothing received
        self._idle_from: float | None = None  # idle_since before the last read (empty lines keep it)
        self.head_since: float | None = None  # first byte of an incomplete request head
        self.body_since: float | None = None  # head complete, body still arriving
        self.blocked_since: float | None = None  # output buffer above the bound, client not reading
        self._blocked_size = 0  # buffered bytes when blocked_since was last set
        self.linger_until: float | None = None  # refused request: reading to discard until then
        self._read_paused = False
        self._reject_after = False  # stop parsing: an error response is queued and we close after it
        self._linger_after = False  # the refusal came before the body: linger (``_linger``), not close
        self._dropped = 0  # bytes read and dropped since a refusal (``_drop``)
        # What an honest client may still send after its refusal: the refused request's Content-Length
        # and a head (inf: chunked, or a head refused before its length was read).
        self._linger_cap = math.inf
        self._pacing = False  # waiting its turn to read (``FrontServer.pace_wait``)
        self._linger_size = 0  # output buffered when the linger began (``linger_ended``)
        self._held = 0  # budget bytes the body being read holds (``FrontServer.budget``)
        # A parsed request head waiting for its body: (method, path, query, headers, keep-alive,
        # Content-Length or -1 for chunked), and the chunked decoder's state.
        self._pending: tuple[str, str, str, dict[str, str], bool, int, bool] | None = None
        self._ctrailer = -1  # bytes of the trailer section read so far; -1: not in it
        self._cparts: list[bytes] = []
        self._ctotal = 0

    # --- transport callbacks --------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are not asyncio.Transport subclasses, so a cast, not an isinstance check)
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        self._loop = asyncio.get_running_loop()
        server = self.server
        if len(server.connections) >= server.max_connections:
            # A clear refusal instead of a reset: the accept loop goes on, this socket closes at once.
            server.refused += 1
            self.closed = True
            self._reject_after = True
            resp = _error(503, "too many connections to the gateway; retry later", "too_many_connections")
            # (a back-off, as every other 503 kvgate makes: connections close as answers finish; late-a31)
            wait = {"Retry-After": CAP_RETRY_AFTER}
            transport.write(_head(resp.status, wait, resp.content_type, len(resp.body), True) + resp.body)
            transport.close()
            return
        # The write buffer bound: writers wait (back-pressure) above it, the sweeper gives up on them.
        transport.set_write_buffer_limits(high=server.write_buffer_bytes)
        server.connections.add(self)
        server.watch_idle()
        self._arm_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        if self._pacing:  # (leaves its turn: under churn the debt may not be paid for long)
            self._pacing = False
            self.server._pace_waiting.discard(self)  # (gone already after ``close_all``)
        self.server.read_done(self)
        self.idle_since = self.head_since = self.body_since = self.blocked_since = self.linger_until = None
        self._release()
        for req in self.queue:
            self._give(req)
        self.queue.clear()
        if self.task is not None and not self.task.done():
            # The client is gone: stop working for it. Cancelling aborts the upstream request (the
            # model server stops generating for nobody); the proxy's finally blocks settle the
            # in-flight accounting. (An idle connection's task ends its wait for a next request.)
            self.task.cancel()
        if self._drain is not None and not self._drain.done():
            self._drain.set_exception(ConnectionResetError("client connection closed"))
            self._drain.exception()  # mark retrieved; the writer raises its own error

    def pause_writing(self) -> None:
        self.write_paused = True
        self.blocked_since = self._loop.time()
        self._blocked_size = self.transport.get_write_buffer_size() if self.transport is not None else 0

    def progressed(self, now: float) -> bool:
        """Did the client take any bytes since ``blocked_since``? Then restart the send deadline from
        now (nginx's send_timeout: the time between two successive writes, not the whole send)."""
        size = self.transport.get_write_buffer_size() if self.transport is not None else 0
        if size < self._blocked_size:
            self.blocked_since, self._blocked_size = now, size
            return True
        return False

    def resume_writing(self) -> None:
        self.write_paused = False
        self.blocked_since = None
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    async def drain(self) -> None:
        if self.closed:
            raise ConnectionResetError("client connection closed")
        if self.write_paused:
            self._drain = asyncio.get_running_loop().create_future()
            await self._drain

    def data_received(self, data: bytes) -> None:
        if self._reject_after:
            self._drop(len(data))  # (a refused request's lingering bytes, read and dropped)
            return
        self._idle_from, self.idle_since = self.idle_since, None
        try:
            if not self.buf and self._pending is None:
                # The usual case, a whole request (or its start) at the front of a read: its head and
                # body are sliced out of ``data`` once, not copied through the buffer (the rest goes
                # there, as every byte does otherwise).
                if self._parse_first(data):  # (more than one whole request came)
                    self._parse()
            else:
                self.buf += data
                self._parse()
        # (a name of its own per clause: compiled, mypyc types an ``except`` variable by its first clause)
        except _BadRequest as bad:
            self._reject(bad.status, str(bad), bad.length, bad.head)
        except _Refused as refused:
            self._refuse(
                refused.resp, linger=True, length=refused.length, counted=refused.counted, head=refused.head
            )
        except (ValueError, UnicodeError) as malformed:
            self._reject(400, f"malformed HTTP request: {malformed}")
        if self.buf and self._pending is None and self.head_since is None and not self._reject_after:
            # A head has started: it must be complete by the header deadline, however it trickles in.
            self.head_since = self._loop.time()

    def _reject(self, status: int, message: str, length: int = -1, head: Head | None = None) -> None:
        # Every refusal of what the client sent lingers (its request may still be arriving: a 431's
        # head, a bad chunk's body); a 408's client is the slow one, closed at once.
        self._refuse(_error(status, message), linger=status != 408, length=length, head=head)

    def _drop(self, size: int) -> None:
        """``size`` bytes came after a refusal and were dropped. Until the refusal goes out (earlier
        pipelined answers are still being written: no time bound yet), past what an accepted request
        could make the front read (``max_body`` and a head) reading pauses, the client's sends back up.
        Once it is out, the linger bounds the dropping by time (``LINGER_S``, as nginx's
        lingering_time), by what the refused request said it would send (its Content-Length and a
        head: more is no request, the connection closes), and by the process's pace for lingering
        reads (``LINGER_RATE``: over it, reading pauses until its turn). Not by a byte cap below what
        the client announced: that stalled a client that sends its whole body before it reads, and the
        linger's end then cut it off before it read its 413 (review s21-gw M1). Every dropped byte
        takes from the pace, before the linger too (a flood behind a slow answer pauses there as well).
        """
        self._dropped += size
        # (before the linger, no debt: the bytes came with the request; a debt would be paid by waiters)
        paced = self.server.linger_pace.take(size, self._loop.time(), owe=self.linger_until is not None)
        if self.linger_until is not None:
            if self._dropped > self._linger_cap:
                self.linger_until = None
                self.close()
                return
            over = not paced
        else:
            over = not paced or self._dropped > self.server.max_body + _MAX_HEAD
        if over and not self._read_paused and self.transport is not None and not self.closed:
            self._read_paused = True
            self.transport.pause_reading()
            if self.linger_until is not None:
                self.server.pace_wait(self)

    def _refuse(
        self,
        resp: Response,
        *,
        linger: bool,
        length: int = -1,
        counted: bool = True,
        head: Head | None = None,
    ) -> None:
        """Answer ``resp`` (after the requests before it), read nothing more, then close; ``linger``:
        the body may still be arriving, keep reading (and dropping) it briefly so the client sees the
        answer (``_linger``); ``length``: the Content-Length of a request refused from its head;
        ``counted``: reported to ``on_reject``; ``head``: the request's, refused from it (``on_refused``)."""
        self._reject_after = True
        self._linger_after = linger
        pending = self._pending
        if pending is not None:  # (refused while its body arrived)
            length = pending[5]
            head = (pending[0], pending[1], pending[3])
        if head is not None and self.server.on_refused is not None:
            self.server.on_refused(head[0], head[1], head[2], resp)
        if length >= 0:
            self._linger_cap = float(length + _MAX_HEAD)  # (a float, as math.inf: mypyc)
        resp.force_close()
        if counted and self.server.on_reject is not None:
            self.server.on_reject(resp.status)
        self.buf.clear()
        self._pending = None
        self._cparts = []
        self._release()
        self.head_since = self.body_since = None
        req = Request(self, "", "", "", {}, b"", False)
        req.error = resp
        self.queue.append(req)
        self._next()

    def _count(self, arrived: int) -> None:
        """The body being read has ``arrived`` bytes here: take from the budget what is not taken yet;
        when that does not fit, 503 with Retry-After (then close)."""
        more = arrived - self._held
        if more > 0:
            budget = self.server.budget
            if not budget.take(more):
                raise _over_budget(budget.limit)
            self._held = arrived

    def _release(self) -> None:
        """Give back the budget the body being read holds (a refusal, or the connection lost)."""
        if self._held:
            self.server.budget.give(self._held)
            self._held = 0

    def _give(self, req: Request) -> None:
        if req.held:
            self.server.budget.give(req.held)
            req.held = 0

    def deadline_passed(self, message: str) -> None:
        """The sweeper's verdict on a slow request: 408, then close."""
        if not self._reject_after:
            self._reject(408, message)

    # --- parsing --------------------------------------------------------------------------------
    def _parse_first(self, data: bytes) -> bool:
        """``data`` arrived with nothing buffered: take its first request's head (and its body, when
        Content-Length framed and all here) straight from it; whatever is left goes to the buffer. True
        when something is left for ``_parse`` (told here, not read back by the caller: mypy, and so
        mypyc, keep ``self._pending`` narrowed to None across this call, and a compiled read of it
        there refused the tuple: a 500)."""
        end = data.find(b"\r\n\r\n")
        if end <= 0 or end > _MAX_HEAD:
            self.buf += data  # (incomplete, too large, or empty lines first: ``_parse`` says which)
            return True
        self.head_since = None
        self._pending = pending = self._parse_head(data[:end])
        start = end + 4
        length = pending[5]
        if length < 0 or len(data) - start < length:
            self.buf += data[start:]  # (chunked, or the body still arriving)
            return True
        method, path, query, headers, keep_alive, _, http11 = pending
        if length:
            # (``_count``'s take inlined, without its refusal: nothing is held yet (no body was being
            # read) and ``_parse_head`` has just refused a body that does not fit in what is free, with
            # no await since, so this always fits; review s25-rev-cpu25 F2)
            self.server.budget.used += length
            self._held = length
            body = data[start : start + length]
        else:
            body = b""
        self._pending = None
        self.body_since = None
        req = Request(self, method, path, query, headers, body, keep_alive)
        req.http11 = http11
        if self._held:
            req.held, self._held = self._held, 0
        more = start + length < len(data)
        if more:
            self.buf += data[start + length :]  # pipelined requests after it
        self._enqueue(req)
        return more

    def _parse(self) -> None:
        while not self._reject_after:
            if self._pending is None:
                if not self.buf:
                    return
                if self.buf[0] == 0x0D and self._skip_empty_lines():
                    return
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(self.buf) > _MAX_HEAD:
                        raise _BadRequest(431, "request header block too large")
                    if _bare_lf(self.buf):
                        raise _BadRequest(400, "malformed request head: a line ends in a bare LF, not CRLF")
                    return
                if end > _MAX_HEAD:
                    raise _BadRequest(431, "request header block too large")
                head = bytes(self.buf[:end])
                del self.buf[: end + 4]
                self.head_since = None
                self._pending = self._parse_head(head)
            method, path, query, headers, keep_alive, length, http11 = self._pending
            if length < 0:  # chunked
                body = self._chunked()
                if body is None:
                    # (what arrived of it: the decoded chunks and the chunk still arriving)
                    self._count(self._ctotal + len(self.buf))
                    return
                self._count(len(body))
            else:
                self._count(min(len(self.buf), length))
                if len(self.buf) < length:
                    return
                body = bytes(self.buf[:length])
                del self.buf[:length]
            self._pending = None
            self.body_since = None
            req = Request(self, method, path, query, headers, body, keep_alive)
            req.http11 = http11
            if self._held:
                req.held, self._held = self._held, 0
            self._enqueue(req)

    def _skip_empty_lines(self) -> bool:
        """RFC 9112 §2.2: empty lines (CRLF) before a request line are skipped (an old client's extra CRLF
        after a POST body). True when nothing is left to parse yet: the connection is idle again (its
        idle deadline, not the header one)."""
        buf = self.buf
        del buf[: _empty_lines(buf)]
        if buf:
            return False
        self.head_since = None  # (a CR that came alone started it)
        if not self.busy and not self.queue:
            self._arm_idle()
            if self.idle_since is not None and self._idle_from is not None:
                # Empty lines alone are no request: the idle deadline runs on from before them, else a
                # CRLF every keepAliveSeconds held a connection forever (review s20-fixes-a L1).
                self.idle_since = self._idle_from
        return True

    def _parse_head(self, head: bytes) -> tuple[str, str, str, dict[str, str], bool, int, bool]:
        """One request head (without its final CRLF CRLF), parsed: the ``_pending`` tuple; raises
        ``_BadRequest`` (a malformed head) or ``_Refused`` (``head_check``, the body budget).

        Read afresh every time, never kept: a head carries the client's credentials (``Authorization``,
        ``x-api-key``: kept only as digests, docs/gateway.md) and its body's length, which changes with
        every prompt (a cache of heads, session 24, kept keys in plaintext and missed on varied lengths:
        review s24-rev-cpu24 F1/F2). One function again (session 25): the split into a part the head's
        bytes alone decide served only that cache, and cost a call and an 8-tuple per request."""
        nl = head.find(b"\r\n")
        if nl > 0:
            line = head[:nl]
        else:  # (rare: no header line, or an empty line first, at the front of a read: skipped)
            head = head[_empty_lines(head) :]
            nl = head.find(b"\r\n")
            line = head[:nl] if nl >= 0 else head
        try:
            method_b, target, version = line.split(b" ")
        except ValueError:  # (not three parts: no version, two spaces in a row, a space in the target)
            raise _BadRequest(400, "malformed request line") from None
        if version == b"HTTP/1.1":
            http11 = True
        elif version == b"HTTP/1.0":
            http11 = False
        else:
            raise _BadRequest(400, "unsupported request line")
        if not method_b.isalpha():
            raise _BadRequest(400, "unsupported request line")
        headers = _fields(head[nl + 2 :] + b"\r\n") if nl >= 0 else {}
        if headers is None:  # not the plain case: line by line, which says what is wrong
            headers = self._fields_slow(head)
        host = headers.get("host")
        if host is None:
            if http11:
                raise _BadRequest(400, "HTTP/1.1 request without a Host header")
        elif "," in host:  # (repeats are joined with ","; no authority holds one)
            # RFC 9112 §3.2: more than one Host line is a 400 (a proxy in front routing on the first and
            # the gateway on the last would disagree on the authority; review s21-qa F3).
            raise _BadRequest(400, "more than one Host header")
        server = self.server
        te = headers.get("transfer-encoding")
        cl = headers.get("content-length")
        if te is not None and cl is not None:
            raise _BadRequest(400, "both Content-Length and Transfer-Encoding")
        if te is not None:
            if not http11:  # RFC 9112 §6.1: faulty framing (400, then close)
                raise _BadRequest(400, "Transfer-Encoding in an HTTP/1.0 request")
            if te.strip().lower() != "chunked":
                raise _BadRequest(501, f"unsupported transfer-encoding {te!r}")
            length = -1
        else:
            # ASCII digits only: str.isdigit() alone takes other scripts' digits ("\u0661").
            if cl is not None and not (cl.isascii() and cl.isdigit()):
                raise _BadRequest(400, "invalid Content-Length")
            length = int(cl) if cl else 0
            if length > server.max_body:
                path = target.decode("latin-1").partition("?")[0]  # (for ``on_refused`` only)
                if path[:1] != "/":  # (absolute-form: its path, as routed; rev-b35 F3)
                    with contextlib.suppress(_BadRequest):  # (not a path: no route, no line)
                        path = _absolute_form(path, headers)
                raise _BadRequest(
                    413, f"request body of {length} bytes exceeds {server.max_body} bytes", length,
                    (method_b.decode(), path, headers),
                )  # fmt: skip
        path, _, query = target.decode("latin-1").partition("?")
        if path[:1] != "/":
            path = _absolute_form(path, headers)
        method = method_b.decode()
        conn = headers.get("connection")
        if conn is None:  # (the usual case: HTTP/1.1 keeps the connection, HTTP/1.0 closes it)
            keep_alive = http11
        else:
            conn = conn.lower()
            # ``close`` always wins (RFC 9112 9.6), beside ``keep-alive`` too (HTTP/1.0 "keep-alive, close").
            keep_alive = "close" not in conn and (http11 or "keep-alive" in conn)
        if length < 0:  # chunked
            self._ctrailer, self._cparts, self._ctotal = -1, [], 0
        check = server.head_check
        if check is not None:
            refusal = check(method, path, headers)
            if refusal is not None:
                raise _Refused(refusal, length, head=(method, path, headers))
        if length:
            budget = server.budget
            if length > 0 and length > budget.limit - budget.used:
                # Does not fit in what is free now: refused before its body is read. Nothing is reserved
                # here (a head that only announces a body would hold budget for free: s17-qafix-bc B1).
                raise _over_budget(budget.limit, length, (method, path, headers))
            expect = headers.get("expect")
            # (never to an HTTP/1.0 client, which has no interim answers: RFC 9110 10.1.1, 15.2; qa32a Q5)
            if expect is not None and http11 and expect.lower() == "100-continue":
                route_check = server.route_check
                if route_check is not None and (refusal := route_check(method, path)) is not None:
                    # (as the handler's answer: uncounted, its id and line given: rev-b35 F3)
                    raise _Refused(refusal, length, counted=False, head=(method, path, headers))
                if not self.busy and not self.queue:
                    # Only when nothing is being answered: never into the middle of an earlier pipelined
                    # response (the client sends the body anyway after its own short wait).
                    self.send(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.body_since = self._loop.time()
        return method, path, query, headers, keep_alive, length, http11

    @staticmethod
    def _fields_slow(head: bytes) -> dict[str, str]:
        """The header lines of ``head`` one by one (what ``_fields`` leaves: anything unusual, which
        this refuses with the reason, and non-ASCII values, kept as UTF-8 with surrogate escapes)."""
        lines = head.split(b"\r\n")
        headers: dict[str, str] = {}
        token = _TOKEN.fullmatch
        # One pass over the whole head for the usual case: no CR or LF but the line ends, no NUL.
        seps = len(lines) - 1
        suspect = b"\x00" in head or head.count(b"\r") != seps or head.count(b"\n") != seps
        for line in lines[1:]:
            if (
                not line
                or line[:1] in (b" ", b"\t")
                or (suspect and any(c in line for c in _BAD_HEADER_BYTES))
            ):
                raise _BadRequest(400, "malformed header line")
            name_b, sep, value_b = line.partition(b":")
            if not sep or token(name_b) is None:
                raise _BadRequest(400, "malformed header line: the name is not an RFC 9110 token")
            if _VALUE_CTL.search(value_b) is not None:
                raise _BadRequest(400, "malformed header line: a control character in the value")
            name = name_b.decode("latin-1").lower()
            value = value_b.strip().decode("utf-8", "surrogateescape")
            headers[name] = f"{headers[name]},{value}" if name in headers else value
        return headers

    def _chunked(self) -> bytes | None:
        """Continue decoding a chunked body (state kept across reads); the body once complete.

        Lines end in CRLF only (RFC 9112 §7.1; its §2.2 leniency is for the start line and fields): a
        bare LF anywhere in a chunk line is refused as soon as it is seen, as is a line the chunk grammar
        does not produce (an LF or CR inside an extension would be read as a line end by a front that
        ends lines at LF: two framings of one body, request smuggling)."""
        buf = self.buf
        while True:
            if self._ctrailer >= 0:
                return self._trailers()
            nl = buf.find(b"\n")
            if nl < 0 or nl > _MAX_CHUNK_LINE:
                if len(buf) > _MAX_CHUNK_LINE:
                    raise _BadRequest(400, "chunk size line too long")
                return None
            if nl == 0 or buf[nl - 1] != 0x0D:
                raise _BadRequest(400, "malformed chunk: a line ends in a bare LF, not CRLF")
            m = _CHUNK_LINE.fullmatch(buf, 0, nl - 1)
            if m is None:
                raise _BadRequest(400, "invalid chunk size")
            size = int(m.group(1), 16)
            if size == 0:
                del buf[: nl + 1]
                self._ctrailer = 0  # the trailer section follows, up to its empty line
                continue
            if self._ctotal + size > self.server.max_body:
                raise _BadRequest(413, f"request body exceeds {self.server.max_body} bytes")
            start = nl + 1
            end = start + size
            if len(buf) < end + 2:
                if len(buf) > end and buf[end] != 0x0D:  # (said at once, not when a second byte comes)
                    raise _BadRequest(400, "missing CRLF after chunk")
                return None
            if buf[end : end + 2] != b"\r\n":
                raise _BadRequest(400, "missing CRLF after chunk")
            self._cparts.append(bytes(buf[start:end]))
            self._ctotal += size
            del buf[: end + 2]

    def _trailers(self) -> bytes | None:
        """The trailer section after the last chunk, line by line as it arrives: each a header line
        (checked as ``_fields_slow`` checks one; dropped, not passed on: RFC 9110 §6.5.1), the section
        bounded like a head (431); the body once its empty line came."""
        buf = self.buf
        while True:
            nl = buf.find(b"\n")
            if nl < 0:
                if self._ctrailer + len(buf) > _MAX_HEAD:
                    raise _BadRequest(431, "chunked trailers too large")
                return None
            if nl == 0 or buf[nl - 1] != 0x0D:
                raise _BadRequest(400, "malformed chunk: a trailer line ends in a bare LF, not CRLF")
            self._ctrailer += nl + 1
            if self._ctrailer > _MAX_HEAD:
                raise _BadRequest(431, "chunked trailers too large")
            if nl > 1:
                name, sep, value = bytes(buf[: nl - 1]).partition(b":")
                if not sep or _TOKEN.fullmatch(name) is None or _VALUE_CTL.search(value) is not None:
                    raise _BadRequest(400, "malformed chunked trailer line")
                del buf[: nl + 1]
                continue
            del buf[:2]  # the section's end
            self._ctrailer = -1
            body = b"".join(self._cparts)
            self._cparts = []
            return body

    # --- dispatch -------------------------------------------------------------------------------
    def _enqueue(self, req: Request) -> None:
        self.queue.append(req)
        if len(self.queue) > _MAX_PIPELINE and not self._read_paused and self.transport is not None:
            self._read_paused = True
            self.transport.pause_reading()
        self._next()

    def _next(self) -> None:
        """A request is queued: wake the connection's task if it waits for one, or start it."""
        if self.busy or not self.queue or self.closed:
            return
        wake = self._wake
        if wake is not None:
            self._wake = None
            if not wake.done():  # (cancelled: the task is ending, as the connection is)
                wake.set_result(None)
        elif self.task is None:
            self.task = self._loop.create_task(self._serve())

    async def _serve(self) -> None:
        """The connection's task: each queued request answered in turn, then a wait for the next.
        A request leaves the queue only here, so one never taken (the task cancelled before it ran, the
        connection lost) is still queued and ``connection_lost`` gives back its body's budget; one taken
        gives it back once answered (or cancelled). (The answer is written here, not in a coroutine of
        its own: one coroutine object and one layer of every wake-up fewer per request.)"""
        # (the answer's locals, emptied after each answer: nothing of it is kept while the connection
        # waits for its next request)
        resp: Response | StreamResponse | None = None
        release: Callable[[], None] | None = None
        body = head = b""
        try:
            while not self.closed:
                if not self.queue:
                    self._wake = wake = self._loop.create_future()
                    await wake
                    continue
                req = self.queue.popleft()
                if (
                    self._read_paused
                    and not self._reject_after  # (after a refusal the pace lets it read: ``_linger``)
                    and len(self.queue) <= _MAX_PIPELINE // 2
                    and self.transport is not None
                ):
                    self._read_paused = False
                    self.transport.resume_reading()
                self.busy = True
                try:
                    # Answer ``req``; ``close``: the connection closes after it, not going on to the next.
                    close = not req.keep_alive
                    try:
                        if req.error is not None:
                            resp = req.error
                        else:
                            try:
                                # (an exact route without ``handler_for``'s call: the usual case)
                                server = self.server
                                handler = server.routes.get(req.path) or server.handler_for(req.path)
                                resp = await handler(req)
                            except Exception:
                                log.exception("unhandled error serving %s %s", req.method, req.path)
                                resp = _error(500, "internal error in the gateway")
                        # (re-read: a stream's ``prepare`` turned ``keep_alive`` off when its head said
                        # ``Connection: close``, an HTTP/1.0 one's body ending only at the close. Review
                        # s18-qa2 M2.)
                        close = close or not req.keep_alive
                        if isinstance(resp, StreamResponse):
                            if not resp.prepared:  # a handler returned a stream it never started
                                resp = _error(500, "empty stream")
                            elif not resp.ended and not self.closed:
                                await resp.write_eof()
                        if not close and self.server.draining:
                            # The drain closes the connection after this answer, unless a request
                            # already received (queued, or still arriving) waits behind it: that one is
                            # answered next (the gateway's 503 "shutting down", Connection: close), not
                            # dropped with an EOF its client cannot tell from a lost answer (qa33b-F1).
                            # (``reads_done`` waits for it too; a lost connection's never ends)
                            # Received: in the front's hands, or still unread in the kernel (one
                            # ``poll(0)``, only here: closing with unread bytes resets, rev-a33-F1).
                            # Once per connection: the next answer closes it whatever is queued behind,
                            # or a client that keeps pipelining would hold it to the deadline (rev-a33-F2).
                            if (
                                not self._drain_kept
                                and not self.closed
                                and (self.queue or self.buf or self._pending is not None or _readable([self]))
                            ):
                                self._drain_kept = True
                                self.server._reading(self)
                            else:
                                close = True
                        if isinstance(resp, Response):
                            close = close or resp.close
                            body = b"" if req.method == "HEAD" else resp.body  # HEAD: headers only
                            head = _head(
                                resp.status,
                                resp.headers,
                                resp.content_type,
                                len(resp.body),
                                close,
                                not req.http11,
                                resp.set_cookies,
                            )
                            release, resp.release = resp.release, None
                            if release is None:
                                self.send(head + body)
                                if self.write_paused and not close:
                                    # A pipelining client that does not read: answer its next request
                                    # only once this one left the buffer (bounded output; the send
                                    # deadline applies meanwhile).
                                    await self.drain()
                            else:
                                # A large body (review s17-bigbody M3): head and body written apart (no
                                # joined copy), the response's reference dropped (the transport's is
                                # the one copy left), and released only once the client took it, past
                                # ``write_buffer_bytes``, or left.
                                try:
                                    self.send(head, body)
                                    resp.body = body = b""
                                    if self.write_paused:
                                        await self.drain()
                                finally:
                                    release()
                    except ConnectionResetError:
                        close = True
                    if req.error is not None and self._linger_after and not self.closed:
                        self._linger()
                        close = True
                    elif close or (self._reject_after and not self.queue):
                        # (a refusal queued behind this answer goes out next: closing here lost it, the
                        # client got the earlier answer and then the end; found fixing review s21-gw M1)
                        self.close()
                        close = True
                    elif not self.queue:
                        self._arm_idle()
                finally:
                    self.busy = False
                    held = req.held
                    if held:  # (``_give`` and ``ByteBudget.give`` inlined: once per request)
                        req.held = 0
                        budget = self.server.budget
                        left = budget.used - held
                        budget.used = left if left > 0 else 0
                del req  # (not kept, nor its body, while the connection waits for its next request)
                resp = release = None
                body = head = b""
                if close:
                    return
        finally:
            self.task = self._wake = None

    def _linger(self) -> None:
        """After a refusal (400, 413, 431, 501, 503, 401) the client may still be sending its request:
        closing with its bytes unread resets the connection, and a reset can cost the client the answer.
        Half-close (the client reads the answer, then the end), keep reading (and dropping) for up to
        ``LINGER_S`` (``_drop``), then close (``linger_ended``). Over TLS (no half-close) close now."""
        assert self.transport is not None
        self.linger_until = self._loop.time() + LINGER_S
        self._linger_size = self.transport.get_write_buffer_size()
        if self.transport.can_write_eof():
            self.transport.write_eof()
            server = self.server
            if not self._read_paused and (server._pace_waiting or server.linger_pace.due(self._loop.time())):
                # (others wait, or the pace is in debt: reading at once would go ahead of them and add
                # to the debt, review s22-gw F1; it waits its turn)
                self._read_paused = True
                self.transport.pause_reading()
            if self._read_paused:  # (paused by ``_drop`` while earlier answers went out, or just now)
                server.pace_wait(self)
        else:
            self.close()

    def linger_ended(self) -> None:
        """The linger's time is up (the sweeper). A client still taking output (the buffer shrank since
        the linger began) gets a close, which flushes under the send deadline; one that took nothing is
        aborted (review s21-gw L2: an abort cut a slow reader's earlier answers and the refusal)."""
        size = self.transport.get_write_buffer_size() if self.transport is not None else 0
        if size and size < self._linger_size:
            self.linger_until = None
            self.close()
        else:
            self.abort()

    # --- output ---------------------------------------------------------------------------------
    def send(self, data: bytes | memoryview, more: bytes = b"") -> None:
        """Write ``data`` (and ``more`` after it: two writes, not a joined copy)."""
        if not self.closed and self.transport is not None:
            if self.transport.get_write_buffer_size() > self.server.write_buffer_bytes:
                # A writer that ignored back-pressure: the bound is hard, drop the connection.
                self.abort()
                return
            self.transport.write(data)
            if more:
                self.transport.write(more)

    def _arm_idle(self) -> None:
        self.idle_since = None
        if (
            self.server.draining
            and not self.buf
            and self._pending is None
            and not (self.busy and self._drain_kept)
        ):
            # (kept by ``_serve`` for bytes still unread in the kernel: closing now would reset them)
            self.close()
            return
        if not self.closed and not self.buf:
            self.idle_since = self._loop.time()

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.idle_since = None
            if self.transport.get_write_buffer_size() and self.blocked_since is None:
                # close() flushes first; a client that never reads would hold the socket forever, so
                # the send deadline covers the flush too.
                self.blocked_since = self._loop.time()
                self._blocked_size = self.transport.get_write_buffer_size()
            self.transport.close()

    def abort(self, reset: bool = False) -> None:
        """Drop the connection now (unsent output too); ``reset``: with a TCP reset (RST), never a
        clean close (SO_LINGER 0). A connection carrying a close-delimited (HTTP/1.0) body always
        resets: the send deadline, ``send``'s hard bound and ``close_all`` cut it as the handler's
        ``StreamResponse.abort`` does, and a clean close would be its complete end (review s17-fixes-b
        L2)."""
        if not self.closed and self.transport is not None:
            if reset or self.close_delimited:
                sock = self.transport.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            self.transport.abort()


__all__ = [
    "FrontLimits",
    "FrontServer",
    "Request",
    "Response",
    "StreamResponse",
    "connection_cap",
    "get_only",
    "json_error",
    "parse_limits",
]
