"""The upstream client's response parsing (llhttp via httptools): malformed responses fail at once with a
clear ``UpstreamError`` (never a wait for the idle timeout, never a response read wrongly), limits hold,
the reuse rules hold, and any bytes split anywhere give either a parsed response or a clean error."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.conftest import read_body
from kvgate.gateway.upstream import _CHUNK_LINE, _MAX_HEAD, _MAX_HEADERS, UpstreamError, UpstreamPool, _Conn


class _Transport:
    def __init__(self) -> None:
        self.aborted = False
        self.paused = False

    def abort(self) -> None:
        self.aborted = True

    def close(self) -> None:
        self.aborted = True

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


def _feed(wire: bytes, cuts: list[int] | None = None, close: bool = False) -> _Conn:
    """A connection with a request outstanding, fed ``wire`` in pieces of the sizes in ``cuts``."""
    conn = _Conn(UpstreamPool(1.0, 1.0), "x:1")
    conn.transport = _Transport()  # type: ignore[assignment]
    conn.busy = True
    i = 0
    for n in cuts or []:
        if i >= len(wire):
            break
        conn.data_received(wire[i : i + n])
        i += n
    if i < len(wire):
        conn.data_received(wire[i:])
    if close:
        conn.connection_lost(None)
    return conn


def _body(conn: _Conn) -> bytes:
    return b"".join(conn.body)


OK = b"HTTP/1.1 200 OK\r\n"

# (wire, what the error says): each is refused while the response is read, before any close.
MALFORMED = {
    "junk status line": (b"XXXXXXXXX200 OK\r\nContent-Length: 2\r\n\r\nok", "Expected HTTP/"),
    "bare LF line ends": (b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok", "CR"),
    "HTTP/2 status line": (b"HTTP/2 200\r\n\r\n", "malformed"),
    "bad chunk size": (OK + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n", "malformed"),
    "no CRLF after chunk data": (OK + b"Transfer-Encoding: chunked\r\n\r\n2\r\nokXX0\r\n\r\n", "chunk data"),
    "chunk size overflow": (OK + b"Transfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\n", "overflow"),
    "Content-Length with chunked": (
        OK + b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        "Content-Length",
    ),
    "two Content-Lengths": (OK + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\nok", "Duplicate"),
    "negative Content-Length": (OK + b"Content-Length: -2\r\n\r\nok", "Content-Length"),
    "Content-Length not digits": (OK + b"Content-Length: 2x\r\n\r\nok", "Content-Length"),
    "Transfer-Encoding gzip": (OK + b"Transfer-Encoding: gzip\r\n\r\nok", "only chunked"),
    "Transfer-Encoding gzip, chunked": (
        OK + b"Transfer-Encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        "only chunked",
    ),
    "Transfer-Encoding gzip then chunked, two lines": (
        OK + b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        "only chunked",
    ),
    "obs-fold header": (OK + b"X-A: a\r\n b\r\nContent-Length: 2\r\n\r\nok", "malformed"),
    "space in a header name": (OK + b"Content Length: 2\r\n\r\nok", "header"),
    "protocol upgrade": (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: ws\r\nConnection: upgrade\r\n\r\n",
        "upgrade",
    ),
    "too many headers": (
        OK + b"".join(b"X-%d: v\r\n" % i for i in range(_MAX_HEADERS + 1)) + b"Content-Length: 0\r\n\r\n",
        "header lines",
    ),
    "head too large (one header)": (
        OK + b"X-Big: " + b"a" * (_MAX_HEAD + 10) + b"\r\n\r\n",
        "head too large",
    ),
    "head too large (never ends)": (OK + b"X-Big: " + b"a" * (_MAX_HEAD + 10), "head too large"),
    "endless interim heads": (b"HTTP/1.1 100 Continue\r\n\r\n" * (_MAX_HEAD // 20), "head too large"),
    "endless chunk extension": (
        OK + b"Transfer-Encoding: chunked\r\n\r\n2;ext=" + b"x" * (2 * _MAX_HEAD + 10),
        "chunk lines or trailers too large",
    ),
    "endless trailer": (
        OK
        + b"Transfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-T: "
        + b"t" * (2 * _MAX_HEAD + 4 * _CHUNK_LINE),
        "too large",
    ),
}


@pytest.mark.parametrize("name", list(MALFORMED))
@pytest.mark.parametrize("split", [0, 1, 7])
def test_a_malformed_response_fails_at_once_with_a_clear_error(name, split):
    wire, says = MALFORMED[name]
    cuts = [split] * (len(wire) // split + 1) if split else None
    if split == 1 and len(wire) > 4096:
        cuts = [1] * 200 + [4096] * (len(wire) // 4096 + 1)  # (byte by byte at first; then faster)
    conn = _feed(wire, cuts)
    assert isinstance(conn.error, UpstreamError), (name, conn.done, _body(conn))
    assert says.lower() in str(conn.error).lower()
    assert conn.address in str(conn.error)
    assert conn.transport.aborted  # type: ignore[union-attr]
    assert not conn.keep_alive


def test_header_limits_are_exact():
    """_MAX_HEADERS lines and a head of _MAX_HEAD bytes pass; one more line fails."""
    lines = b"".join(b"X-%d: v\r\n" % i for i in range(_MAX_HEADERS - 1))
    conn = _feed(OK + lines + b"Content-Length: 2\r\n\r\nok")
    assert conn.error is None and conn.done and _body(conn) == b"ok"
    pad = _MAX_HEAD - len(b"Content-Length") - 1 - 4 - len(b"X-Big") - 4
    conn = _feed(OK + b"X-Big: " + b"a" * pad + b"\r\nContent-Length: 2\r\n\r\nok")
    assert conn.error is None and conn.done
    conn = _feed(OK + b"X-Big: " + b"a" * (pad + 1) + b"\r\nContent-Length: 2\r\n\r\nok")
    assert conn.error is not None and "head too large" in str(conn.error)


def test_framing_and_reuse_rules():
    # 204 and 304 have no body, whatever the head says; the connection stays reusable.
    for status in (b"204 No Content", b"304 Not Modified"):
        conn = _feed(b"HTTP/1.1 " + status + b"\r\nContent-Length: 5\r\n\r\n")
        assert conn.done and conn.keep_alive and conn.head is not None and _body(conn) == b""
    # Interim 1xx heads are skipped; the final head's headers only.
    conn = _feed(b"HTTP/1.1 100 Continue\r\nX-I: 1\r\n\r\n" + OK + b"Content-Length: 2\r\n\r\nok")
    assert conn.head is not None and conn.head.status == 200 and "x-i" not in conn.head.headers
    assert conn.done and _body(conn) == b"ok" and conn.keep_alive
    # Names lower-cased, values trimmed, a repeated header's lines joined (Set-Cookie's by a newline, the
    # last of Content-Type / Content-Length / Retry-After wins: rev-e32 F1), trailers dropped.
    conn = _feed(
        OK + b"Content-Type: text/plain\r\nContent-Type:  text/event-stream; charset=utf-8 \r\n"
        b"X-R: 1\r\nX-R: 2\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2; Expires=Wed, 21 Oct 2037 07:28:00 GMT\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n2;e=1\r\nok\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    assert conn.head is not None and conn.head.content_type == "text/event-stream"
    assert conn.head.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert conn.head.headers["x-r"] == "1, 2" and "x-trailer" not in conn.head.headers
    assert conn.head.headers["set-cookie"] == "a=1\nb=2; Expires=Wed, 21 Oct 2037 07:28:00 GMT"
    assert conn.done and conn.keep_alive and _body(conn) == b"ok"
    # Not reusable: Connection: close; HTTP/1.0 (keep-alive or not); a body framed by the close.
    for head in (
        OK + b"Connection: close\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\n",
    ):
        conn = _feed(head + b"ok")
        assert conn.done and _body(conn) == b"ok" and not conn.keep_alive, head
    conn = _feed(OK + b"\r\nuntil the close")
    assert not conn.done and conn.error is None and not conn.keep_alive
    conn.connection_lost(None)  # a clean close ends it
    assert conn.done and conn.error is None and _body(conn) == b"until the close"
    conn = _feed(OK + b"\r\ncut short")
    conn.connection_lost(ConnectionResetError("reset"))  # a reset does not: the body was cut
    assert isinstance(conn.error, UpstreamError) and "connection closed" in str(conn.error)


def test_bytes_past_the_end_are_delivered_but_the_connection_is_not_reused():
    for extra in (b"garbage", OK + b"Content-Length: 1\r\n\r\nx", b"H"):
        conn = _feed(OK + b"Content-Length: 2\r\n\r\nok" + extra)
        assert conn.done and conn.error is None and _body(conn) == b"ok"
        assert conn.extra, extra
        conn = _feed(OK + b"Content-Length: 2\r\n\r\nok", [len(OK) + 21])  # in two reads
        assert conn.done and not conn.extra
        conn.data_received(extra)  # a later read past the end
        assert conn.extra and not conn.keep_alive


def test_a_cut_response_fails_on_close():
    for wire in (
        OK + b"Content-Length: 10\r\n\r\nonly5",
        OK + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        OK + b"Content-Le",
        b"HTTP/1.1 100 Continue\r\n\r\n",
    ):
        conn = _feed(wire, close=True)
        assert isinstance(conn.error, UpstreamError) and "connection closed" in str(conn.error), wire


# --- fuzz ---------------------------------------------------------------------------------------

_token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-0123456789", min_size=1, max_size=12).filter(
    lambda n: n not in ("content-length", "transfer-encoding", "connection", "upgrade")
)
_value = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=20)


@st.composite
def _responses(draw):
    """A valid response: (wire, status, body, headers it must show, framing)."""
    status = draw(st.sampled_from([200, 201, 204, 304, 400, 404, 429, 500, 503]))
    headers = draw(st.dictionaries(_token, _value, max_size=6))
    framing = draw(st.sampled_from(["length", "chunked", "close"]))
    body = b"" if status in (204, 304) else draw(st.binary(max_size=300))
    head = b"".join(b"HTTP/1.1 100 Continue\r\n\r\n" for _ in range(draw(st.integers(0, 2))))
    head += b"HTTP/1.1 %d X\r\n" % status + b"".join(f"{k}: {v}\r\n".encode() for k, v in headers.items())
    if status in (204, 304):
        wire, framing = head + b"\r\n", "none"
    elif framing == "length":
        wire = head + b"Content-Length: %d\r\n\r\n" % len(body) + body
    elif framing == "chunked":
        cuts = sorted(draw(st.lists(st.integers(1, max(1, len(body))), max_size=6)))
        parts = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
        wire = head + b"Transfer-Encoding: chunked\r\n\r\n"
        wire += b"".join(b"%x;e=1\r\n%s\r\n" % (len(p), p) for p in parts if p)
        wire += b"0\r\n" + (b"X-T: 1\r\n" if draw(st.booleans()) else b"") + b"\r\n"
    else:
        wire = head + b"\r\n" + body
    return wire, status, body, {k.lower(): v.strip() for k, v in headers.items()}, framing


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(resp=_responses(), cuts=st.lists(st.integers(1, 64), max_size=30))
def test_fuzz_a_valid_response_split_anywhere_parses_the_same(resp, cuts):
    wire, status, body, headers, framing = resp
    conn = _feed(wire, cuts, close=framing == "close")
    assert conn.error is None and conn.done
    assert conn.head is not None and conn.head.status == status
    assert {k: conn.head.headers[k] for k in headers} == headers
    assert _body(conn) == body
    assert conn.keep_alive == (framing != "close") and not conn.extra
    if conn.keep_alive:  # the same parser reads the next exchange after reset()
        conn.reset()
        conn.busy = True
        conn.data_received(OK + b"Content-Length: 4\r\n\r\nnext")
        assert conn.error is None and conn.done and _body(conn) == b"next" and conn.keep_alive


def _check_clean(conn: _Conn) -> None:
    """After the bytes and a close: a complete response, or an UpstreamError; nothing in between."""
    if conn.error is not None:
        assert isinstance(conn.error, UpstreamError)
        assert not conn.keep_alive or conn.closed
    else:
        assert conn.done and conn.head is not None and conn.head.status >= 200


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    resp=_responses(),
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.binary(max_size=3)), max_size=3),
    cuts=st.lists(st.integers(1, 64), max_size=20),
)
def test_fuzz_a_damaged_response_parses_or_fails_cleanly(resp, edits, cuts):
    wire = bytearray(resp[0])
    for at, new in edits:  # replace a byte (or delete it, or insert a few)
        i = at % (len(wire) + 1)
        wire[i : i + 1] = new
    conn = _feed(bytes(wire), cuts, close=True)
    _check_clean(conn)


@settings(max_examples=300, deadline=None)
@given(
    prefix=st.sampled_from(
        [b"", OK, OK + b"Transfer-Encoding: chunked\r\n\r\n", OK + b"Content-Length: 9\r\n\r\n"]
    ),
    data=st.binary(max_size=400),
    cuts=st.lists(st.integers(1, 64), max_size=20),
)
def test_fuzz_arbitrary_bytes_parse_or_fail_cleanly(prefix, data, cuts):
    conn = _feed(prefix + data, cuts)  # no exception escapes data_received
    assert conn.error is None or isinstance(conn.error, UpstreamError)
    conn.connection_lost(None)
    _check_clean(conn)


# --- over real sockets: no hang, no stale answers -------------------------------------------------------


async def _serve_once(reply: bytes) -> tuple[asyncio.Server, int]:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(2)
            writer.write(reply)
            await writer.drain()
            await asyncio.sleep(30)  # hold the connection: a parser that waits for more would hang
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


_HEAD = b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n"


@pytest.mark.parametrize(
    "name",
    [
        "bare LF line ends",
        "protocol upgrade",
        "Transfer-Encoding gzip",
        "endless trailer",
        "junk status line",
    ],
)
async def test_a_malformed_response_over_a_socket_is_an_error_not_a_hang(name):
    wire = MALFORMED[name][0]
    server, port = await _serve_once(wire)
    pool = UpstreamPool(1.0, 30.0)  # the idle timeout is far: only a prompt error passes

    async def exchange() -> bytes:
        resp = await pool.request(f"127.0.0.1:{port}", _HEAD, b"{}")
        try:
            return await read_body(resp)
        finally:
            resp.release()

    with pytest.raises(UpstreamError, match="malformed"):
        await asyncio.wait_for(exchange(), 5)
    assert not pool._idle.get(f"127.0.0.1:{port}")  # not reused
    pool.close()
    server.close()


async def test_bytes_on_an_idle_connection_drop_it_and_are_never_read_as_the_next_answer():
    connections = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        first = connections == 1
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                await reader.readexactly(2)
                writer.write(OK + b"Content-Length: 5\r\n\r\n" + (b"first" if first else b"fresh"))
                if first:  # then, unasked, a second answer while the connection idles in the pool
                    await asyncio.sleep(0.05)
                    writer.write(OK + b"Content-Length: 5\r\n\r\nstale")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    address = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    pool = UpstreamPool(1.0, 5.0)
    resp = await pool.request(address, _HEAD, b"{}")
    assert await read_body(resp) == b"first"
    resp.release()
    await asyncio.sleep(0.2)
    resp = await asyncio.wait_for(pool.request(address, _HEAD, b"{}"), 5)
    assert await read_body(resp) == b"fresh"  # on a new connection, not the stale bytes
    resp.release()
    assert connections == 2
    pool.close()
    server.close()
