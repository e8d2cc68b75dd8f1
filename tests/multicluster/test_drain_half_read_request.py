"""``kvgate serve --clusters`` (review s17-doors F2, the same front as ``kvgate serve``): a request half
received when the drain starts, nothing else in flight, is read once its rest arrives and answered (here
served: this door has no drain refusal), its connection then closed; before, the drain closed it at
once (its client got an EOF, no answer) and the stop did not wait for it."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from gateway.sse_upstream import listen_address, serve_raw
from kvgate.multicluster.clusters import ClustersConfig, ClusterSpec
from kvgate.multicluster.serve import GlobalGateway

pytestmark = pytest.mark.asyncio

ANSWER = orjson.dumps({"id": "c", "object": "text_completion", "model": "m", "choices": [{"text": "a"}]})


async def _answer(_body: bytes, writer: asyncio.StreamWriter) -> None:
    writer.write(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
        % (len(ANSWER), ANSWER)
    )


async def test_a_request_half_received_when_the_drain_starts_is_served() -> None:
    server = await serve_raw(_answer)
    address = listen_address(server)
    gw = GlobalGateway(
        ClustersConfig((ClusterSpec("c1", gateway=address),)), "round-robin", fetch=False, drain_s=5
    )
    await gw.start("127.0.0.1", 0)
    body = orjson.dumps({"model": "m", "prompt": "x", "max_tokens": 2})
    head = b"POST /v1/completions HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n\r\n" % len(body)
    r, w = await asyncio.open_connection("127.0.0.1", gw.port)
    stop: asyncio.Task[None] | None = None
    try:
        w.write(head + body[:5])
        await w.drain()
        await asyncio.sleep(0.2)
        stop = asyncio.create_task(gw.stop())
        await asyncio.sleep(0.2)
        assert not stop.done()
        w.write(body[5:])
        await w.drain()
        answer = await asyncio.wait_for(r.read(), 30)
        # (relayed chunked; then the connection closes: ``read`` returned)
        assert answer.startswith(b"HTTP/1.1 200 ") and ANSWER in answer, answer
        assert answer.endswith(b"\r\n0\r\n\r\n"), answer
        await asyncio.wait_for(stop, 30)
    finally:
        w.close()
        if stop is None:
            await gw.stop()
        elif not stop.done():
            await asyncio.wait_for(stop, 30)
        server.close()
