"""``kvgate serve``: a Responses follow-up pinned to its home (``previous_response_id``) keeps the hardening
plain requests have (review s18-doors M4: a poison follow-up's 500 at its home, retried elsewhere, met vLLM's
404 there and charged the home; repeated, it ejected healthy endpoints), only at its home (review s18-fixes-b
L1: a 500 after a retry took it elsewhere is that server's). With flow control a follow-up waiting for its
busy home no longer holds up its band behind it (review s18-doors M3: the dispatcher passes over it and
keeps it first in line for its home); it stays pinned (review s18-fixes-b M1, M2:
``test_followup_busy_home.py``, ``test_followup_skips_priority.py``)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from flowcontrol.test_doors import eventually, picker_config
from gateway.conftest import base_url, make_config, make_pools, running_gateway
from gateway.handler_server import RouteServer, serving
from gateway.responses_backend import ResponsesStore
from kvgate.bench.ports import free_port
from kvgate.gateway.server import GatewayServer


class PoisonStore(ResponsesStore):
    """vLLM-like: an unknown ``previous_response_id`` is a 404 before anything runs; the input ``poison``
    is an engine error (500) wherever it runs."""

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        prev = body.get("previous_response_id")
        if body.get("input") == "poison" and (prev is None or prev in self.made):
            return web.json_response(
                {"error": {"message": "engine error", "type": "InternalServerError", "code": 500}}, status=500
            )
        return await super()._answer(request)


def _ejecting(stores: list[PoisonStore]) -> Any:
    """A gateway over ``stores`` that ejects an endpoint after 2 failures in a row."""
    health = {"ejectAfterFailures": 2, "ejectBaseSeconds": 30, "ejectMaxSeconds": 60}
    return make_config([st.address for st in stores], extra={"health": health})


async def test_poison_follow_ups_eject_nobody() -> None:
    async with (
        serving(*(PoisonStore(f"s{i}") for i in range(3))) as stores,
        running_gateway(_ejecting(stores)) as gw,
        aiohttp.ClientSession() as s,
    ):
        url = base_url(gw) + "/v1/responses"
        async with s.post(url, data=orjson.dumps({"model": "m", "input": "hi"})) as r:
            rid = (await r.json())["id"]
        for _ in range(4):
            body = {"model": "m", "input": "poison", "previous_response_id": rid}
            async with s.post(url, data=orjson.dumps(body)) as r:
                assert r.status == 500  # (its home's own answer, not another's 404)
                await r.read()
        # The same poison input without a follow-up ejects nobody (s17-qa M4); pinned, neither should it.
        assert [ep.healthy for ep in gw.pools[0].endpoints()] == [True] * 3
        assert gw.metrics.ejections._value.get() == 0


async def test_poison_plain_requests_eject_nobody() -> None:
    """The control: the same input, no follow-up (passes on main)."""
    async with (
        serving(*(PoisonStore(f"s{i}") for i in range(3))) as stores,
        running_gateway(_ejecting(stores)) as gw,
        aiohttp.ClientSession() as s,
    ):
        for _ in range(4):
            async with s.post(
                base_url(gw) + "/v1/responses", data=orjson.dumps({"model": "m", "input": "poison"})
            ) as r:
                assert r.status == 500
        assert [ep.healthy for ep in gw.pools[0].endpoints()] == [True] * 3


class Held(RouteServer):
    path, shutdown_timeout = "/v1/responses", 0.2

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name, self.arrivals, self.release = name, [], asyncio.Semaphore(0)

    async def _answer(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        self.arrivals.append(body["input"])
        await self.release.acquire()
        doc = {
            "id": f"resp_{self.name}_{body['input']}",
            "object": "response",
            "output": [],
            "usage": {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2},
        }
        return web.Response(body=orjson.dumps(doc), content_type="application/json")


async def test_a_pinned_follow_up_does_not_hold_up_its_flow() -> None:
    backends = [await Held(n).start() for n in "abc"]
    a = backends[0]
    cfg = make_config([b.address for b in backends], extra={})
    cfg.pools[0].picker_config = picker_config()
    pools = make_pools(cfg)
    gw = GatewayServer(cfg, pools, scrape=False)
    await gw.start()
    http = aiohttp.ClientSession()
    tasks: list[asyncio.Task[int]] = []
    try:
        assert gw.proxy is not None
        gw.proxy.responses.remember("resp_pin", a.address)
        gw.proxy.responses.remember("resp_x", a.address)

        async def send(inp: str, prev: str | None = None) -> int:
            body = {"model": "m", "input": inp, **({"previous_response_id": prev} if prev else {})}
            hdrs = {"content-type": "application/json", "x-gateway-inference-fairness-id": "t"}
            async with http.post(
                f"http://127.0.0.1:{gw.port}/v1/responses", data=orjson.dumps(body), headers=hdrs
            ) as r:
                await r.read()
                return r.status

        def arrived() -> list[str]:
            return [x for b in backends for x in b.arrivals]

        tasks.append(asyncio.ensure_future(send("hold", "resp_pin")))  # a follow-up held at a (a busy)
        await eventually(lambda: arrived() == ["hold"], "the first follow-up at a backend")
        assert a.arrivals == ["hold"]  # (its home had room: picked there at once)
        tasks.append(asyncio.ensure_future(send("follow", "resp_x")))  # home a busy: picked as any
        await asyncio.sleep(0.2)
        tasks.append(asyncio.ensure_future(send("new")))  # b and c are free: it should go now
        await eventually(
            lambda: "new" in arrived(),
            f"the new request at a free endpoint (b or c); queued {len(pools[0].director.flow)}",
        )  # type: ignore[union-attr,arg-type]
        assert "follow" not in arrived()  # (still waiting for its home, pinned)
        a.release.release()  # a's first follow-up answers: its home has room, and it goes there
        await eventually(lambda: "follow" in arrived(), "the queued follow-up at its home")
        assert a.arrivals == ["hold", "follow"]
    finally:
        for b in backends:
            for _ in range(5):
                b.release.release()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
        await http.close()
        await gw.stop(drain_timeout=0.5)
        for b in backends:
            await b.stop()


class Fails(RouteServer):
    """Answers every POST with a 500 (an engine error), counting them."""

    path, shutdown_timeout = "/v1/responses", 0.2

    def __init__(self) -> None:
        super().__init__()
        self.hits = 0

    async def _answer(self, request: web.Request) -> web.Response:
        await request.read()
        self.hits += 1
        return web.json_response({"error": {"message": "engine error", "code": 500}}, status=500)


async def test_a_follow_up_whose_home_refuses_the_connection_is_not_retried_elsewhere() -> None:
    """Its home refuses the connection: the client's 503 with ``Retry-After``, and no other endpoint is
    sent it (each would answer vLLM's 404 for a response it never stored; prev26). Until prev26 the retry
    went elsewhere, where review s18-fixes-b L1 made a 500 that server's (the plain requests' rule)."""
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there: connection refused (kvgate.bench.ports)
    async with serving(Fails(), Fails()) as fails:
        cfg = make_config([dead] + [f.address for f in fails], extra={})
        async with running_gateway(cfg) as gw, aiohttp.ClientSession() as s:
            assert gw.proxy is not None
            gw.proxy.responses.remember("resp_home", dead)
            body = {"model": "m", "input": "x", "previous_response_id": "resp_home"}
            async with s.post(base_url(gw) + "/v1/responses", data=orjson.dumps(body)) as r:
                assert r.status == 503 and r.headers["Retry-After"] == "1"
                err = (await r.json())["error"]
                assert err["code"] == "upstream_unavailable" and "not sent elsewhere" in err["message"]
            assert [f.hits for f in fails] == [0, 0]
