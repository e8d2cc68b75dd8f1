"""The scraper's lean HTTP/1.1 client: framing (fuzzed against random TCP segmentation), keep-alive,
a server closing an idle connection, and a size cap; against real loopback sockets where it matters."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvgate.datalayer.pageclient import Page, PageClient, PageError, _Reader, split_address

bodies = st.binary(max_size=3000)


def _chunked(body: bytes, sizes: list[int], trailers: bool) -> bytes:
    out, i = [], 0
    for n in sizes:
        if i >= len(body):
            break
        part = body[i : i + max(1, n)]
        i += len(part)
        out.append(b"%x;ext=1\r\n" % len(part) if n % 3 == 0 else b"%X\r\n" % len(part))
        out.append(part + b"\r\n")
    if i < len(body):
        out.append(b"%x\r\n" % (len(body) - i) + body[i:] + b"\r\n")
    out.append(b"0\r\nx-trailer: 1\r\n\r\n" if trailers else b"0\r\n\r\n")
    return b"".join(out)


@st.composite
def answers(draw: st.DrawFn) -> tuple[bytes, bytes, bool, bool]:
    """(bytes on the wire, the body, whether the connection stays usable, whether it ends at EOF)."""
    body = draw(bodies)
    framing = draw(st.sampled_from(["length", "chunked", "eof"]))
    interim = b"HTTP/1.1 100 Continue\r\n\r\n" if draw(st.booleans()) else b""
    close = draw(st.booleans())
    head = [b"HTTP/1.1 200 OK", b"Content-Type: text/plain"]
    if close:
        head.append(b"Connection: close")
    if framing == "length":
        head.append(b"content-length: %d" % len(body))
        wire = body
    elif framing == "chunked":
        head.append(b"Transfer-Encoding: chunked")
        wire = _chunked(body, draw(st.lists(st.integers(1, 700), max_size=8)), draw(st.booleans()))
    else:
        wire = body
    raw = interim + b"\r\n".join(head) + b"\r\n\r\n" + wire
    return raw, body, not close and framing != "eof", framing == "eof"


def _segments(raw: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(raw) + 1) for c in cuts} | {0, len(raw)})
    return [raw[a:b] for a, b in itertools.pairwise(points) if b > a]


@settings(max_examples=300, deadline=None)
@given(answers(), st.lists(st.integers(0, 10_000), max_size=12))
def test_any_framing_split_any_way_reads_the_same_body(
    answer: tuple[bytes, bytes, bool, bool], cuts: list[int]
) -> None:
    raw, body, keep, at_eof = answer

    async def go() -> tuple[Page, bool]:
        reader = _Reader(max_bytes=1 << 20)
        waiter = reader.expect()
        for seg in _segments(raw, cuts):
            reader.data_received(seg)
        if at_eof:
            assert not waiter.done()  # nothing says the body ended but the close
            reader.connection_lost(None)
        return await waiter

    page, kept = asyncio.run(go())
    assert (page.status, page.body, kept) == (200, body, keep)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400), st.lists(st.integers(0, 1000), max_size=6))
def test_garbage_fails_or_waits_never_raises_out_of_the_protocol(raw: bytes, cuts: list[int]) -> None:
    async def go() -> None:
        reader = _Reader(max_bytes=1 << 16)
        waiter = reader.expect()
        for seg in _segments(raw, cuts):
            reader.data_received(seg)
        reader.connection_lost(None)
        assert waiter.done()
        if waiter.exception() is None:
            assert isinstance(waiter.result()[0], Page)

    asyncio.run(go())


def test_the_size_cap_holds_for_every_framing() -> None:
    async def go(raw: bytes) -> BaseException | None:
        reader = _Reader(max_bytes=100)
        waiter = reader.expect()
        reader.data_received(raw)
        reader.connection_lost(None)
        return waiter.exception()

    big = b"x" * 101
    for raw in (
        b"HTTP/1.1 200 OK\r\nContent-Length: 101\r\n\r\n",  # refused before the body arrives
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n65\r\n" + big + b"\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n\r\n" + big,
    ):
        assert isinstance(asyncio.run(go(raw)), PageError), raw[:60]


def test_split_address() -> None:
    assert split_address("10.0.0.1:8000") == ("10.0.0.1", 8000)
    assert split_address("[::1]:8000") == ("::1", 8000)
    with pytest.raises(ValueError):
        split_address("host-without-port")


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def _serving(handler: Handler) -> AsyncIterator[str]:
    """A loopback server running ``handler`` on each connection, closed after: its address."""
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        await server.wait_closed()


@asynccontextmanager
async def _client_of(handler: Handler) -> AsyncIterator[PageClient]:
    """A ``PageClient`` of a ``_serving(handler)`` server, closed before the server."""
    async with _serving(handler) as address:
        client = PageClient(address)
        try:
            yield client
        finally:
            client.close()


async def _read_request(r: asyncio.StreamReader) -> bytes:
    return await r.readuntil(b"\r\n\r\n")


async def test_keeps_one_connection_and_reconnects_once_when_the_server_closed_it_idle() -> None:
    """Like uvicorn after its keep-alive timeout: the server closes a connection between requests.
    The next GET finds it closed (no byte back) and is sent once more on a new connection."""
    conns: list[int] = []

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        conns.append(1)
        served = 0
        while True:
            try:
                req = await _read_request(r)
            except (asyncio.IncompleteReadError, ConnectionError):
                break
            assert req.startswith(b"GET /metrics/?a=1 HTTP/1.1\r\nHost: ")
            served += 1
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await w.drain()
            if served == 3:  # then close it, idle, without telling
                break
        w.close()

    async with _client_of(handler) as client:
        req = client.request_bytes("/metrics/?a=1")
        for _ in range(3):
            assert (await client.get(req)).body == b"ok"
        assert client.connects == 1
        await asyncio.sleep(0.2)  # the server's close reaches us
        assert (await client.get(req)).body == b"ok"
        assert client.connects == 2 and len(conns) == 2


async def test_a_server_that_never_answers_is_not_retried_forever() -> None:
    """A fresh connection closed without an answer is an error, not a retry loop."""

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await _read_request(r)
        w.close()

    async with _client_of(handler) as client:
        with pytest.raises(PageError):
            await client.get(client.request_bytes("/metrics"))
        assert client.connects == 1


async def test_a_cancelled_request_drops_its_connection() -> None:
    """A late answer must never be read as the next request's: a timed-out GET closes the connection."""
    release = asyncio.Event()

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            try:
                await _read_request(r)
            except (asyncio.IncompleteReadError, ConnectionError):
                break
            if not release.is_set():
                release.set()
                await asyncio.sleep(0.3)  # answers the first request late
                with_body = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nlate"
            else:
                with_body = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh"
            try:
                w.write(with_body)
                await w.drain()
            except ConnectionError:
                break
        w.close()

    async with _client_of(handler) as client:
        req = client.request_bytes("/metrics")
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await client.get(req)
        assert (await client.get(req)).body == b"fresh"
        assert client.connects == 2


# Review s7-scrape: framing the old hand-written parser got wrong (F1-F6), and the resend itself.


def _feed(raw: list[bytes], max_bytes: int = 1000, lost: BaseException | str | None = "no") -> _Reader:
    async def go() -> _Reader:
        r = _Reader(max_bytes=max_bytes)
        r.expect()
        for seg in raw:
            r.data_received(seg)
        if lost != "no":
            r.connection_lost(lost)  # type: ignore[arg-type]
        return r

    return asyncio.run(go())


def _failed(r: _Reader) -> bool:
    return r.waiter is not None and r.waiter.done() and isinstance(r.waiter.exception(), PageError)


def test_chunked_trailers_count_against_the_cap() -> None:
    """F1: the trailer section after the last chunk was buffered without bound (and rescanned)."""
    segs = [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nx-pad: "]
    segs += [b"a" * 65536] * 64  # 4 MiB of trailer, max_bytes 1000
    assert _failed(_feed(segs, max_bytes=1000))


def test_a_head_without_end_counts_against_the_cap() -> None:
    assert _failed(_feed([b"HTTP/1.1 200 OK\r\nx-pad: "] + [b"a" * 65536] * 4))


def test_a_reset_mid_body_is_not_a_complete_page() -> None:
    """F2: a body framed by the close, cut by a reset: ``waiting 12`` must not read as ``waiting 1``."""
    raw = [b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nvllm:num_requests_waiting 1"]
    assert _failed(_feed(raw, lost=ConnectionResetError(104, "Connection reset by peer")))
    ok = _feed(raw, lost=None)  # a clean close ends it
    assert ok.waiter is not None and ok.waiter.result()[0].body == b"vllm:num_requests_waiting 1"


def test_an_http10_answer_does_not_keep_the_connection() -> None:
    """F3: HTTP/1.0 without ``Connection: keep-alive`` is not persistent (RFC 9112 9.3)."""
    r = _feed([b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"])
    assert r.waiter is not None
    page, keep = r.waiter.result()
    assert page.body == b"ok" and keep is False


def test_conflicting_content_lengths_fail() -> None:
    """F4 (RFC 9112 6.3: unrecoverable)."""
    assert _failed(_feed([b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 2\r\n\r\nhe", b"llo"]))
    assert _failed(_feed([b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok"]))  # space before the colon
    assert _failed(_feed([b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"]))


def test_a_transfer_coding_after_chunked_is_not_read_as_chunked() -> None:
    """F5: ``chunked, gzip`` is not chunked framing; we never ask for a coding, so it fails."""
    r = _feed([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n2\r\nok\r\n0\r\n\r\n"])
    assert r.waiter is not None
    assert not r.waiter.done() or isinstance(r.waiter.exception(), PageError)


@pytest.mark.parametrize("size", [b"0x2", b"+2", b"0_2"])
def test_chunk_sizes_are_plain_hex(size: bytes) -> None:
    """F6: ``int(x, 16)`` took ``0x``, a sign and ``_``."""
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert _failed(_feed([head + size + b"\r\nok\r\n0\r\n\r\n"]))


def test_bytes_past_the_answer_drop_the_connection() -> None:
    for raw in (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\nHTTP/1.1",
        b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200",
    ):
        r = _feed([raw])
        assert r.waiter is not None
        _page, keep = r.waiter.result()
        assert keep is False, raw


def test_two_answers_back_to_back_on_one_connection() -> None:
    async def go() -> list[tuple[bytes, bool]]:
        r = _Reader(max_bytes=100)
        out = []
        for raw in (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nx: 1\r\n\r\n",
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc",
        ):
            w = r.expect()
            r.data_received(raw)
            page, keep = w.result()
            out.append((page.body, keep))
        return out

    assert asyncio.run(go()) == [(b"ok", True), (b"", True), (b"abc", True)]


async def test_the_resend_path_itself() -> None:
    """The server takes the second request on the old connection and closes it unanswered (the
    idle-close race): the request is sent once more on a fresh connection (review s7-scrape Q4)."""
    conns: list[int] = []

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        conns.append(1)
        first = len(conns) == 1
        try:
            await r.readuntil(b"\r\n\r\n")
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await w.drain()
            if first:
                await r.readuntil(b"\r\n\r\n")  # taken, never answered
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        w.close()

    async with _client_of(handler) as client:
        req = client.request_bytes("/metrics")
        assert (await client.get(req)).body == b"ok"
        assert (await asyncio.wait_for(client.get(req), 10)).body == b"ok"
        assert client.connects == 2


@pytest.mark.parametrize(
    "target",
    [
        "/metrics\r\nX-Injected: 1",
        "/metrics\nX-Injected: 1",
        "/metrics\r",
        "/metrics HTTP/1.1\r\nHost: other\r\n\r\nGET /",
        "/metrics\x00",
        "/met rics",
        "/metrics\t",
        "/m\u00e9trics",
        "",
    ],
)
def test_a_request_target_that_would_inject_is_refused(target: str) -> None:
    client = PageClient("127.0.0.1:9")
    with pytest.raises(ValueError, match=r"request target .* CR, LF"):
        client.request_bytes(target)
    assert client.request_bytes("/metrics/?name%5B%5D=vllm%3Anum_requests_waiting").startswith(
        b"GET /metrics/?name%5B%5D=vllm%3Anum_requests_waiting HTTP/1.1\r\nHost: 127.0.0.1:9\r\n"
    )


def test_an_address_that_would_inject_into_host_is_refused() -> None:
    client = PageClient("127.0.0.1\r\nX-Injected: 1:80")  # host:port in shape
    with pytest.raises(ValueError, match=r"address .* CR, LF"):
        client.request_bytes("/metrics")


async def test_a_scrape_path_with_crlf_fails_the_scrape_and_sends_nothing() -> None:
    """The scraper's path reaches the wire through ``request_bytes``: a CR/LF in it is a failed scrape
    with a clear error, and no byte of it reaches the server."""
    from kvgate.datalayer.scraper import MetricsScraper
    from kvgate.datalayer.store import EndpointStore, make_endpoint

    received: list[bytes] = []

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        received.append(await r.read(65536))
        w.close()

    async with _serving(handler) as address:
        store = EndpointStore([make_endpoint(address)])
        scraper = MetricsScraper(store, path="/metrics\r\nX-Injected: 1", timeout=1.0)
        try:
            assert await scraper.scrape_all() == 0
            error = scraper.stats[address].last_error
            assert error is not None and "CR, LF" in error
            await asyncio.sleep(0.05)
            assert not any(b"X-Injected" in r for r in received)
        finally:
            await scraper.stop()
