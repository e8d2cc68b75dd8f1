"""Session-20 closing note (qa20's HTTP items): a chunked request body's lines and a refusal's close.

RFC 9112 §7.1 frames chunks with CRLF only (its §2.2 leniency for a bare LF covers the start line and
fields, not chunks; erratum 7633 keeps chunked strict); nginx (PR 1016, December 2025), Go
(CVE-2025-22871), netty and h2o refuse a bare LF in a chunk line, hyper an LF in an extension: a front that
ends a chunk line at an LF and one that reads the LF as extension text frame the body differently
(request smuggling, "funky chunks"). The front refuses it with 400 at once: before, a chunk size line
ending in a bare LF waited ``bodyTimeoutSeconds`` (60 s) for a 408, and an LF inside a chunk extension
was taken as extension text (the request answered).
Trailer lines are header lines: checked as such (400) and bounded like the head (431); before, they were
not checked at all and only each line was bounded. Over raw sockets, the deadlines far away (60 s)."""

from __future__ import annotations

import asyncio
import itertools
import socket

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.front_transport import FrontTransport
from gateway.test_hot_path import _parsed
from kvgate.httpfront.server import LINGER_S, FrontServer, Request, Response

_HEAD = b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"


async def _exchange(raw: bytes, wait_s: float = 5.0) -> tuple[list[bytes], bytes]:
    """``raw`` sent on one connection; the bodies the handler saw and what came back until the server
    closed (or ``wait_s``: a request the front still waits on)."""
    seen: list[bytes] = []

    async def handler(req: Request) -> Response:
        seen.append(req.body)
        return Response(body=b"ok")

    front = FrontServer({"/a": handler}, handler, max_body=1 << 20, body_timeout_s=60.0)
    server = await asyncio.get_running_loop().create_server(front.protocol, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    out = b""
    try:
        async with asyncio.timeout(wait_s):
            while chunk := await reader.read(65536):  # until the server closes (half-closes)
                out += chunk
    except TimeoutError:
        pass
    finally:
        writer.close()
        front.close_all()
        server.close()
    return seen, out


def _status(out: bytes) -> int:
    return int(out[9:12]) if out.startswith(b"HTTP/1.1 ") else 0


# A bare LF in a chunk line, each refused with 400 as soon as it is seen (FAILED before, all but "size
# line, data and CRLF after": those that never complete a CRLF waited for the body deadline, the others
# were read and answered 200).
BARE_LF = {
    "last chunk, all bare LF": b"0\n\n",
    "size line, the data still to come": b"5\n",
    "size line, data and CRLF after": b"5\nhello\r\n0\r\n\r\n",
    "an LF in an extension": b"5;a\nb\r\nhello\r\n0\r\n\r\n",
    "an LF before the CRLF": b"5\n\r\nhello\r\n0\r\n\r\n",
    "after a chunk's data": b"5\r\nhello\n",
    "a trailer line": b"0\r\nx-t: 1\n",
    "the trailer section's end": b"0\r\n\n",
}


@pytest.mark.parametrize("raw", list(BARE_LF.values()), ids=list(BARE_LF))
async def test_a_bare_lf_in_a_chunk_line_gets_400_at_once(raw: bytes) -> None:
    seen, out = await _exchange(_HEAD + raw)
    assert _status(out) == 400, out[:80]
    assert not seen
    assert b"Connection: close" in out


# A chunk line the RFC 9112 §7.1 grammar does not produce (FAILED before: read as a size, answered 200).
MALFORMED = {
    "a lone CR in an extension": b"5;a\rb\r\nhello\r\n0\r\n\r\n",
    "a space before the size": b" 5\r\nhello\r\n0\r\n\r\n",
    "an extension without a name": b"5;\r\nhello\r\n0\r\n\r\n",
    "a NUL in an extension": b"5;a=\x00\r\nhello\r\n0\r\n\r\n",
    "a trailer without a colon": b"0\r\nno-colon\r\n\r\n",
    "a trailer name not a token": b"0\r\nx t: 1\r\n\r\n",
    "a folded trailer": b"0\r\nx-t: 1\r\n folded\r\n\r\n",
    "a control byte in a trailer value": b"0\r\nx-t: a\x01b\r\n\r\n",
}


@pytest.mark.parametrize("raw", list(MALFORMED.values()), ids=list(MALFORMED))
async def test_a_malformed_chunk_or_trailer_line_gets_400(raw: bytes) -> None:
    seen, out = await _exchange(_HEAD + raw)
    assert _status(out) == 400, out[:80]
    assert not seen


async def test_the_trailer_section_is_bounded_like_the_head() -> None:
    # 100 KB of trailer lines, each short (FAILED before: only a line was bounded, all of them taken).
    trailers = b"".join(b"x-t%d: %s\r\n" % (i, b"v" * 90) for i in range(1000))
    seen, out = await _exchange(_HEAD + b"3\r\nabc\r\n0\r\n" + trailers + b"\r\n")
    assert _status(out) == 431, out[:80]
    assert b"trailer" in out
    assert not seen


ACCEPTED = {
    "plain": (b"3\r\nabc\r\n0\r\n\r\n", b"abc"),
    "upper-case hex, leading zeros": (b"00A\r\n0123456789\r\n000\r\n\r\n", b"0123456789"),
    "extensions (token, quoted, BWS)": (
        b'3;a=1 ; b = "q \\" ;x" ;c\r\nabc\r\n0;last\r\n\r\n',
        b"abc",
    ),
    "space after the size": (b"3 \r\nabc\r\n0\t\r\n\r\n", b"abc"),
    "trailers": (b"3\r\nabc\r\n0\r\nx-t: 1\r\nX-Checksum:\tab c\r\n\r\n", b"abc"),
    "many chunks": (b"1\r\na\r\n1\r\nb\r\n1\r\nc\r\n0\r\n\r\n", b"abc"),
}


@pytest.mark.parametrize("raw,body", list(ACCEPTED.values()), ids=list(ACCEPTED))
async def test_well_formed_chunked_bodies_are_read(raw: bytes, body: bytes) -> None:
    head = _HEAD.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
    seen, out = await _exchange(head + raw)
    assert seen == [body] and _status(out) == 200, out[:80]


async def test_well_formed_chunked_bodies_read_alike_one_byte_at_a_time() -> None:
    """Every accepted body, fed a byte per read, then a pipelined request after it: the same bodies
    (the line checks keep no state that a cut could fool)."""
    raw = b"".join(_HEAD + r for r, _ in ACCEPTED.values())
    raw += b"GET /a HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    seen, out = await _parsed([raw[i : i + 1] for i in range(len(raw))])
    assert [s[4] for s in seen] == [b for _, b in ACCEPTED.values()] + [b""]
    assert out.count(b"HTTP/1.1 200 ") == len(ACCEPTED) + 1


# --- a refusal lingers (qa20: the 431 could reach the client as a reset) ---------------------------


def _send_then_read(port: int, raw: bytes, got: list[object]) -> None:
    """A plain blocking client: writes its whole request, then reads the answer to its end."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.settimeout(10)
        try:
            s.sendall(raw)
        except OSError as e:  # (the server may stop reading: the answer is what counts)
            got.append(e)
        out = b""
        try:
            while data := s.recv(65536):
                out += data
            got.append(out)
        except OSError as e:
            got.append(out)
            got.append(e)


async def _refused_while_sending(raw: bytes) -> list[object]:
    async def handler(req: Request) -> Response:
        return Response(body=b"ok")

    front = FrontServer({"/a": handler}, handler, max_body=1 << 20)
    server = await asyncio.get_running_loop().create_server(front.protocol, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    got: list[object] = []
    try:
        await asyncio.to_thread(_send_then_read, port, raw, got)
    finally:
        front.close_all()
        server.close()
    return got


@pytest.mark.parametrize(
    "raw,status",
    [
        # a header block past 64 KiB, the client still sending it (FAILED before: the answer, then a reset)
        (b"GET /a HTTP/1.1\r\nHost: h\r\nX-Big: " + b"a" * (512 << 10), 431),
        # a bad chunk while the body is still coming (FAILED before: the same)
        (_HEAD + b"zz\r\n" + b"b" * (512 << 10), 400),
    ],
    ids=["431", "400"],
)
async def test_a_refusal_reaches_a_client_still_sending_then_a_clean_close(raw: bytes, status: int) -> None:
    got = await _refused_while_sending(raw)
    out = next(g for g in got if isinstance(g, bytes))
    assert _status(out) == status, got
    assert orjson.loads(out.split(b"\r\n\r\n", 1)[1])["error"]["message"]
    assert not [g for g in got if isinstance(g, OSError)], got  # read to its end: no reset


@pytest.mark.parametrize(
    "raw,status",
    [
        (b"GET /a HTTP/1.1\r\nHost: h\r\nX-Big: " + b"a" * (70 << 10), 431),
        # (announcing 2 MB: past its Content-Length and a head the linger closes, gw22)
        (b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 2000000\r\n\r\n", 413),
    ],
    ids=["431", "413"],
)
async def test_a_refused_connection_reads_a_bounded_amount_then_stops_reading(
    raw: bytes, status: int
) -> None:
    """While an earlier pipelined answer is still going out (no linger yet, so no time bound), the front
    reads and drops what follows a refusal up to what an accepted request could make it read
    (``max_body`` and a 64 KiB head), then stops reading (before gw21: unbounded). Once the refusal
    is out it half-closes and reads again, bounded by time only (review s21-gw M1: a byte cap there stalled
    a client sending its whole body before reading), until the linger's end closes it (time injected).
    FAILED on main before fixgw21: the earlier answer closed the connection, the refusal never went out."""
    release = asyncio.Event()

    async def slow(req: Request) -> Response:
        await release.wait()
        return Response(body=b"ok")

    front = FrontServer({"/slow": slow}, slow, max_body=100_000)
    proto = front.protocol()
    transport = FrontTransport()
    proto.connection_made(transport)  # type: ignore[arg-type]
    try:
        proto.data_received(b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\n" + raw)
        for _ in range(20):
            await asyncio.sleep(0)
        assert not transport.out  # the first answer is still being made: the refusal waits
        sent = 0
        while transport.reading and sent < 100 << 20:
            proto.data_received(b"a" * 16384)
            sent += 16384
        assert not transport.reading
        assert sent <= 100_000 + (64 << 10) + 16384, sent
        release.set()
        for _ in range(20):
            await asyncio.sleep(0)
        assert transport.out.startswith(b"HTTP/1.1 200 "), transport.out[:60]
        assert b"HTTP/1.1 %d " % status in transport.out, transport.out[:200]
        assert transport.eof and not transport.closed and transport.reading  # half-closed, lingering
        for _ in range(64):  # 1 MiB more, ten times max_body: dropped, still reading
            proto.data_received(b"a" * 16384)
        assert transport.reading and not transport.closed
        front.sweep(asyncio.get_running_loop().time() + LINGER_S + 0.01)
        assert transport.closed  # the linger's end
    finally:
        front.close_all()


_EXT = st.sampled_from([b"", b";a", b";a=1", b' ; n = "q \\" x"', b";a;b=c", b"\t"])


@settings(max_examples=150, deadline=None)
@given(
    parts=st.lists(st.tuples(st.binary(min_size=1, max_size=40), _EXT), max_size=5),
    trailers=st.lists(st.sampled_from([b"x-t: 1", b"X-Sum:\tab c", b"t:"]), max_size=3),
    cuts=st.lists(st.integers(0, 400), max_size=6),
)
def test_any_well_formed_chunked_body_cut_anywhere_reads_whole(parts, trailers, cuts) -> None:
    """A chunked body of any chunks, extensions and trailers, cut into reads anywhere: read as its data
    (a guard for the stricter line read: passes before and after)."""
    raw = _HEAD + b"".join(b"%x%b\r\n%b\r\n" % (len(d), e, d) for d, e in parts)
    raw += b"0\r\n" + b"".join(t + b"\r\n" for t in trailers) + b"\r\n"
    at = sorted({0, len(raw), *(c for c in cuts if c < len(raw))})
    seen, out = asyncio.run(_parsed([raw[a:b] for a, b in itertools.pairwise(at)]))
    assert [s[4] for s in seen] == [b"".join(d for d, _ in parts)], out[:80]
