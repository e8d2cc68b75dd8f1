"""Session 27's cuts on the request path (cpu27), what they must keep:

- the front answers a request in its connection task (``FrontProtocol._serve``; ``_run``'s own coroutine
  is gone): nothing of an answer (the response, its body, a held body's release) is kept by that task
  while the connection waits for its next request, and a held body's ``release`` still runs once;
- the upstream client reads a response's header names through a bounded cache of their lower-case
  forms (``upstream._NAMES``): the same names as a decode and ``lower`` give, repeated
  ``Transfer-Encoding`` lines still joined, at most ``_NAMES_MAX`` names of at most ``_NAME_KEY_MAX``
  bytes kept; a name read from the cache (its second read) the same as on its first, framing included
  (review s27-rev-b27 F2: fed once each, the names read only the miss path, and a cache keeping
  ``name.decode("latin-1")``, not lower-cased, passed)."""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest

from gateway.test_hot_path import _Transport
from kvgate.gateway import upstream
from kvgate.gateway.upstream import UpstreamPool, _Conn
from kvgate.httpfront.server import FrontServer, Request, Response


class _Tracked(Response):
    __slots__ = ("__weakref__",)


_REQ = b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi"


@pytest.mark.parametrize("held", [False, True], ids=["plain", "released-body"])
async def test_an_answer_is_not_kept_while_the_connection_waits(held: bool) -> None:
    made: list[weakref.ref[Response]] = []
    released: list[int] = []

    async def handler(req: Request) -> Response:
        resp = _Tracked(200, b"x" * 100_000)
        if held:
            resp.release = lambda: released.append(1)
        made.append(weakref.ref(resp))
        return resp

    server = FrontServer({"/a": handler}, handler, max_body=1 << 20)
    proto = server.protocol()
    transport = _Transport()
    proto.connection_made(transport)  # type: ignore[arg-type]
    for n in range(2):
        proto.data_received(_REQ)
        for _ in range(50):  # (generous: the answer needs a few loop turns)
            await asyncio.sleep(0)
            if transport.out.count(b"HTTP/1.1 200 ") > n and proto._wake is not None:
                break
        assert transport.out.count(b"HTTP/1.1 200 ") == n + 1
        assert proto.task is not None and proto._wake is not None  # waiting for the next request
        # (freed by reference counting alone: the task's frame holds none of it)
        assert made[n]() is None, "the connection's task still holds the last answer"
    assert released == ([1, 1] if held else [])
    assert not transport.closed
    proto.abort()
    gc.collect()


def _feed(wire: bytes) -> _Conn:
    conn = _Conn(UpstreamPool(1.0, 1.0), "x:1")
    conn.transport = _Transport()  # type: ignore[assignment]
    conn.busy = True
    conn.data_received(wire)
    return conn


def _head(*lines: bytes) -> bytes:
    fields = b"".join(line + b"\r\n" for line in lines)
    return b"HTTP/1.1 200 OK\r\n" + fields + b"Content-Length: 2\r\n\r\nok"


def test_header_names_read_as_a_decode_and_lower_would() -> None:
    names = [b"Content-Type", b"CONTENT-type", b"X-Custom-Header", b"retry-after", b"X-" + b"a" * 100]
    for name in names:
        conn = _feed(_head(name + b": v"))
        assert conn.head is not None and conn.error is None
        assert conn.head.headers[name.decode("latin-1").lower()] == "v"
    # repeated codings still joined (llhttp reads the last), in the order sent
    conn = _feed(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\ntransfer-encoding: chunked\r\n\r\n"
        b"2\r\nok\r\n0\r\n\r\n"
    )
    assert conn.error is not None  # (gzip: refused, as before)
    assert "gzip, chunked" in str(conn.error)


def test_the_name_cache_is_bounded() -> None:
    saved = dict(upstream._NAMES)
    upstream._NAMES.clear()
    try:
        for i in range(upstream._NAMES_MAX + 50):
            conn = _feed(_head(b"X-N%d: v" % i))
            assert conn.head is not None and conn.head.headers[f"x-n{i}"] == "v"
        long_name = b"X-" + b"b" * upstream._NAME_KEY_MAX
        conn = _feed(_head(long_name + b": w"))
        assert conn.head is not None and conn.head.headers[long_name.decode().lower()] == "w"
        assert len(upstream._NAMES) <= upstream._NAMES_MAX
        assert all(len(k) <= upstream._NAME_KEY_MAX for k in upstream._NAMES)
        assert long_name not in upstream._NAMES
    finally:
        upstream._NAMES.clear()
        upstream._NAMES.update(saved)


@pytest.fixture
def empty_names() -> object:
    saved = dict(upstream._NAMES)
    upstream._NAMES.clear()  # (the first read of each name is a miss, the second a hit)
    yield
    upstream._NAMES.clear()
    upstream._NAMES.update(saved)


_SPELLINGS = [
    b"Content-Type",
    b"content-type",
    b"CONTENT-TYPE",
    b"X-Request-Id",
    b"x-REQUEST-id",
    b"Retry-After",
]


@pytest.mark.usefixtures("empty_names")
@pytest.mark.parametrize("read", ["miss", "hit"])
def test_a_cached_name_reads_as_its_lower_case_form(read: str) -> None:
    wire = (
        b"HTTP/1.1 200 OK\r\n" + b"".join(n + b": v\r\n" for n in _SPELLINGS) + b"Content-Length: 2\r\n\r\nok"
    )
    if read == "hit":
        _feed(wire)  # (fills the cache)
        assert set(_SPELLINGS) <= set(upstream._NAMES), "the names were not cached"
    conn = _feed(wire)
    assert conn.error is None and conn.head is not None
    assert set(conn.head.headers) == {"content-type", "x-request-id", "retry-after", "content-length"}
    assert conn.head.headers["content-length"] == "2"
    assert conn.keep_alive and not conn._until_close  # (framed by its Content-Length: reusable)


@pytest.mark.usefixtures("empty_names")
@pytest.mark.parametrize("read", ["miss", "hit"])
def test_framing_names_read_from_the_cache_still_frame(read: str) -> None:
    refused = (
        b"HTTP/1.1 200 OK\r\nTRANSFER-ENCODING: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\nok\r\n0\r\n\r\n"
    )
    closing = b"HTTP/1.0 200 OK\r\nCONNECTION: keep-alive\r\nCONTENT-LENGTH: 2\r\n\r\nok"
    if read == "hit":
        _feed(refused)
        _feed(closing)
    conn = _feed(refused)
    assert conn.error is not None and "gzip, chunked" in str(conn.error)  # (both codings, joined)
    conn = _feed(closing)
    assert conn.head is not None and conn.head.headers == {"connection": "keep-alive", "content-length": "2"}
    assert not conn.keep_alive  # (an HTTP/1.0 answer with a Connection header: not reused)
