"""qa32b Q8 in ``kvgate serve``: ``inference_objective_running_requests`` / ``llm_d_epp_request_running``
count a request from its dispatch, as the reference EPP does (``IncRunningRequests`` once the request is
scheduled), not while flow control holds it in its queue (``inference_extension_flow_control_queue_size``
counts it there). Before, ``Proxy.handle`` started the running series before ``director.admit``: a queued
request was running too (fails on 0d8d2049 with running 2)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import aiohttp
import orjson

from flowcontrol.test_doors import HeldBackend, picker_config
from gateway.conftest import base_url, make_config, make_pools
from kvgate.gateway.server import GatewayServer
from kvgate.requestcontrol.director import Director

WAIT_S = 60.0  # generous: a loaded CI machine


async def _eventually(cond: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def _sum(registry: object, name: str) -> float:
    return sum(
        s.value
        for family in registry.collect()  # type: ignore[attr-defined]
        for s in family.samples
        if s.name == name
    )


async def test_a_request_queued_by_flow_control_is_not_running_in_serve() -> None:
    backend = await HeldBackend().start()
    cfg = make_config([backend.address], extra={})
    cfg.pools[0].picker_config = picker_config()  # (concurrency-detector: one request at a time)
    pools = make_pools(cfg)
    director = pools[0].director
    assert isinstance(director, Director) and director.flow is not None
    gw = GatewayServer(cfg, pools, scrape=False)
    await gw.start()
    r = gw.metrics.registry
    try:
        async with aiohttp.ClientSession() as http:

            async def send(prompt: str) -> int:
                body = orjson.dumps({"model": "m", "prompt": prompt, "max_tokens": 1})
                async with http.post(base_url(gw) + "/v1/completions", data=body) as resp:
                    await resp.read()
                    return resp.status

            first = asyncio.ensure_future(send("one"))
            await _eventually(lambda: len(backend.arrivals) == 1, "the first request upstream")
            second = asyncio.ensure_future(send("two"))
            await _eventually(lambda: len(director.flow or ()) == 1, "the second request queued")
            assert _sum(r, "inference_objective_running_requests") == 1, "the queued request counted running"
            assert _sum(r, "llm_d_epp_request_running") == 1, "the queued request counted running"
            backend.release.release()
            await _eventually(lambda: len(backend.arrivals) == 2, "the second request upstream")
            assert _sum(r, "inference_objective_running_requests") == 1  # (the first ended, the second runs)
            backend.release.release()
            assert await first == await second == 200
        assert _sum(r, "inference_objective_running_requests") == 0
        assert _sum(r, "llm_d_epp_request_running") == 0
    finally:
        await gw.stop(drain_timeout=1.0)
        await backend.stop()
