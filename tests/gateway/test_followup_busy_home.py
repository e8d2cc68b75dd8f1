"""Review s18-fixes-b M1 (8fc2508): with flow control, a Responses follow-up whose home is saturated at
its arrival is unpinned for good (``ireq.subset = None``) and dispatched to whichever endpoint frees
first: on vLLM (the store is per server) that is a 404 ``Response with id ... not found`` for a
conversation that would have been answered by its home a moment later. Before 8fc2508 it waited in the
queue for its home and got a 200. Failed on cd71dbe (404 from b), passes on 8fc2508^.

Fixed by fixdoors18b (the follow-up is admitted as any request, queued pinned)."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
from aiohttp import web

from flowcontrol.test_doors import eventually, picker_config
from gateway.conftest import make_config, make_pools
from gateway.responses_backend import ResponsesStore
from kvgate.gateway.server import GatewayServer


class HoldingStore(ResponsesStore):
    """vLLM-like store; the input ``hold`` waits for ``release``."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.release = asyncio.Event()
        self.arrivals: list[str] = []

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        self.arrivals.append(str(body.get("input")))
        if body.get("input") == "hold":
            await self.release.wait()
        request._read_bytes = orjson.dumps(body)  # (re-read by the parent)
        return await super()._answer(request)


async def test_a_follow_up_whose_home_is_busy_is_answered_by_its_home() -> None:
    a, b = HoldingStore("a"), HoldingStore("b")
    await a.start()
    await b.start()
    cfg = make_config([a.address, b.address], extra={})
    pc = picker_config()  # (concurrency-detector, maxConcurrency 1)
    # the least-loaded endpoint (this gateway's own in-flight counts): b, deterministically
    pc["plugins"] = [{"type": "least-request"}]
    pc["schedulingProfiles"] = [{"name": "default", "plugins": [{"pluginRef": "least-request"}]}]
    cfg.pools[0].picker_config = pc
    pools = make_pools(cfg)
    gw = GatewayServer(cfg, pools, scrape=False)
    await gw.start()
    http = aiohttp.ClientSession()
    url = f"http://127.0.0.1:{gw.port}/v1/responses"
    try:
        assert gw.proxy is not None
        a.made.append("resp_conv")  # a conversation a made earlier
        gw.proxy.responses.remember("resp_conv", a.address)

        async def send(inp: str, prev: str | None = None) -> tuple[int, bytes]:
            body = {"model": "m", "input": inp, **({"previous_response_id": prev} if prev else {})}
            async with http.post(url, data=orjson.dumps(body)) as r:
                return r.status, await r.read()

        busy = asyncio.ensure_future(send("hold", "resp_conv"))  # a is busy with this one (its home)
        await eventually(lambda: a.arrivals == ["hold"], "the first follow-up at its home")
        follow = asyncio.ensure_future(send("next turn", "resp_conv"))  # home a saturated now
        await asyncio.sleep(0.3)
        a.release.set()  # a frees a moment later
        status, body = await asyncio.wait_for(follow, 10)
        assert (await asyncio.wait_for(busy, 10))[0] == 200
        assert status == 200, (status, body, a.arrivals, b.arrivals)
        assert b.arrivals == []
    finally:
        a.release.set()
        await http.close()
        await gw.stop(drain_timeout=0.5)
        await a.stop()
        await b.stop()
