"""Review s18-fixes-c L2: a deadline cut the endpoint did not own on a relayed answer (a stream that
stalls after its first chunk; a non-streamed body past ``whole_max``) is charged for the time the
endpoint held the request (``HealthTracker.timed_out``), as a head's timeout is. Before: a stream wedged
after its first chunk, under the overload it causes (every later request queued past half its bound),
was charged only for the first request's timeout, never again."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
import orjson

from gateway.conftest import base_url, running_gateway
from gateway.sse_upstream import Staller
from gateway.test_queue_time_not_charged import _config
from kvgate.gateway.server import GatewayServer


async def _whole(gw: GatewayServer, prompt: str) -> int:
    body = orjson.dumps({"model": "m", "prompt": prompt, "max_tokens": 4})
    async with aiohttp.ClientSession() as s, s.post(base_url(gw) + "/v1/completions", data=body) as r:
        with contextlib.suppress(aiohttp.ClientPayloadError):  # (200, then the body cut)
            await r.read()
        return r.status


async def _stream(gw: GatewayServer, prompt: str) -> tuple[int, bytes]:
    body = orjson.dumps({"model": "m", "prompt": prompt, "max_tokens": 4, "stream": True})
    async with aiohttp.ClientSession() as s, s.post(base_url(gw) + "/v1/completions", data=body) as r:
        return r.status, await r.read()


def _failures(gw: GatewayServer, address: str) -> int:
    st = gw.health._state.get(address)
    return 0 if st is None else st.failures


async def test_a_stream_wedged_after_its_first_chunk_is_charged_when_every_request_queued_first(backends):
    (b,) = await backends(1, tokens=4, chunk_delay=60.0)  # the first chunk, then nothing
    async with running_gateway(_config(b.address, 1.0)) as gw:
        posts = []
        for i in range(9):  # one every 0.25 s: each queues ~0.75 s behind the one before
            posts.append(asyncio.ensure_future(_stream(gw, f"p{i}")))
            await asyncio.sleep(0.25)
        done = await asyncio.wait_for(asyncio.gather(*posts), 20)
        sent = len(b.received)
        failures = _failures(gw, b.address)
    statuses = [s for s, _ in done]
    assert all(s in (200, 504) for s in statuses), statuses
    cut = [t for s, t in done if s == 200]
    assert all(b'"error"' in t and b"[DONE]" not in t for t in cut)  # each cut at its deadline
    assert sent >= 5, f"only {sent} reached the endpoint"  # (the rest timed out in the queue)
    # The first owned its deadline (charged); the others had ~0.25 s each, back to back: about one
    # failure per 0.5 s of them (before: none of them).
    assert failures >= 3, failures


async def test_a_relayed_body_wedged_mid_way_is_charged_when_every_request_queued_first() -> None:
    # A head (Content-Length 100000) and 2000 body bytes (past the test's ``whole_max``: relayed, not
    # held), then nothing: a wedged engine mid-body.
    e = Staller(100000, b'{"id": "x", "pad": "' + b"x" * 1980)
    address = await e.start()
    try:
        async with running_gateway(_config(address, 1.0)) as gw:
            gw.proxy.whole_max = 1000  # the 2000 bytes sent are relayed as they come (``_relay_whole``)
            posts = []
            for i in range(9):  # one every 0.25 s: each queues ~0.75 s behind the one before
                posts.append(asyncio.ensure_future(_whole(gw, f"p{i}")))
                await asyncio.sleep(0.25)
            statuses = await asyncio.wait_for(asyncio.gather(*posts), 20)
            failures = _failures(gw, address)
        assert all(s in (200, 504) for s in statuses), statuses
        assert e.requests >= 5, f"only {e.requests} reached the endpoint"
        assert failures >= 3, failures  # (before: 1, the first request's, which owned its deadline)
    finally:
        await e.stop()
