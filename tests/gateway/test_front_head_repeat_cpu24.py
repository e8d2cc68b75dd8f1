"""The same head sent again reads alike (cpu24's head cache, removed by fixcpu24: review s24-rev-cpu24 F1/F2):
what depends on the moment (the body limit after a reload, ``head_check``, the budget, ``Expect``) is asked
for every request. Each request gets a dict of its own."""

from __future__ import annotations

from gateway.front_transport import served
from gateway.test_hot_path import _Transport
from kvgate.httpfront.server import FrontServer, Request, Response

_HEAD = b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n"


async def _serve(server: FrontServer, pieces: list[bytes]) -> bytes:
    return await served(server, pieces, _Transport())


def _front(seen: list[Request], max_body: int = 1 << 20) -> FrontServer:
    async def handler(req: Request) -> Response:
        seen.append(req)
        req.headers["x-changed-by-handler"] = "1"  # (a handler may change its own request's dict)
        return Response(body=b"ok")

    return FrontServer({"/a": handler}, handler, max_body=max_body)


async def test_a_handlers_change_never_reaches_a_later_request() -> None:
    """What each request's handler sees on entry is the head as sent, whatever an earlier handler did to
    its own dict (review s24-rev-cpu24 F4: the test this replaces looked after its own handler's change,
    so it passed with a shared dict too)."""
    on_entry: list[dict[str, str]] = []

    async def handler(req: Request) -> Response:
        on_entry.append(dict(req.headers))
        req.headers["x-changed-by-handler"] = "1"
        req.headers.pop("content-type", None)
        return Response(body=b"ok")

    server = FrontServer({"/a": handler}, handler, max_body=1 << 20)
    out = await _serve(server, [_HEAD + b"hi", _HEAD + b"yo", _HEAD + b"ok"])
    assert out.count(b"HTTP/1.1 200 ") == 3
    want = {"host": "h", "content-type": "application/json", "content-length": "2"}
    assert on_entry == [want, want, want]
    server.close_all()


async def test_many_distinct_heads_read_alike() -> None:
    seen: list[Request] = []
    server = _front(seen)
    heads = [f"POST /a HTTP/1.1\r\nHost: h{i}\r\nContent-Length: 0\r\n\r\n".encode() for i in range(300)]
    out = await _serve(server, heads)
    assert out.count(b"HTTP/1.1 200 ") == 300
    assert [r.headers["host"] for r in seen] == [f"h{i}" for i in range(300)]
    server.close_all()


async def test_a_lower_body_limit_refuses_a_head_seen_before() -> None:
    """A reload lowers ``max_body`` (``_knobs``): a head that passed before is refused by the new limit."""
    seen: list[Request] = []
    server = _front(seen)
    assert (await _serve(server, [_HEAD + b"hi"])).startswith(b"HTTP/1.1 200 ")
    server.max_body = 1
    out = await _serve(server, [_HEAD + b"hi"])
    assert out.startswith(b"HTTP/1.1 413 "), out[:120]
    assert len(seen) == 1
    server.close_all()


async def test_head_check_and_the_budget_are_asked_every_time() -> None:
    seen: list[Request] = []
    server = _front(seen)
    asked: list[str] = []
    refuse = [False]

    def check(method: str, path: str, headers: dict[str, str]) -> Response | None:
        asked.append(path)
        return Response(status=401, body=b"no") if refuse[0] else None

    server.head_check = check
    assert (await _serve(server, [_HEAD + b"hi"])).startswith(b"HTTP/1.1 200 ")
    refuse[0] = True
    assert (await _serve(server, [_HEAD + b"hi"])).startswith(b"HTTP/1.1 401 ")
    refuse[0] = False
    server.budget.used = server.budget.limit - 1  # (what other bodies hold now)
    assert (await _serve(server, [_HEAD + b"hi"])).startswith(b"HTTP/1.1 503 ")
    server.budget.used = 0
    assert asked == ["/a", "/a", "/a"] and len(seen) == 1
    server.close_all()


async def test_expect_continue_is_answered_for_a_repeated_head_too() -> None:
    seen: list[Request] = []
    server = _front(seen)
    head = _HEAD.replace(b"\r\n\r\n", b"\r\nExpect: 100-continue\r\n\r\n")
    for _ in range(2):
        out = await _serve(server, [head, b"hi"])
        assert out.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 "), out[:80]
    assert len(seen) == 2
    server.close_all()


async def test_a_repeated_chunked_head_reads_alike() -> None:
    seen: list[Request] = []
    server = _front(seen)
    chunked = b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"
    out = await _serve(server, [chunked, chunked])
    assert out.count(b"HTTP/1.1 200 ") == 2 and [r.body for r in seen] == [b"hi", b"hi"]
    server.close_all()
