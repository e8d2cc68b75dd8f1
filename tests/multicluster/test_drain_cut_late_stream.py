"""``kvgate serve --clusters``: a stream whose answer starts in the second after the drain deadline's cut
is cut at once with the drain's error event (doors17; ``kvgate serve`` since fixdoors16, review s16-doors
L6: ``tests/gateway/test_drain_cut_races.py``). Before, ``--clusters`` cut only the streams relaying at
the deadline and waited only for them: a request still waiting for its cluster's answer was cut with its
connection when the stop closed them (the client told nothing), or, answered in that second, ran on
until then."""

from __future__ import annotations

import asyncio

import aiohttp
import openai
import orjson
import pytest

from gateway.sse_upstream import late_stream, listen_address
from gateway.test_drain_cut_races import _events
from kvgate.multicluster.clusters import ClustersConfig, ClusterSpec
from kvgate.multicluster.serve import GlobalGateway

pytestmark = pytest.mark.asyncio


async def one_mid_body_one_late(server: asyncio.Server) -> tuple[bytes, bytes, GlobalGateway]:
    """A ``--clusters`` gateway (drain deadline 0.3 s) on ``server``'s one cluster: a stream is opened and
    its first event read; then a ``late`` stream is sent and, 0.3 s later, the gateway stopped; (the
    first stream's whole body, the late one's, the gateway)."""
    gw = GlobalGateway(
        ClustersConfig((ClusterSpec("c1", gateway=listen_address(server)),)),
        "round-robin",
        fetch=False,
        drain_s=0.3,
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
                a_raw = await asyncio.wait_for(r.read(), 30)
            b_raw = await asyncio.wait_for(b, 30)
            await asyncio.wait_for(stop, 30)
    finally:
        if stop is None:
            await gw.stop()
        server.close()
    return a_raw, b_raw, gw


async def test_a_stream_answered_just_after_the_cut_is_cut_with_the_event() -> None:
    """At the deadline (0.3 s) one stream is mid-body and another request still waits for its cluster's
    answer, which comes 0.3 s after the deadline. Both clients get the drain's error event as their last
    event and the body's clean end (aiohttp reads the whole body). Fails before: the late one's body
    breaks off (``ServerDisconnectedError`` / ``ClientPayloadError``)."""
    # (the deadline falls 0.6 s after the late request)
    a_raw, b_raw, gw = await one_mid_body_one_late(await late_stream(0.9))
    assert _events(a_raw)[-1]["error"]["code"] == "service_unavailable"
    events = _events(b_raw)
    assert events[-1]["error"]["code"] == "service_unavailable", events
    # Both counted as cut streams; not the cluster's doing.
    assert gw.metrics.errors.counts == {("m", "m", "stream_cut"): 2}
    cuts = gw.metrics.registry.get_sample_value("kvgate_multicluster_responses_cut_total", {"cluster": "c1"})
    assert cuts is None


async def test_an_openai_sdk_stream_answered_just_after_the_cut_raises_the_drain_error() -> None:
    """The same late stream read by the openai SDK: ``APIError`` with the drain's message (before:
    ``APIConnectionError``, nothing said)."""
    server = await late_stream(0.5)
    address = listen_address(server)
    gw = GlobalGateway(
        ClustersConfig((ClusterSpec("c1", gateway=address),)), "round-robin", fetch=False, drain_s=0.2
    )
    await gw.start("127.0.0.1", 0)
    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{gw.port}/v1", api_key="k", max_retries=0)
    stop = None
    try:
        create = asyncio.create_task(
            client.completions.create(model="m", prompt="late", max_tokens=50, stream=True)
        )
        # (until the gateway holds the request, its cluster not answering yet: a fixed 0.1 s stopped the
        # gateway before the SDK had connected at load ~15, APIConnectionError)
        deadline = asyncio.get_running_loop().time() + 30
        while not gw.inflight:
            assert asyncio.get_running_loop().time() < deadline, "the request never reached the gateway"
            await asyncio.sleep(0.005)
        stop = asyncio.create_task(gw.stop())
        with pytest.raises(openai.APIError) as ei:
            async with asyncio.timeout(10):
                async for _ in await create:
                    pass
        await asyncio.wait_for(stop, 30)
    finally:
        await client.close()
        if stop is None:
            await gw.stop()
        server.close()
    assert type(ei.value) is openai.APIError, repr(ei.value)
    assert ei.value.message == (
        "the gateway is shutting down: its drain deadline (0.2s) cut the stream before its end"
    )
