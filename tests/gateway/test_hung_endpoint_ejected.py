"""s17-qafix-d F1 (0a646cb, s17-qa M5 fix): a hung endpoint (accepts, never answers a non-streamed
request; /health and /metrics still answer, as a vLLM whose engine is wedged) is never charged: every
non-streamed request sent to it waits the whole requestTimeoutSeconds (600 s by default), then 504, and
the endpoint stays in rotation forever. Before 0a646cb the idle timeout charged it (ejected after
``ejectAfterFailures``). The reviewer's test, moved here by fixqafixd17 (fixed: the timeout is charged)."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson

from gateway.conftest import base_url, make_config, running_gateway


async def test_a_hung_endpoint_is_ejected_after_repeated_timeouts(backends):
    good, hung = await backends(2)
    hung.answer_delay = 60.0  # accepts, answers nothing in time; /health and /metrics fine
    extra = {
        "limits": {"idleTimeoutSeconds": 0.3, "requestTimeoutSeconds": 0.6},
        "health": {"ejectAfterFailures": 2, "ejectBaseSeconds": 30, "ejectMaxSeconds": 60},
    }
    body = orjson.dumps({"model": "m", "prompt": "x", "max_tokens": 2})
    async with running_gateway(make_config([good.address, hung.address], extra=extra)) as gw:
        statuses = []
        async with aiohttp.ClientSession() as s:
            for _ in range(10):
                async with s.post(base_url(gw) + "/v1/completions", data=body) as r:
                    statuses.append(r.status)
        # Round-robin: every other request went to the hung endpoint and waited the full request
        # deadline. After ejectAfterFailures (2) such timeouts it should be out of rotation (ejected),
        # so at most 2 clients get a 504. On 0a646cb: 5 of 10 (it is never charged: "late").
        # (Before 0a646cb: 10 of 10 got 200, each timeout charged and retried elsewhere.)
        assert statuses.count(504) <= 2, f"hung endpoint never taken out of rotation: {statuses}"
    await asyncio.sleep(0)
