"""small33 (a): a model server's repeated ``Set-Cookie`` lines were carried to ``kvgate serve``'s answer head
as ONE header value joined with ``"\\r\\nset-cookie: "`` (CR/LF inside a value, the shape of response
splitting, safe only because the upstream parser refuses CR/LF). They are now the answer's own multi-value
field (``Response`` / ``StreamResponse.set_cookies``), written a line each with the same bytes per line.

The two unit tests fail on main 24a33356 (a joined value with CR/LF, no ``set_cookies`` in the head writer).
The end-to-end cases guard each relay's plumbing (held whole, event stream, a big answer relayed as it comes,
a lookup's answer): each fails if its relay leaves the lines out (checked by dropping them)."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from gateway.conftest import make_config, running_gateway
from kvgate.gateway.stream import pass_upstream_headers
from kvgate.httpfront.server import _head
from rawupstream import header_values, lines_upstream

COOKIES = b"Set-Cookie: a=1; Path=/\r\nSet-Cookie: b=\xc3\xa9; HttpOnly\r\n"
WANTED = [b"a=1; Path=/", b"b=\xc3\xa9; HttpOnly"]


def test_no_relayed_value_holds_a_line_break() -> None:
    reply: dict[str, str] = {"x-request-id": "r1"}
    # (as the upstream reader hands them: a repeated Set-Cookie's lines kept apart by a newline)
    lines = pass_upstream_headers({"set-cookie": "a=1\nb=2", "vary": "accept, origin"}, reply)
    assert all("\r" not in v and "\n" not in v for v in reply.values()), reply
    assert "set-cookie" not in reply
    assert lines == ("a=1", "b=2")
    assert reply["vary"] == "accept, origin"
    # None: nothing to carry, and a lone cookie goes the same way
    assert pass_upstream_headers({"vary": "accept"}, {}) == ()
    assert pass_upstream_headers({"set-cookie": "s=1"}, {}) == ("s=1",)


def test_the_head_writes_a_line_per_cookie() -> None:
    head = _head(200, {"x-a": "1"}, "application/json", 2, False, False, ("a=1", "b=\udcc3\udca9"))
    lines = head.split(b"\r\n")
    assert [ln for ln in lines if ln.lower().startswith(b"set-cookie:")] == [
        b"set-cookie: a=1",
        b"set-cookie: b=\xc3\xa9",  # (the value's bytes as sent: surrogateescape, as every relayed value)
    ]
    assert b"x-a: 1" in lines and head.endswith(b"\r\n\r\n")
    assert b"set-cookie" not in _head(200, {"x-a": "1"}, None, 0, False)


def _body(kind: str) -> tuple[bytes, bytes]:
    if kind == "stream":
        chunk = orjson.dumps({"id": "x", "object": "chat.completion.chunk", "model": "m", "choices": []})
        return b"text/event-stream", b"data: " + chunk + b"\n\ndata: [DONE]\n\n"
    rid = "resp_1" if kind == "lookup" else "x"
    doc = {"id": rid, "object": "chat.completion", "model": "m", "choices": []}
    if kind == "big":
        doc["pad"] = "p" * 4096
    return b"application/json", orjson.dumps(doc)


async def _answer_head(port: int, kind: str) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if kind == "lookup":
            req = b"GET /v1/responses/resp_1 HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"
        else:
            doc = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": kind == "stream"}
            body = orjson.dumps(doc)
            req = (
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
                b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            )
        writer.write(req)
        return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    finally:
        writer.close()


@pytest.mark.parametrize("kind", ["whole", "stream", "big", "lookup"])
async def test_each_relay_writes_every_cookie_line(kind: str) -> None:
    ctype, body = _body(kind)
    async with lines_upstream(COOKIES, body, ctype) as up, running_gateway(make_config([up])) as gw:
        gw.proxy.whole_max = 1024  # ("big": relayed as it comes, past it)
        head = await _answer_head(gw.port, kind)
    assert head.startswith(b"HTTP/1.1 200"), head
    assert header_values(head, b"set-cookie") == WANTED, head
