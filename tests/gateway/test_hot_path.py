"""The data path's cheaper forms read exactly what the plain ones read (issue #16's per-request cuts):
the front's one-pass header read and its parse straight from a read, the upstream's one timer per
connection, the usage read from a whole body, the gateway's histograms."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.conftest import read_body, until
from gateway.front_transport import FrontTransport
from kvgate.gateway.metrics import GatewayMetrics
from kvgate.gateway.upstream import UpstreamPool, UpstreamTimeout
from kvgate.httpfront.server import FrontProtocol, FrontServer, Request, Response, _BadRequest, _fields
from kvgate.openai.protocol import usage_from
from kvgate.openai.requeststats import RequestEnd
from kvgate.openai.usage import usage_from_body
from kvgate.scheduling.fastmetrics import Hist
from kvgate.scheduling.types import Usage

# --- the front: header lines in one pass, requests parsed straight from a read ------------------------

_NAME = st.text("aAzZ-_.!#~0123456789 :\t", min_size=0, max_size=6)
_VALUE = st.text("ab Z09\t:;,=/-\x0b\x0c\x1c\x1f\x7f\u00e9\u20ac\x00\r\n", min_size=0, max_size=8)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(_NAME, _VALUE), min_size=1, max_size=5))
def test_the_one_pass_header_read_equals_the_line_by_line_one(fields: list[tuple[str, str]]) -> None:
    head = b"GET / HTTP/1.1\r\n" + b"\r\n".join(
        n.encode("utf-8", "surrogateescape") + b":" + v.encode() for n, v in fields
    )
    section = head[head.find(b"\r\n") + 2 :] + b"\r\n"
    fast = _fields(section)
    try:
        slow: dict[str, str] | None = FrontProtocol._fields_slow(head)
    except _BadRequest:
        slow = None
    if fast is not None:  # (None: the line-by-line read decides, refusing or reading it)
        assert fast == slow


def test_plain_and_padded_header_values_are_read_by_the_one_pass() -> None:
    section = b"Host: x\r\nX-A:  a b \t\r\nx-a: c\r\nX-Empty:\r\n"
    assert _fields(section) == {"host": "x", "x-a": "a b,c", "x-empty": ""}
    # A control character in a value (RFC 9110 §5.5; review s17-qa L3): the line-by-line read refuses it.
    assert _fields(b"Host: x\r\nX-Odd: \x1fv\x1f\r\n") is None
    assert _fields(b"Host: x\r\n X: folded\r\n") is None  # obs-fold: the line-by-line read refuses it
    assert _fields("Host: \u00e9\r\n".encode()) is None  # non-ASCII: read line by line (UTF-8)


class _Transport(FrontTransport):
    """The front's transport with no half-close (``write_eof``): a close ends the connection."""

    def can_write_eof(self) -> bool:
        return False


async def _parsed(pieces: list[bytes], max_body: int = 1 << 20) -> tuple[list[tuple[Any, ...]], bytes]:
    """What the front's handler saw for ``pieces`` fed as separate reads, and what it wrote back."""
    seen: list[tuple[Any, ...]] = []

    async def handler(req: Request) -> Response:
        seen.append((req.method, req.path, req.query, req.headers, req.body, req.keep_alive, req.http11))
        return Response(body=b"ok")

    server = FrontServer({"/a": handler}, handler, max_body=max_body)
    proto = server.protocol()
    transport = _Transport()
    proto.connection_made(transport)  # type: ignore[arg-type]
    for piece in pieces:
        proto.data_received(piece)
        for _ in range(4):
            await asyncio.sleep(0)
    for _ in range(20):
        await asyncio.sleep(0)
    server.close_all()
    return seen, bytes(transport.out)


_STREAM = (
    b"POST /a?x=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nX-Dup: 1\r\nx-dup: 2\r\n\r\nhello"
    b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n"
    b"POST /b HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    b"POST /a HTTP/1.0\r\nContent-Length: 2\r\nConnection: keep-alive\r\nX-U: \xc3\xa9\r\n\r\nhi"
)


async def test_requests_read_the_same_whole_or_cut_at_any_byte() -> None:
    whole, out = await _parsed([_STREAM])
    assert [r[:2] for r in whole] == [("POST", "/a"), ("GET", "/a"), ("POST", "/b"), ("POST", "/a")]
    assert whole[0][3]["x-dup"] == "1,2" and whole[0][4] == b"hello" and whole[0][2] == "x=1"
    assert whole[2][4] == b"abc" and whole[3][3]["x-u"] == "\u00e9" and not whole[3][6]
    for cut in range(1, len(_STREAM)):
        assert await _parsed([_STREAM[:cut], _STREAM[cut:]]) == (whole, out), cut


async def test_a_bad_head_at_the_front_of_a_read_is_refused_as_before() -> None:
    for raw, status in (
        (b"POST /a HTTP/1.1\r\nHost: h\r\n Folded: x\r\n\r\n", b"400"),
        (b"POST /a HTTP/1.1\r\nHost: h\r\nBad Name: x\r\n\r\n", b"400"),
        (b"POST /a HTTP/1.1\r\nContent-Length: 1\r\n\r\nx", b"400"),  # no Host
        (b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 99\r\n\r\n", b"413"),
        (b"POST /a HTTP/1.1\r\nHost: h\r\nX: a\rb\r\n\r\n", b"400"),
    ):
        seen, out = await _parsed([raw], max_body=10)
        assert not seen and out.startswith(b"HTTP/1.1 " + status), (raw, out[:40])


async def test_one_task_answers_a_connections_requests_in_turn_not_one_task_each() -> None:
    """Keep-alive requests on one connection are answered by the connection's one task (issue #16: a task
    per request cost its creation, registration and first step), in order, each body's budget given back
    once answered, the last request not kept while the connection waits for the next."""
    loop = asyncio.get_running_loop()
    made: list[Any] = []

    def factory(lp: Any, coro: Any, **kw: Any) -> Any:
        made.append(coro)
        return asyncio.Task(coro, loop=lp, **kw)

    seen: list[bytes] = []
    tasks: set[Any] = set()

    async def handler(req: Request) -> Response:
        tasks.add(asyncio.current_task())
        await asyncio.sleep(0)  # (suspends, as a proxied request does)
        seen.append(req.body)
        return Response(body=b"ok")

    server = FrontServer({"/a": handler}, handler, max_body=1 << 20)
    proto = server.protocol()
    transport = _Transport()
    proto.connection_made(transport)  # type: ignore[arg-type]
    loop.set_task_factory(factory)
    try:
        for i in range(3):
            body = b"x%d" % i
            proto.data_received(b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n" + body)
            await until(lambda n=i + 1: len(seen) == n)
            for _ in range(3):
                await asyncio.sleep(0)
            assert not proto.busy and server.budget.used == 0
    finally:
        loop.set_task_factory(None)
    assert seen == [b"x0", b"x1", b"x2"] and bytes(transport.out).count(b"HTTP/1.1 200 OK") == 3
    assert len(made) == 1 and len(tasks) == 1  # (one task, the connection's)
    task = proto.task
    assert task is not None and not task.done()
    frame = task.get_coro().cr_frame  # (waiting for the next request: the last one not kept)
    assert not any(isinstance(v, Request) for v in frame.f_locals.values())
    proto.connection_lost(None)  # the client leaves: the waiting task ends
    await asyncio.sleep(0)
    assert task.done() and proto.task is None


# --- the upstream: one timer per connection ------------------------------------------------------------


async def _hanging_after_one_reply() -> tuple[asyncio.Server, int]:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(2)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await reader.read()  # the second request: never answered

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def _request(port: int) -> tuple[str, bytes, bytes]:
    return f"127.0.0.1:{port}", b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n", b"{}"


async def test_a_reused_connection_times_out_at_its_own_reads_deadline_not_an_earlier_one() -> None:
    server, port = await _hanging_after_one_reply()
    pool = UpstreamPool(1.0, 0.6)
    resp = await pool.request(*_request(port))  # arms the connection's timer for 0.6 s from now
    assert await read_body(resp) == b"ok"
    resp.release()
    await asyncio.sleep(0.4)
    t0 = time.monotonic()
    with pytest.raises(UpstreamTimeout):
        await pool.request(*_request(port))  # the same connection, idle timeout 0.6 s from t0
    assert 0.55 <= time.monotonic() - t0 < 5.0
    pool.close()
    server.close()


async def test_a_deadline_before_the_armed_timer_still_ends_the_read() -> None:
    server, port = await _hanging_after_one_reply()
    pool = UpstreamPool(1.0, 30.0)
    resp = await pool.request(*_request(port))  # the timer armed 30 s ahead
    assert await read_body(resp) == b"ok"
    resp.release()
    loop = asyncio.get_running_loop()
    t0 = time.monotonic()
    with pytest.raises(UpstreamTimeout):
        address, head, body = _request(port)
        await pool.request(address, head, body, deadline=loop.time() + 0.3)
    assert 0.25 <= time.monotonic() - t0 < 5.0
    pool.close()
    server.close()


async def test_a_head_wait_that_times_out_leaves_no_waiter_and_drops_the_connection() -> None:
    # (``UpstreamPool.request`` waits for the head through ``_Conn._wait``, as a body read does)
    server, port = await _hanging_after_one_reply()
    pool = UpstreamPool(1.0, 0.2)
    resp = await pool.request(*_request(port))
    conn = resp._conn
    assert resp.read_now() == b"ok"
    resp.release()
    with pytest.raises(UpstreamTimeout):
        await pool.request(*_request(port))  # the same connection: never answered
    assert conn.waiter is None and conn._due is None
    await until(lambda: conn.closed)
    assert not pool._idle.get(f"127.0.0.1:{port}")
    pool.close()
    server.close()


async def test_a_cancelled_head_wait_leaves_no_waiter_and_drops_the_connection() -> None:
    server, port = await _hanging_after_one_reply()
    pool = UpstreamPool(1.0, 30.0)
    resp = await pool.request(*_request(port))
    conn = resp._conn
    assert await read_body(resp) == b"ok"
    resp.release()
    task = asyncio.create_task(pool.request(*_request(port)))
    await until(lambda: conn.waiter is not None)  # waiting for the head
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert conn.waiter is None and conn._due is None
    await until(lambda: conn.closed)
    pool.close()
    server.close()


async def test_read_now_gives_a_whole_body_only_once_all_of_it_is_here() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(2):
            await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(2)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nab")
            await writer.drain()
            await asyncio.sleep(0.1)
            writer.write(b"cd")
            await writer.drain()
            await asyncio.sleep(0.1)
            writer.write(b"ef")
            await writer.drain()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = UpstreamPool(1.0, 5.0)
    resp = await pool.request(*_request(port))
    assert resp.read_now() is None  # only the head and "ab" are here
    assert await read_body(resp) == b"abcdef"
    resp.release()
    resp = await pool.request(*_request(port))  # the connection was reused
    await asyncio.sleep(0.4)
    assert resp.read_now() == b"abcdef"  # all here now: no await
    assert resp.read_now() == b""  # (read: nothing more)
    resp.release()
    assert len(pool._idle[f"127.0.0.1:{port}"]) == 1
    pool.close()
    server.close()


# --- the usage of a whole response body, and the gateway's histograms ---------------------------------

_COUNT = st.one_of(st.none(), st.integers(-3, 10**6), st.booleans(), st.floats(0, 9), st.text(max_size=2))
_USAGE = st.one_of(
    st.none(),
    st.integers(),
    st.text(max_size=3),
    st.lists(st.integers(), max_size=2),
    st.fixed_dictionaries(
        {},
        optional={
            "prompt_tokens": _COUNT,
            "completion_tokens": _COUNT,
            "total_tokens": _COUNT,
            "prompt_tokens_details": st.one_of(
                st.none(), st.integers(), st.fixed_dictionaries({}, optional={"cached_tokens": _COUNT})
            ),
        },
    ),
)


@settings(max_examples=300, deadline=None)
@given(_USAGE, st.booleans())
def test_the_usage_of_a_whole_body_is_what_usage_from_reads(usage: Any, with_usage: bool) -> None:
    doc: dict[str, Any] = {"id": "c", "choices": [{"text": 'hi "usage"'}]}
    if with_usage:
        doc["usage"] = usage
    body = json.dumps(doc).encode()  # (json: integers past 64 bits too)
    assert usage_from_body(body) == usage_from(json.loads(body))
    assert usage_from_body(b"  " + body) == usage_from(json.loads(body))
    assert usage_from_body(body[:-1]) is None  # not JSON


def test_null_counts_read_alike_by_both_readers() -> None:
    """Hypothesis found it (fixdoors18's run): a usage with ``prompt_tokens: null`` and no other count was
    read as OpenAI's shape (cached reported) by ``usage_from`` and as Anthropic's (not) by the body reader."""
    doc = {"id": "c", "usage": {"prompt_tokens": None, "prompt_tokens_details": {"cached_tokens": 0}}}
    body = json.dumps(doc).encode()
    assert usage_from_body(body) == usage_from(json.loads(body))


def test_the_gateway_histograms_count_as_hist_observe_does() -> None:
    m = GatewayMetrics()
    durations, usages = [0.001, 0.3, 7.0, 5000.0], [Usage(7, 8), None, Usage(0, 3), Usage(2000, 0)]
    for d, u in zip(durations, usages, strict=True):
        m.observe(RequestEnd("m", "t", d, u))
    child = m._stats.children[("m", "t", "", "")]
    want = [Hist(child.duration.bounds), Hist(child.input_tokens.bounds), Hist(child.output_tokens.bounds)]
    for d, u in zip(durations, usages, strict=True):
        want[0].observe(d)
        if u is not None and u.prompt_tokens:
            want[1].observe(u.prompt_tokens)
        if u is not None and u.completion_tokens:
            want[2].observe(u.completion_tokens)
    got = [child.duration, child.input_tokens, child.output_tokens]
    assert [(h.counts, h.sum) for h in got] == [(h.counts, h.sum) for h in want]
    assert child.count == 4


def test_kvgate_serve_observes_through_the_shared_collectors_own_method() -> None:
    """rev-metrics L2: ``kvgate serve``'s per-request update is ``RequestStats.observe`` itself (bound,
    one call), not a copy of it, so the three doors cannot drift apart (before: a line-for-line copy)."""
    from kvgate.openai.requeststats import RequestStats

    m = GatewayMetrics()
    assert getattr(m.observe, "__func__", None) is RequestStats.observe
    assert m.observe.__self__ is m._stats  # type: ignore[attr-defined]


def test_error_counts_through_the_cached_children_are_the_labelled_counts() -> None:
    m = GatewayMetrics()
    for labels in (("m", "t", "429"), ("m", "t", "429"), ("", "", "404"), ("m", "t", "502")):
        m.error(*labels)
    samples = {
        (s.labels["model_name"], s.labels["target_model_name"], s.labels["error_code"]): s.value
        for fam in m.registry.collect()
        if fam.name == "inference_objective_request_error"
        for s in fam.samples
        if s.name.endswith("_total")
    }
    assert samples == {("m", "t", "429"): 2.0, ("", "", "404"): 1.0, ("m", "t", "502"): 1.0}


def test_scheduler_errors_through_the_cached_child_are_the_labelled_counts() -> None:
    from kvgate.scheduling import metrics

    before = metrics.SCHEDULER_ERRORS.labels(code="hot_path_test")._value.get()
    metrics.scheduler_error("hot_path_test")
    metrics.scheduler_error("hot_path_test")
    assert metrics.SCHEDULER_ERRORS.labels(code="hot_path_test")._value.get() == before + 2
