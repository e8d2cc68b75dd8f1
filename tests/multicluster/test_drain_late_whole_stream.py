"""Review s17-doors F3 (c8b0192): ``kvgate serve --clusters`` cuts a stream that starts relaying after the
drain deadline's cut even when its cluster's whole answer (events, ``[DONE]``, the body's end) has already
arrived: ``GlobalGateway._relay`` calls ``routed.abort()`` (aiohttp ``ClientResponse.close``) before reading
anything, and aiohttp's stream reader then raises before handing out the buffered bytes, so the client
gets only the drain's error event, its complete answer thrown away. ``kvgate serve`` does not cut such a
stream (``Proxy.cut_streams`` / ``_relay_stream``: ``if resp.received: continue``, "one whose body already
arrived whole is not cut"), so the two doors differ, and a complete answer is turned into an error.
Fixed: a stream whose upstream body arrived whole (``Routed.received``) is not cut, at its start or in
``_cut_streams``."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
import pytest

from gateway.sse_upstream import EV, SSE_HEAD, chunk, listen_address, serve_raw
from gateway.test_drain_cut_races import _events
from kvgate.multicluster.clusters import ClustersConfig, ClusterSpec
from kvgate.multicluster.serve import GlobalGateway

pytestmark = pytest.mark.asyncio

DONE = b"data: [DONE]\n\n"


async def _upstream(late_after_s: float) -> asyncio.Server:
    """Every POST: a 200 event stream. ``late`` in the prompt: answered ``late_after_s`` later, whole
    (head, one event, [DONE], the body's end, in one write); else one event and the stream held open."""

    async def answer(body: bytes, writer: asyncio.StreamWriter) -> None:
        if b"late" in body:
            await asyncio.sleep(late_after_s)
            writer.write(SSE_HEAD + chunk(EV) + chunk(DONE) + b"0\r\n\r\n")
        else:
            writer.write(SSE_HEAD + chunk(EV))

    return await serve_raw(answer)


async def test_a_whole_answer_arriving_after_the_cut_is_not_thrown_away() -> None:
    server = await _upstream(0.9)  # the deadline (0.3 s) falls 0.6 s after the late request
    address = listen_address(server)
    gw = GlobalGateway(
        ClustersConfig((ClusterSpec("c1", gateway=address),)), "round-robin", fetch=False, drain_s=0.3
    )
    await gw.start("127.0.0.1", 0)
    url = f"http://127.0.0.1:{gw.port}/v1/completions"
    stop = None

    async def late(s: aiohttp.ClientSession) -> bytes:
        body = orjson.dumps({"model": "m", "prompt": "late", "stream": True, "max_tokens": 50})
        async with s.post(url, data=body) as r:
            assert r.status == 200
            return await r.read()

    try:
        async with aiohttp.ClientSession() as s:
            body = orjson.dumps({"model": "m", "prompt": "x", "stream": True, "max_tokens": 50})
            async with s.post(url, data=body) as r:  # keeps the drain busy to its deadline
                await r.content.readuntil(b"\n\n")
                b = asyncio.create_task(late(s))
                await asyncio.sleep(0.3)
                stop = asyncio.create_task(gw.stop())
                await asyncio.wait_for(r.read(), 10)
            b_raw = await asyncio.wait_for(b, 10)
            await asyncio.wait_for(stop, 10)
    finally:
        if stop is None:
            await gw.stop()
        server.close()
    # Fails on main: only the drain's error event (the event and [DONE] that had arrived are dropped).
    assert b_raw == EV + DONE, _events(b_raw)
