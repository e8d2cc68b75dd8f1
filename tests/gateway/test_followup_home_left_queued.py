"""Review s19-qa L4: with flow control, a Responses follow-up queued pinned to its busy home was answered
``503`` "no endpoint in the request's subset hint is known to the picker" when a reload removed the home
before the queue picked it. It is now picked as any request, as one arriving after the reload is (the
pin is soft, ``InferenceRequest.subset_soft``): another server answers it, here vLLM's 404 for a response it
does not hold. Fails before the fix (503, b never sees it). Adapted from the QA's
``test_qa19_followup_home_removed_while_queued.py`` (in process, ``ConfigReloader`` for the SIGHUP)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
import yaml

from gateway.conftest import base_url, running_gateway
from gateway.test_followup_busy_home import HoldingStore
from kvgate.config.gateway import parse_gateway_config
from kvgate.gateway.reload import ConfigReloader

PICKER = {
    "featureGates": ["flowControl"],
    "flowControl": {"defaultRequestTTL": "20s"},
    "saturationDetector": {"type": "concurrency-detector", "parameters": {"maxConcurrency": 1}},
    "plugins": [{"type": "queue-scorer"}],
    "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": "queue-scorer"}]}],
}


def _doc(address: str) -> dict[str, Any]:
    pool = {"name": "p", "endpoints": [address], "models": ["m"], "endpointPickerConfig": PICKER}
    return {"listen": {"host": "127.0.0.1", "port": 0}, "pools": [pool]}


async def _until(cond: Any) -> None:
    for _ in range(100_000):
        if cond():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition never held")


async def test_a_queued_follow_up_whose_home_left_the_pool_is_picked_as_any_request(tmp_path) -> None:
    a, b = HoldingStore("a"), HoldingStore("b")
    await a.start()
    await b.start()
    f = tmp_path / "gw.yaml"
    f.write_text(yaml.safe_dump(_doc(a.address)))
    try:
        async with running_gateway(parse_gateway_config(_doc(a.address))) as gw, aiohttp.ClientSession() as s:
            url = base_url(gw) + "/v1/responses"

            async def send(inp: str, prev: str | None = None) -> tuple[int, bytes]:
                body = {"model": "m", "input": inp, **({"previous_response_id": prev} if prev else {})}
                async with s.post(url, data=orjson.dumps(body)) as r:
                    return r.status, await r.read()

            assert gw.proxy is not None
            a.made.append("resp_conv")
            gw.proxy.responses.remember("resp_conv", a.address)
            old = gw.pools[0].director
            busy = asyncio.ensure_future(send("hold"))  # a's one slot
            await _until(lambda: a.arrivals == ["hold"])
            follow = asyncio.ensure_future(send("next turn", "resp_conv"))  # queued, pinned to a
            await _until(lambda: old.queued() == 1)
            f.write_text(yaml.safe_dump(_doc(b.address)))  # the home leaves the pool
            rl = ConfigReloader(str(f), gw.cfg, gw.pools, None, gw.apply_limits, server=gw)
            assert await rl.areload()
            a.release.set()
            status, body = await asyncio.wait_for(follow, 10)
            assert (await asyncio.wait_for(busy, 10))[0] == 200
            # b answers (vLLM's 404: it does not hold the response), not the gateway's 503
            assert status != 503, body
            assert b.arrivals == ["next turn"], (status, body, b.arrivals)
            assert status == 404 and b"not found" in body, (status, body)
    finally:
        a.release.set()
        await a.stop()
        await b.stop()
