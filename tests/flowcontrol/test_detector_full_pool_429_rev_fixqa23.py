"""Review s23-rev-fixqa23 R4: a ``concurrency-detector`` listed in a scheduling profile that leaves no
endpoint (each at ``maxConcurrency x (1 + headroom)`` in flight) refuses the request with a 429 and
``Retry-After``, as upstream GIE's director answers any scheduler error
(``InferencePoolResourceExhausted``); it was a 503 ``service_unavailable``, which clients and Envoy retry
differently. Other filters that leave none keep the 503 (an ineligible pool, not a busy one)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import orjson
import pytest

from flowcontrol.test_doors import HeldBackend
from gateway.conftest import make_config, make_pools
from kvgate.datalayer.endpoint import Endpoint
from kvgate.gateway.server import GatewayServer
from kvgate.scheduling.framework import CycleState, Filter, PluginHandle
from kvgate.scheduling.plugins.pickers import MaxScorePicker
from kvgate.scheduling.profile import SchedulerProfile
from kvgate.scheduling.types import InferenceRequest, NoCapacityError

WAIT = 10.0
PICKER = {
    "plugins": [
        {"type": "concurrency-detector", "parameters": {"maxConcurrency": 1}},
        {"type": "queue-scorer"},
        {"type": "max-score-picker"},
    ],
    "schedulingProfiles": [
        {
            "name": "default",
            "plugins": [
                {"pluginRef": "concurrency-detector"},
                {"pluginRef": "queue-scorer"},
                {"pluginRef": "max-score-picker"},
            ],
        }
    ],
}


async def test_a_pool_full_by_the_detector_filter_answers_429() -> None:
    a = await HeldBackend().start()
    cfg = make_config([a.address])
    cfg.pools[0].picker_config = PICKER
    gw = GatewayServer(cfg, make_pools(cfg), scrape=False)
    held: asyncio.Task[Any] | None = None
    try:
        await gw.start()
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{gw.port}/v1/completions"
            body = orjson.dumps({"model": "m", "prompt": "p", "max_tokens": 1})
            hdrs = {"content-type": "application/json"}

            async def send() -> tuple[int, dict[str, Any], str | None]:
                async with http.post(url, data=body, headers=hdrs) as r:
                    return r.status, await r.json(content_type=None), r.headers.get("Retry-After")

            held = asyncio.ensure_future(send())
            deadline = time.monotonic() + WAIT
            while not a.arrivals:
                assert time.monotonic() < deadline, "the first request never reached the backend"
                await asyncio.sleep(0.01)
            status, doc, retry_after = await asyncio.wait_for(send(), WAIT)
            assert status == 429, (status, doc)
            assert (
                doc["error"]["code"] == "rate_limit_exceeded"
                and "concurrency-detector" in doc["error"]["message"]
            ), doc
            assert retry_after is not None
            a.release.release()
            assert (await asyncio.wait_for(held, WAIT))[0] == 200
    finally:
        if held is not None:
            held.cancel()
        await gw.stop(drain_timeout=0.5)
        await a.stop()


class Nothing(Filter):
    """A filter that keeps nothing (an ineligible pool, not a busy one)."""

    def filter(self, cycle: CycleState, endpoints: list[Endpoint]) -> list[Endpoint]:
        return []


@pytest.mark.parametrize("explain", [False, True])
def test_another_filter_leaving_none_keeps_the_503(explain: bool) -> None:
    profile = SchedulerProfile("default")
    profile.add(Nothing("nothing", PluginHandle()), None)
    profile.add(MaxScorePicker("p", PluginHandle(), 1), None)
    cycle = CycleState(InferenceRequest(request_id="r", model="m"), 0.0, explain)
    with pytest.raises(NoCapacityError) as err:
        profile.run(cycle, [Endpoint("a:1")])
    assert err.value.status == 503 and err.value.code == "service_unavailable", err.value
