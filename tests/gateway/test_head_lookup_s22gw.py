"""Review s22-gw: ``HEAD /v1/responses/{id}?stream=true`` is asked upstream as a GET and the whole upstream
answer is read and dropped before the HEAD is done: for a background response still generating (vLLM's
retrieval stream follows it until it ends) the HEAD holds its connection, the next request on it, a
``maxConcurrentRequests`` slot and the upstream stream for as long as the generation runs. Its head has
nothing more to say once it is out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Self

import aiohttp
import orjson
import pytest
from aiohttp import web

from gateway.conftest import base_url, make_config, running_gateway, until
from gateway.handler_server import serve_app, serving
from gateway.responses_backend import ResponsesStore, make_responses


class _Generating(ResponsesStore):
    """vLLM with a background response still generating: its retrieval stream sends one event, then the
    stream goes on for 60 s (an event each 0.1 s)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.streams_open = 0

    async def start(self) -> Self:
        app = web.Application()
        app.router.add_post(self.path, self._answer)
        app.router.add_get("/v1/responses/{rid}", self._slow)
        self._runner, self.port = await serve_app(app, access_log=None, shutdown_timeout=0.5)
        self.address = f"127.0.0.1:{self.port}"
        return self

    async def _slow(self, request: web.Request) -> web.StreamResponse:
        self.lookups.append(("GET", request.path_qs))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        self.streams_open += 1
        try:
            event = {"type": "response.in_progress", "response": {"id": request.match_info["rid"]}}
            for _ in range(600):  # (60 s: an event each 0.1 s)
                await resp.write(b"event: response.in_progress\ndata: %s\n\n" % orjson.dumps(event))
                await asyncio.sleep(0.1)
            await resp.write_eof()
        except ConnectionError:
            pass
        finally:
            self.streams_open -= 1
        return resp


@pytest.fixture
async def store() -> AsyncIterator[_Generating]:
    async with serving(_Generating("s0")) as (started,):
        yield started


async def test_head_on_a_stream_still_generating_is_done_once_its_head_is_out(store: _Generating) -> None:
    """HEAD (``?stream=true``) then a GET of ``/healthz`` on one connection: the GET is answered at once and
    the upstream stream is let go (FAILS on add20c07: the HEAD reads the stream to its end, 60 s; the GET
    waits behind it)."""
    async with running_gateway(make_config([store.address])) as gw, aiohttp.ClientSession() as s:
        (rid,) = await make_responses(s, base_url(gw), 1)
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        try:
            writer.write(
                f"HEAD /v1/responses/{rid}?stream=true HTTP/1.1\r\nHost: x\r\n\r\n"
                "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
            )
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 200 "), head
            try:
                rest = await asyncio.wait_for(reader.read(-1), 5)
            except TimeoutError:
                pytest.fail("the request after the HEAD was not answered in 5 s (the HEAD reads on)")
            assert rest.startswith(b"HTTP/1.1 200 "), rest[:200]
        finally:
            writer.close()
        await until(lambda: store.streams_open == 0, 5, "the upstream stream let go")


class _Peers(ResponsesStore):
    """The store, noting which upstream connection (the gateway's port) each lookup came on."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.peers: list[object] = []

    async def _retrieve(self, request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        self.peers.append(request.transport.get_extra_info("peername"))
        return await super()._retrieve(request)


async def test_head_on_a_json_answer_keeps_the_upstream_connection() -> None:
    """Review s22-late F4: a HEAD whose (small, known-length) JSON answer has all arrived drops it and
    gives the upstream connection back to the pool; only an answer still coming is cut. Three HEADs and a
    GET in turn come on one upstream connection (FAILS on aa45247f: every HEAD closed its connection, four
    lookups on four connections)."""
    async with serving(_Peers("s0")) as (peers,), running_gateway(make_config([peers.address])) as gw:
        async with aiohttp.ClientSession() as s:
            (rid,) = await make_responses(s, base_url(gw), 1)
            for method in ("HEAD", "HEAD", "HEAD", "GET"):
                async with s.request(method, f"{base_url(gw)}/v1/responses/{rid}") as r:
                    assert r.status == 200, await r.text()
                    await r.read()
        assert len(peers.peers) == 4
        assert len(set(peers.peers)) == 1, peers.peers
