"""The drain's deadline cuts a stream mid-body: its client gets an OpenAI error event and a clean end of the
body (before doors16: the connection closed mid-body, no event; the openai SDK raised a connection error
with nothing said). Through the real gateway on loopback, read by the openai SDK and by aiohttp."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import aiohttp
import openai
import orjson
import pytest

from gateway.conftest import base_url, make_config, make_pools, request_errors, until
from kvgate.gateway.server import GatewayServer


async def _started(address: str) -> GatewayServer:
    cfg = make_config([address])
    gw = GatewayServer(cfg, make_pools(cfg))
    await gw.start()
    return gw


async def sdk_stream_cut(
    client: openai.AsyncOpenAI,
    cut: Callable[[], Coroutine[Any, Any, None]],
    stop: Callable[[], Awaitable[None]],
) -> tuple[pytest.ExceptionInfo[openai.APIError], list[str]]:
    """Streams a 200-token completion through ``client`` (the openai SDK); at its first chunk the gateway
    is stopped (``cut()``, as a task) and the stream must end with an ``openai.APIError`` within 20 s; the
    stop is awaited (10 s). Returns the error and the chunks' texts; ``stop()`` stops the gateway if the
    stream failed before ``cut`` started."""
    task: asyncio.Task[None] | None = None
    got: list[str] = []
    try:
        stream = await client.completions.create(model="m", prompt="x", max_tokens=200, stream=True)
        with pytest.raises(openai.APIError) as ei:
            async with asyncio.timeout(20):
                async for chunk in stream:
                    got.append(chunk.choices[0].text)
                    if task is None:
                        task = asyncio.create_task(cut())
        assert task is not None
        await asyncio.wait_for(task, 10)
    finally:
        if task is None:
            await stop()
    return ei, got


async def test_the_drain_cut_ends_an_openai_sdk_stream_with_an_api_error(backends):
    (b,) = await backends(1, tokens=200, chunk_delay=0.05)
    gw = await _started(b.address)
    client = openai.AsyncOpenAI(base_url=base_url(gw) + "/v1", api_key="k", max_retries=0)
    try:
        ei, got = await sdk_stream_cut(
            client, lambda: gw.stop(drain_timeout=0.3), lambda: gw.stop(drain_timeout=0.1)
        )
    finally:
        await client.close()
    # (not APIConnectionError: the SDK read an error event, not a body cut short)
    assert type(ei.value) is openai.APIError, repr(ei.value)
    assert "drain deadline (0.3s) cut the stream" in ei.value.message
    assert 1 <= len(got) < 200
    # Counted as a cut stream, once; the endpoint is not blamed for the gateway's own cut.
    assert request_errors(gw) == {("m", "m", "stream_cut"): 1.0}
    ep = gw.pools[0].endpoints()[0]
    assert ep.healthy and ep.inflight.requests == 0
    assert gw.metrics.ejections._value.get() == 0


async def test_the_drain_cut_event_is_the_last_event_and_the_body_ends_cleanly(backends):
    (b,) = await backends(1, tokens=200, chunk_delay=0.05)
    gw = await _started(b.address)
    body = orjson.dumps({"model": "m", "prompt": "x", "stream": True, "max_tokens": 200})
    try:
        async with aiohttp.ClientSession() as s:
            async with s.post(base_url(gw) + "/v1/completions", data=body) as r:
                assert r.status == 200
                raw = await r.content.readuntil(b"\n\n")
                stop = asyncio.create_task(gw.stop(drain_timeout=0.3))
                # r.read() raises ClientPayloadError on a body cut mid-chunk (the old behaviour).
                raw += await asyncio.wait_for(r.read(), 10)
            await asyncio.wait_for(stop, 10)
    finally:
        if not stop.done():
            await gw.stop(drain_timeout=0.1)
    events = [e for e in raw.split(b"\n\n") if e]
    assert len(events) >= 2 and b"[DONE]" not in raw
    err = orjson.loads(events[-1].removeprefix(b"data: "))["error"]
    assert err["type"] == "service_unavailable" and err["code"] == "service_unavailable"
    assert err["message"] == (
        "the gateway is shutting down: its drain deadline (0.3s) cut the stream before its end"
    )
    assert all(orjson.loads(e.removeprefix(b"data: ")).get("choices") for e in events[:-1])
    # The upstream request was aborted (the model server stops generating), not left to run on.
    await until(lambda: b.disconnects == 1, what="the backend saw its stream's connection go")
