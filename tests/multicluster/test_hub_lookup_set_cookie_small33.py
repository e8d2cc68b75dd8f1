"""small33: a ``/v1/responses/{id}`` lookup through ``kvgate serve --clusters`` relays the cluster's answer
headers from a dict built of aiohttp's multi-dict, so of a repeated ``Set-Cookie`` only the last line
reached the client (rev-a33-I2 fixed the routed answers' relay, not this one). Now each line does, a line
each. Fails on main 1f43f66a: one line (the last)."""

from __future__ import annotations

import asyncio

import orjson

from kvgate.multicluster.clusters import ClusterSpec
from rawupstream import raw_upstream

COOKIES = b"Set-Cookie: a=1; Path=/\r\nSet-Cookie: b=2; HttpOnly\r\n"
BODY = orjson.dumps({"id": "resp_1", "object": "response", "model": "m", "output": []})
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n%bContent-Length: %d\r\n\r\n%b" % (
    COOKIES,
    len(BODY),
    BODY,
)


async def _head(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    finally:
        writer.close()


async def test_every_cookie_line_of_a_lookup_reaches_the_client(global_gateway) -> None:
    async with raw_upstream(ANSWER) as up:
        hub = await global_gateway(ClusterSpec("c0", gateway=up.address))
        head = await _head(
            hub.port, b"GET /v1/responses/resp_1 HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n\r\n"
        )
        assert up.hits, "the lookup never reached the cluster"
    assert head.startswith(b"HTTP/1.1 200"), head
    lines = head.split(b"\r\n")[1:]
    got = [ln.split(b":", 1)[1].strip() for ln in lines if ln.lower().startswith(b"set-cookie:")]
    assert got == [b"a=1; Path=/", b"b=2; HttpOnly"], head
