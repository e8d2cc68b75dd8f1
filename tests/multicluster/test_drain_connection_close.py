"""An answer whose head goes out while the gateway drains says ``Connection: close`` (its connection closes
after it), in both doors: ``kvgate serve --clusters`` relays every answer as a stream, and before doors18
such a head never said it (a request half received when the drain began is served there, its answer's
head without it; the same for a request whose cluster answered after the drain began), nor did
``kvgate serve``'s streams whose head went out during the drain; a whole answer (``Response``) and
``kvgate serve``'s drain refusal (503) always did."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest
from aiohttp import web

from gateway.conftest import base_url, make_config, make_pools
from gateway.handler_server import serve_handler
from kvgate.gateway.server import GatewayServer
from kvgate.multicluster.clusters import ClustersConfig, ClusterSpec
from kvgate.multicluster.serve import GlobalGateway

BODY = orjson.dumps({"model": "m", "prompt": "x", "max_tokens": 2, "stream": True})
HEAD = b"POST /v1/completions HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n\r\n" % len(BODY)


class Held:
    """A model server whose streams wait for ``go`` before their head."""

    def __init__(self) -> None:
        self.arrived, self.go = asyncio.Event(), asyncio.Event()
        self.address = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        self.arrived.set()
        await self.go.wait()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'data: {"choices": [{"index": 0, "text": "a"}]}\n\ndata: [DONE]\n\n')
        await resp.write_eof()
        return resp


@pytest.fixture
async def held() -> AsyncIterator[Held]:
    h = Held()
    runner, port = await serve_handler(h.handle)
    h.address = f"127.0.0.1:{port}"
    yield h
    h.go.set()
    await runner.cleanup()


def _head(answer: bytes) -> dict[str, str]:
    lines = answer.partition(b"\r\n\r\n")[0].decode().split("\r\n")
    assert lines[0].startswith("HTTP/1.1 200 "), answer
    return {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}


async def _exchange(port: int) -> bytes:
    """The stream's request sent, its whole answer read (to the connection's close)."""
    r, w = await asyncio.open_connection("127.0.0.1", port)
    try:
        w.write(HEAD + BODY)
        await w.drain()
        return await asyncio.wait_for(r.read(), 30)
    finally:
        w.close()


async def test_clusters_a_stream_answered_during_the_drain_says_connection_close(held: Held) -> None:
    gw = GlobalGateway(
        ClustersConfig((ClusterSpec("c1", gateway=held.address),)), "round-robin", fetch=False, drain_s=5
    )
    await gw.start("127.0.0.1", 0)
    stop: asyncio.Task[None] | None = None
    try:
        answering = asyncio.create_task(_exchange(gw.port))
        await asyncio.wait_for(held.arrived.wait(), 30)
        stop = asyncio.create_task(gw.stop())
        await asyncio.sleep(0.2)
        held.go.set()
        answer = await asyncio.wait_for(answering, 30)
    finally:
        if stop is None:
            await gw.stop()
        else:
            await asyncio.wait_for(stop, 30)
    assert _head(answer).get("connection") == "close", answer
    assert b"data: [DONE]" in answer and answer.endswith(b"\r\n0\r\n\r\n"), answer


async def test_clusters_a_request_half_received_when_the_drain_starts_is_answered_connection_close(
    held: Held,
) -> None:
    held.go.set()  # (answered at once)
    gw = GlobalGateway(
        ClustersConfig((ClusterSpec("c1", gateway=held.address),)), "round-robin", fetch=False, drain_s=5
    )
    await gw.start("127.0.0.1", 0)
    r, w = await asyncio.open_connection("127.0.0.1", gw.port)
    stop: asyncio.Task[None] | None = None
    try:
        w.write(HEAD + BODY[:5])
        await w.drain()
        await asyncio.sleep(0.2)
        stop = asyncio.create_task(gw.stop())
        await asyncio.sleep(0.2)
        w.write(BODY[5:])
        await w.drain()
        answer = await asyncio.wait_for(r.read(), 30)
    finally:
        w.close()
        if stop is None:
            await gw.stop()
        else:
            await asyncio.wait_for(stop, 30)
    assert _head(answer).get("connection") == "close", answer
    assert b"data: [DONE]" in answer, answer


async def test_serve_a_stream_answered_during_the_drain_says_connection_close(held: Held) -> None:
    cfg = make_config([held.address])
    gw = GatewayServer(cfg, make_pools(cfg))
    await gw.start()
    port = int(base_url(gw).rsplit(":", 1)[1])
    stop: asyncio.Task[None] | None = None
    try:
        answering = asyncio.create_task(_exchange(port))
        await asyncio.wait_for(held.arrived.wait(), 30)
        stop = asyncio.create_task(gw.stop(drain_timeout=5))
        await asyncio.sleep(0.2)
        held.go.set()
        answer = await asyncio.wait_for(answering, 30)
    finally:
        if stop is None:
            await gw.stop(drain_timeout=1)
        else:
            await asyncio.wait_for(stop, 30)
    assert _head(answer).get("connection") == "close", answer
    assert b"data: [DONE]" in answer, answer


async def test_a_stream_whose_client_said_connection_close_says_it_too(held: Held) -> None:
    """Outside a drain: the client's ``Connection: close`` is answered with one (as a whole answer)."""
    held.go.set()
    gw = GlobalGateway(ClustersConfig((ClusterSpec("c1", gateway=held.address),)), "round-robin", fetch=False)
    await gw.start("127.0.0.1", 0)
    try:
        r, w = await asyncio.open_connection("127.0.0.1", gw.port)
        w.write(HEAD.replace(b"Host: gw\r\n", b"Host: gw\r\nConnection: close\r\n") + BODY)
        await w.drain()
        answer = await asyncio.wait_for(r.read(), 30)
        w.close()
    finally:
        await gw.stop()
    assert _head(answer).get("connection") == "close", answer
