"""The front's per-request read path after session 25's cut (``_parse_head`` one function again, the body
budget's take and give inlined on the usual path): what a client is answered and what the budget holds are
as before. Each case is fed as one read (the ``_parse_first`` path the cut changed) and split in two reads
(``_parse``), and both must agree. Both paths call the merged ``_parse_head``, so this equality does
not test it; the per-case assertions and tests/gateway/test_front_budget_edges_rev_cpu25.py do."""

from __future__ import annotations

import asyncio

import pytest

from gateway.test_hot_path import _Transport
from kvgate.httpfront.server import _MAX_HEAD, FrontServer, Request, Response

_Case = tuple[bytes, bytes]


async def _run(server: FrontServer, pieces: list[bytes]) -> tuple[bytes, bool, object]:
    proto = server.protocol()
    transport = _Transport()
    proto.connection_made(transport)  # type: ignore[arg-type]
    for piece in pieces:
        proto.data_received(piece)
        for _ in range(6):
            await asyncio.sleep(0)
    for _ in range(20):
        await asyncio.sleep(0)
    cap, closed = proto._linger_cap, transport.closed
    proto.abort()
    return bytes(transport.out), closed, cap


def _front(held: list[int], max_body: int = 1 << 20, max_buffered: int = 1 << 30) -> FrontServer:
    server: FrontServer

    async def handler(req: Request) -> Response:
        held.append(server.budget.used)  # (what the budget holds while the request is answered)
        return Response(body=b"ok:" + req.body)

    server = FrontServer({"/a": handler}, handler, max_body=max_body, max_buffered=max_buffered)
    return server


def _req(head: str, body: bytes = b"") -> bytes:
    return head.replace("\n", "\r\n").encode() + b"\r\n" + body


CASES: dict[str, bytes] = {
    "1.1, no Connection: kept": _req("POST /a HTTP/1.1\nHost: h\nContent-Length: 2\n", b"hi"),
    "1.1, Connection: close": _req(
        "POST /a HTTP/1.1\nHost: h\nConnection: Close\nContent-Length: 2\n", b"hi"
    ),
    "1.1, keep-alive and close: closed": _req(
        "POST /a HTTP/1.1\nHost: h\nConnection: keep-alive, close\nContent-Length: 0\n"
    ),
    "1.0, no Connection: closed": _req("POST /a HTTP/1.0\nContent-Length: 2\n", b"hi"),
    "1.0, keep-alive: kept, said": _req(
        "POST /a HTTP/1.0\nConnection: Keep-Alive\nContent-Length: 2\n", b"hi"
    ),
    "Expect with a body: 100 first": _req(
        "POST /a HTTP/1.1\nHost: h\nExpect: 100-Continue\nContent-Length: 2\n", b"hi"
    ),
    "Expect without a body: no 100": _req(
        "POST /a HTTP/1.1\nHost: h\nExpect: 100-continue\nContent-Length: 0\n"
    ),
    "Expect, chunked: 100 first": _req(
        "POST /a HTTP/1.1\nHost: h\nExpect: 100-continue\nTransfer-Encoding: chunked\n",
        b"2\r\nhi\r\n0\r\n\r\n",
    ),
    "other Expect: no 100": _req("POST /a HTTP/1.1\nHost: h\nExpect: 200-ok\nContent-Length: 2\n", b"hi"),
    "GET, no body": _req("GET /a?x=1 HTTP/1.1\nHost: h\n"),
    "1.1 without Host: 400": _req("POST /a HTTP/1.1\nContent-Length: 0\n"),
    "two Hosts: 400": _req("POST /a HTTP/1.1\nHost: a\nHost: b\nContent-Length: 0\n"),
    "bad version: 400": _req("POST /a HTTP/2.0\nHost: h\nContent-Length: 0\n"),
    "bad method: 400": _req("P0ST /a HTTP/1.1\nHost: h\nContent-Length: 0\n"),
    "1.0 chunked: 400": _req("POST /a HTTP/1.0\nTransfer-Encoding: chunked\n", b"0\r\n\r\n"),
    "gzip coding: 501": _req("POST /a HTTP/1.1\nHost: h\nTransfer-Encoding: gzip\n"),
    "over the body cap: 413": _req("POST /a HTTP/1.1\nHost: h\nContent-Length: 99999\n"),
    "two requests in one read": _req("POST /a HTTP/1.1\nHost: h\nContent-Length: 1\n", b"a")
    + _req("POST /a HTTP/1.1\nHost: h\nContent-Length: 1\n", b"b"),
}


@pytest.mark.parametrize("name", list(CASES))
async def test_one_read_and_two_reads_answer_alike(name: str) -> None:
    raw = CASES[name]
    cut = raw.index(b"\r\n\r\n") + 2  # (the head's last line end in the first read, its end in the second)
    held_one: list[int] = []
    held_two: list[int] = []
    one = await _run(_front(held_one, max_body=4096), [raw])
    two = await _run(_front(held_two, max_body=4096), [raw[:cut], raw[cut:]])
    assert one[:2] == two[:2], name
    assert held_one == held_two, name
    out = one[0]
    if "100 first" in name:
        assert out.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 "), out[:80]
    else:
        assert b"100 Continue" not in out, out[:80]
    for code in ("400", "413", "501"):
        if name.endswith(code):
            assert out.startswith(b"HTTP/1.1 %s " % code.encode()), out[:80]
    if "kept" in name:
        assert not one[1] and b"Connection: close" not in out, out
    if "closed" in name:
        assert one[1] and b"Connection: close\r\n" in out, out
    if "said" in name:
        assert b"Connection: keep-alive\r\n" in out, out


async def test_budget_held_while_answered_given_back_after() -> None:
    held: list[int] = []
    server = _front(held)
    raw = _req("POST /a HTTP/1.1\nHost: h\nContent-Length: 5\n", b"hello")
    out, closed, _ = await _run(server, [raw, raw + raw])
    assert out.count(b"HTTP/1.1 200 ") == 3 and not closed
    # (the second read brings two requests: both bodies are held from then, the first of them answered
    # while the second waits; each given back once answered)
    assert held == [5, 10, 5]
    assert server.budget.used == 0


async def test_over_budget_after_head_check_refused_by_parse_head_lingers_for_its_length() -> None:
    """A whole request in one read whose body does not fit in what the budget has free once the
    ``head_check`` ran (another connection took it meanwhile): ``_parse_head``'s pre-body check refuses
    it (the only refusal on this path: ``_parse_first``'s take that follows with no await always fits,
    review s25-rev-cpu25 F2), 503 with ``Retry-After``, nothing taken, and the linger allows its
    Content-Length and a head, as before the cut."""
    held: list[int] = []
    server = _front(held, max_buffered=100)
    server.budget.used = 90  # (another request's body, held)
    raw = _req("POST /a HTTP/1.1\nHost: h\nContent-Length: 5\n", b"hello")
    proto = server.protocol()
    transport = _Transport()
    proto.connection_made(transport)  # type: ignore[arg-type]
    check_calls: list[str] = []

    def check(method: str, path: str, headers: dict[str, str]) -> None:
        check_calls.append(path)
        server.budget.used = 99  # (taken by another connection meanwhile)

    server.head_check = check  # type: ignore[assignment]
    proto.data_received(raw)
    for _ in range(20):
        await asyncio.sleep(0)
    assert check_calls == ["/a"] and held == []
    out = bytes(transport.out)
    assert out.startswith(b"HTTP/1.1 503 ") and b"Retry-After: 1\r\n" in out, out[:200]
    assert proto._linger_cap == 5 + _MAX_HEAD
    assert server.budget.used == 99
    proto.abort()
