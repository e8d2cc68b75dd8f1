"""qa33b-F1 in ``kvgate serve --clusters`` (the same front as ``kvgate serve``): a request pipelined behind a
stream whose head went out before the drain (so it did not say ``Connection: close``) is answered after it
(this door serves it: it has no drain refusal), then the connection closes, and the stop waits for it;
before, the drain closed the connection after the stream and the second request got no answer (an EOF)."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from gateway.conftest import until
from gateway.sse_upstream import EV, SSE_HEAD, chunk, listen_address, serve_raw
from kvgate.multicluster.clusters import ClustersConfig, ClusterSpec
from kvgate.multicluster.serve import GlobalGateway

pytestmark = pytest.mark.asyncio

SHORT = orjson.dumps({"id": "c", "object": "text_completion", "model": "m", "choices": [{"text": "short"}]})


def _post(body: dict[str, object]) -> bytes:
    raw = orjson.dumps(body)
    return b"POST /v1/completions HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n\r\n%s" % (len(raw), raw)


async def test_a_request_pipelined_behind_a_stream_in_the_drain_is_answered() -> None:
    release = asyncio.Event()
    arrived: list[str] = []

    async def answer(body: bytes, writer: asyncio.StreamWriter) -> None:
        prompt = orjson.loads(body)["prompt"]
        arrived.append(prompt)
        if prompt == "long":  # a stream: its head and first event, the rest once the drain has begun
            writer.write(SSE_HEAD + chunk(EV))
            await writer.drain()
            await release.wait()
            writer.write(chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
            return
        head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(SHORT)
        writer.write(head + SHORT)

    server = await serve_raw(answer)
    clusters = ClustersConfig((ClusterSpec("c1", gateway=listen_address(server)),))
    gw = GlobalGateway(clusters, "round-robin", fetch=False, drain_s=30)
    await gw.start("127.0.0.1", 0)
    r, w = await asyncio.open_connection("127.0.0.1", gw.port)
    stop: asyncio.Task[None] | None = None
    try:
        w.write(
            _post({"model": "m", "prompt": "long", "stream": True}) + _post({"model": "m", "prompt": "short"})
        )
        await w.drain()
        got = await asyncio.wait_for(r.readuntil(b"data: "), 30)  # the stream's head and first event
        assert b"connection: close" not in got.lower(), got
        assert gw.front is not None
        front = gw.front
        await until(lambda: any(c.queue for c in front.connections), 30, "the second request queued")
        stop = asyncio.create_task(gw.stop())
        await until(lambda: front.draining, 30, "the drain began")
        release.set()
        got += await asyncio.wait_for(r.read(), 30)  # (to the connection's end)
        assert b"data: [DONE]" in got, got
        assert got.count(b"HTTP/1.1 200 ") == 2 and got.index(b"[DONE]") < got.index(SHORT), (
            got
        )  # (before: 1)
        assert arrived == ["long", "short"]
        await asyncio.wait_for(stop, 30)
    finally:
        w.close()
        release.set()
        if stop is None:
            await gw.stop()
        elif not stop.done():
            await asyncio.wait_for(stop, 30)
        server.close()
