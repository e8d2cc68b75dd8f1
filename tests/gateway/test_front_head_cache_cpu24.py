"""The front reads a head's bytes once (cpu24): ``FrontServer.heads`` keeps what depends on the bytes alone,
bounded; what depends on the moment (the body limit after a reload, ``head_check``, the budget, ``Expect``)
is asked for every request, as before. Each request gets a dict of its own."""

from __future__ import annotations

import asyncio

from gateway.test_hot_path import _Transport
from kvgate.httpfront.server import HEAD_CACHE_MAX, FrontServer, Request, Response

_HEAD = b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n"


async def _serve(server: FrontServer, pieces: list[bytes]) -> bytes:
    proto = server.protocol()
    transport = _Transport()
    proto.connection_made(transport)  # type: ignore[arg-type]
    for piece in pieces:
        proto.data_received(piece)
        for _ in range(6):
            await asyncio.sleep(0)
    for _ in range(20):
        await asyncio.sleep(0)
    return bytes(transport.out)


def _front(seen: list[Request], max_body: int = 1 << 20) -> FrontServer:
    async def handler(req: Request) -> Response:
        seen.append(req)
        req.headers["x-changed-by-handler"] = "1"  # (a handler may change its own request's dict)
        return Response(body=b"ok")

    return FrontServer({"/a": handler}, handler, max_body=max_body)


async def test_the_same_head_twice_reads_alike_with_a_dict_each() -> None:
    seen: list[Request] = []
    server = _front(seen)
    out = await _serve(server, [_HEAD + b"hi", _HEAD + b"yo", _HEAD + b"ok"])
    assert out.count(b"HTTP/1.1 200 ") == 3
    first, second, third = seen
    assert [r.body for r in seen] == [b"hi", b"yo", b"ok"]
    for r in (second, third):
        assert (r.method, r.path, r.query, r.keep_alive, r.http11) == ("POST", "/a", "", True, True)
        assert r.headers is not first.headers
        # (the first handler's change is its own: the kept copy is as read)
        assert r.headers == {
            "host": "h",
            "content-type": "application/json",
            "content-length": "2",
            "x-changed-by-handler": "1",
        }
    assert len(server.heads) == 1
    server.close_all()


async def test_the_kept_heads_are_bounded() -> None:
    seen: list[Request] = []
    server = _front(seen)
    heads = [f"POST /a HTTP/1.1\r\nHost: h{i}\r\nContent-Length: 0\r\n\r\n".encode() for i in range(300)]
    out = await _serve(server, heads)
    assert out.count(b"HTTP/1.1 200 ") == 300
    assert [r.headers["host"] for r in seen] == [f"h{i}" for i in range(300)]
    assert 0 < len(server.heads) <= HEAD_CACHE_MAX
    server.close_all()


async def test_a_lower_body_limit_refuses_a_kept_head() -> None:
    """A reload lowers ``max_body`` (``_knobs``): a head kept from before is refused by the new limit."""
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


async def test_expect_continue_is_answered_for_a_kept_head_too() -> None:
    seen: list[Request] = []
    server = _front(seen)
    head = _HEAD.replace(b"\r\n\r\n", b"\r\nExpect: 100-continue\r\n\r\n")
    for _ in range(2):
        out = await _serve(server, [head, b"hi"])
        assert out.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 "), out[:80]
    assert len(seen) == 2 and len(server.heads) == 1
    server.close_all()


async def test_a_chunked_head_is_not_kept_and_reads_alike() -> None:
    seen: list[Request] = []
    server = _front(seen)
    chunked = b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"
    out = await _serve(server, [chunked, chunked])
    assert out.count(b"HTTP/1.1 200 ") == 2 and [r.body for r in seen] == [b"hi", b"hi"]
    assert not server.heads
    server.close_all()
