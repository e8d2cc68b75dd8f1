"""rev-a33-I2: ``kvgate serve --clusters`` kept only the last of a cluster's repeated ``Set-Cookie`` lines
(the relay's header dict was built from aiohttp's multidict, whose repeated keys collapse). Every line is
now relayed a line each, as ``kvgate serve`` does since small33 (``StreamResponse.set_cookies``)."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from gateway.sse_upstream import SSE_HEAD, chunk, listen_address, serve_raw
from kvgate.multicluster.clusters import ClustersConfig, ClusterSpec
from kvgate.multicluster.serve import GlobalGateway

pytestmark = pytest.mark.asyncio

SHORT = orjson.dumps({"id": "c", "object": "text_completion", "model": "m", "choices": [{"text": "short"}]})
COOKIES = b"Set-Cookie: a=1; Path=/\r\nSet-Cookie: b=2; HttpOnly\r\n"


def _post(body: dict[str, object]) -> bytes:
    raw = orjson.dumps(body)
    return b"POST /v1/completions HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n\r\n%s" % (len(raw), raw)


@pytest.mark.parametrize("stream", [False, True])
async def test_every_set_cookie_line_is_relayed(stream: bool) -> None:
    async def answer(body: bytes, writer: asyncio.StreamWriter) -> None:
        if orjson.loads(body).get("stream"):
            head = SSE_HEAD.replace(b"\r\n\r\n", b"\r\n" + COOKIES + b"\r\n", 1)
            writer.write(head + chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
            return
        head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n" % len(SHORT)
        writer.write(head + COOKIES + b"\r\n" + SHORT)

    server = await serve_raw(answer)
    clusters = ClustersConfig((ClusterSpec("c1", gateway=listen_address(server)),))
    gw = GlobalGateway(clusters, "round-robin", fetch=False, drain_s=30)
    await gw.start("127.0.0.1", 0)
    r, w = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        w.write(_post({"model": "m", "prompt": "p", "stream": stream}))
        await w.drain()
        head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 30)
        lines = [ln.lower() for ln in head.split(b"\r\n")]
        cookies = sorted(ln for ln in lines if ln.startswith(b"set-cookie:"))
        # (before: b=2 only)
        assert cookies == [b"set-cookie: a=1; path=/", b"set-cookie: b=2; httponly"], head
    finally:
        w.close()
        await gw.stop()
        server.close()
