"""Review s18-fixes-b M2 (8fc2508): with flow control, a pinned follow-up whose home has room is picked at
once by ``director.pick``, skipping all of ``FlowDispatcher.arrive``: it used to be picked at once only when
*nothing was queued* and the gate was open (``len(self.ctl) == 0``), else queued in its band. Now a sheddable
follow-up overtakes a critical request queued before it (the pool's gate is the mean over the pool, the
follow-up's is its home alone), and also skips ``fleet.defers`` (--workers), ``ctl.arrived`` and
sloAdmission's judgement. Here: b is loaded past its limit (two requests in flight, set on its count)
(the pool mean is 1: saturated), a critical request Y queues, then a sheddable follow-up F to a (empty)
arrives. Y is queued first and has the higher priority: it should leave first.
Failed on cd71dbe (F ran at a while Y waited), passes on 8fc2508^ (F queued behind Y)."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
from aiohttp import web

from flowcontrol.test_doors import eventually
from gateway.conftest import make_config, make_pools
from gateway.handler_server import RouteServer
from kvgate.gateway.server import GatewayServer


class Held(RouteServer):
    path, shutdown_timeout = "/v1/responses", 0.2

    def __init__(self) -> None:
        super().__init__()
        self.arrivals: list[str] = []
        self.release = asyncio.Event()

    async def _answer(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        self.arrivals.append(body["input"])
        await self.release.wait()
        doc = {"id": f"resp_{body['input']}", "object": "response", "output": []}
        return web.Response(body=orjson.dumps(doc), content_type="application/json")


async def test_a_sheddable_follow_up_does_not_overtake_a_queued_critical_request() -> None:
    a, b = await Held().start(), await Held().start()
    cfg = make_config(
        [a.address, b.address],
        extra={"objectives": [{"name": "critical", "priority": 10}, {"name": "batch", "priority": -1}]},
    )
    cfg.pools[0].picker_config = {
        "featureGates": ["flowControl"],
        "flowControl": {"defaultRequestTTL": "30s"},
        "saturationDetector": {"type": "concurrency-detector", "parameters": {"maxConcurrency": 1}},
        "plugins": [{"type": "least-request"}],
        "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": "least-request"}]}],
    }
    pools = make_pools(cfg)
    gw = GatewayServer(cfg, pools, scrape=False)
    await gw.start()
    http = aiohttp.ClientSession()
    url = f"http://127.0.0.1:{gw.port}/v1/responses"
    tasks: list[asyncio.Future[int]] = []
    # b busy past its limit: two requests in flight there (as prefix affinity or another door's load would
    # put them; set on the gateway's own count here): the pool's mean is 1, saturated.
    eb = next(ep for ep in pools[0].endpoints() if ep.address == b.address)
    eb.inflight.requests += 2
    try:
        assert gw.proxy is not None
        gw.proxy.responses.remember("resp_conv", a.address)

        async def send(inp: str, headers: dict[str, str], prev: str | None = None) -> int:
            body = {"model": "m", "input": inp, **({"previous_response_id": prev} if prev else {})}
            async with http.post(url, data=orjson.dumps(body), headers=headers) as r:
                await r.read()
                return r.status

        flow = pools[0].director.flow
        assert flow is not None
        tasks.append(asyncio.ensure_future(send("y", {"x-gateway-inference-objective": "critical"})))
        await eventually(lambda: len(flow) == 1, "the critical request queued (pool mean 1)")
        tasks.append(
            asyncio.ensure_future(send("f", {"x-gateway-inference-objective": "batch"}, prev="resp_conv"))
        )
        await asyncio.sleep(0.3)
        # The critical request, queued first, must not be overtaken by the sheddable follow-up.
        assert a.arrivals == [], (a.arrivals, len(flow))
    finally:
        eb.inflight.requests -= 2
        a.release.set()
        b.release.set()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
        await http.close()
        await gw.stop(drain_timeout=0.5)
        for h in (a, b):
            await h.stop()
