"""s17-qa M5: a non-streamed generation longer than ``idleTimeoutSeconds`` is waited for (up to
``requestTimeoutSeconds``), and a timeout once the request was written is not re-run elsewhere.

A model server sends nothing of a non-streamed answer until the generation is done (vLLM, SGLang), so
the wait for its head is the generation time. Before: ``idleTimeoutSeconds`` bounded that wait, the
timeout failed the attempt and the proxy re-ran the request on another endpoint (2 executions, then
503): ``requestTimeoutSeconds`` was unreachable for a non-streamed request.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson

from gateway.conftest import base_url, make_config, running_gateway
from kvgate.gateway.server import GatewayServer


async def _post(gw: GatewayServer, body: dict[str, object]) -> tuple[int, dict[str, Any], float]:
    loop = asyncio.get_running_loop()
    t = loop.time()
    url = base_url(gw) + "/v1/completions"
    async with aiohttp.ClientSession() as s, s.post(url, data=orjson.dumps(body)) as r:
        return r.status, orjson.loads(await r.read()), loop.time() - t


async def test_a_non_streamed_answer_slower_than_the_idle_timeout_is_waited_for(backends):
    bs = await backends(2)
    for b in bs:
        b.answer_delay = 1.0
    limits = {"idleTimeoutSeconds": 0.3, "requestTimeoutSeconds": 30}
    async with running_gateway(make_config([b.address for b in bs], extra={"limits": limits})) as gw:
        status, body, _ = await _post(gw, {"model": "m", "prompt": "x", "max_tokens": 2})
        assert status == 200, body
        assert sum(len(b.received) for b in bs) == 1  # run once, not again elsewhere
        assert all(ep.healthy for ep in gw.pools[0].endpoints())


async def test_a_hung_non_streamed_request_ends_at_its_deadline_without_a_rerun(backends):
    bs = await backends(2)
    for b in bs:
        b.mode = "hang"
    limits = {"idleTimeoutSeconds": 0.2, "requestTimeoutSeconds": 1}
    async with running_gateway(make_config([b.address for b in bs], extra={"limits": limits})) as gw:
        status, body, took = await _post(gw, {"model": "m", "prompt": "x"})
        assert status == 504, body
        err = body["error"]
        assert err["code"] == "upstream_timeout"
        assert "requestTimeoutSeconds" in err["message"]
        assert took >= 0.9  # the deadline, not the idle timeout
        assert sum(len(b.received) for b in bs) == 1
        assert gw.metrics.retries._value.get() == 0


async def test_a_stream_that_stalls_before_its_first_byte_is_not_rerun(backends):
    bs = await backends(2)
    for b in bs:
        b.mode = "hang"
    limits = {"idleTimeoutSeconds": 0.3}
    async with running_gateway(make_config([b.address for b in bs], extra={"limits": limits})) as gw:
        status, body, _ = await _post(gw, {"model": "m", "prompt": "x", "stream": True})
        assert status == 504, body
        err = body["error"]
        assert "idleTimeoutSeconds" in err["message"]
        assert sum(len(b.received) for b in bs) == 1


async def test_a_stream_whose_head_came_but_no_first_chunk_is_not_rerun(backends):
    """s17-qafix-d F3: real vLLM sends the event-stream head at once and its first chunk after prefill;
    a stall there (``_first_chunk``'s ReadTimeout) is a 504, not "ended before its first byte" re-run
    elsewhere (2 executions, then a 503)."""
    bs = await backends(2)
    for b in bs:
        b.mode = "head_hang"
    limits = {"idleTimeoutSeconds": 0.3}
    async with running_gateway(make_config([b.address for b in bs], extra={"limits": limits})) as gw:
        status, body, _ = await _post(gw, {"model": "m", "prompt": "x", "stream": True})
        assert status == 504, body
        assert "idleTimeoutSeconds" in body["error"]["message"]
        assert sum(len(b.received) for b in bs) == 1
        assert gw.metrics.retries._value.get() == 0
