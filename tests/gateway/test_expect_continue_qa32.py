"""qa32a Q5: the front's ``Expect: 100-continue`` handling (``kvgate serve``).

(a) An HTTP/1.0 request with ``Expect: 100-continue`` got ``HTTP/1.1 100 Continue`` before its answer.
RFC 9110 §10.1.1: "A server that receives a 100-continue expectation in an HTTP/1.0 request MUST ignore that
expectation"; §15.2: "A server MUST NOT send a 1xx response to an HTTP/1.0 client".

(b) A request the head alone refuses (a path with no route: 404; a method the path does not take: 405)
got ``100 Continue``, so the client uploaded its whole body for a refusal known before any byte of it
(RFC 9110 §10.1.1 lets a server that "will respond with a final status code" omit the 100). Now answered
from the head (``FrontServer.route_check``), no 100, the body never sent here.

Fails on main 86751e55: (a) the answer starts with ``HTTP/1.1 100 Continue``; (b) ``100 Continue`` first."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from gateway.conftest import backends, make_config, running_gateway  # noqa: F401 (the fixture)

BODY = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})


async def _exchange(port: int, data: bytes, until_close: bool) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        if until_close:
            return await asyncio.wait_for(reader.read(), 60)
        return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
    finally:
        writer.close()


async def test_an_http10_request_never_gets_a_1xx(backends) -> None:  # noqa: F811
    (b,) = await backends(1)
    head = b"POST /v1/chat/completions HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n"
    async with running_gateway(make_config([b.address])) as gw:
        out = await _exchange(gw.port, head % len(BODY) + BODY, until_close=True)
    assert out.startswith(b"HTTP/1.1 200 "), out[:200]


@pytest.mark.parametrize(
    ("line", "status", "allow"),
    [
        (b"POST /v1/no-such-api HTTP/1.1", b"404", None),
        (b"PUT /v1/chat/completions HTTP/1.1", b"405", b"Allow: POST"),
        (b"DELETE /v1/messages HTTP/1.1", b"405", b"Allow: POST"),
        (b"POST /metrics HTTP/1.1", b"405", b"Allow: GET, HEAD"),
    ],
    ids=["404", "405", "405-messages", "405-admin"],
)
async def test_a_refusal_known_from_the_head_is_sent_without_100_continue(
    backends,  # noqa: F811
    line: bytes,
    status: bytes,
    allow: bytes | None,
) -> None:
    (b,) = await backends(1)
    head = line + b"\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 4000000\r\n\r\n"  # (no body sent)
    async with running_gateway(make_config([b.address])) as gw:
        first = await _exchange(gw.port, head, until_close=False)
    assert first.split(b" ")[1] == status, first
    assert allow is None or allow in first, first
    assert not b.received


async def test_a_routed_post_still_gets_100_continue(backends) -> None:  # noqa: F811
    (b,) = await backends(1)
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n"
    )
    async with running_gateway(make_config([b.address])) as gw:
        first = await _exchange(gw.port, head % len(BODY), until_close=False)
    assert first == b"HTTP/1.1 100 Continue\r\n\r\n", first
