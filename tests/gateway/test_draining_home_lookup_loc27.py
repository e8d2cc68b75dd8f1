"""Review s26-rev-prev26 F7 at ``kvgate serve`` (loc27): what a lookup (``GET /v1/responses/{id}``) answers
while the endpoint that keeps the response drains, then is gone.

vLLM keeps a stored response in its process's memory: a home that drains answers 503 while it still
runs, then is gone (refuses, or resets what it had accepted), and once back it has none (its own 404, the
truth from then on). The lookup now answers as a follow-up does at each step: the home's 503 with its own
``Retry-After`` (it was dropped: the lookup relayed the status and the body only), then, gone, 503
``upstream_unavailable`` with ``Retry-After: 1`` naming the home (it was a 502 without ``Retry-After``,
while a follow-up naming the same id got the 503); back without it, vLLM's 404, as before (not tested
here: its health probe would have to bring it back in). Real HTTP on loopback; ports bound 0, none freed while
the test runs (a gone home resets its connections rather than closing its port)."""

from __future__ import annotations

import aiohttp
import orjson
from aiohttp import web

from gateway.conftest import base_url, make_config, running_gateway
from gateway.handler_server import serving
from gateway.responses_backend import ResponsesStore

DRAINING = {"error": {"message": "the server is shutting down"}}


class DrainingStore(ResponsesStore):
    """``state``: "up"; "draining" (503 with ``Retry-After: 5`` to everything, as a server shutting down);
    "gone" (every connection reset before an answer)."""

    state = "up"

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        got = self._or(request)
        return got if got is not None else await super()._answer(request)

    async def _retrieve(self, request: web.Request) -> web.StreamResponse:
        got = self._or(request)
        return got if got is not None else await super()._retrieve(request)

    def _or(self, request: web.Request) -> web.StreamResponse | None:
        if self.state == "draining":
            return web.json_response(DRAINING, status=503, headers={"Retry-After": "5"})
        if self.state == "gone":
            assert request.transport is not None
            request.transport.abort()
            return web.Response()  # (never sent: the connection is gone)
        return None


async def drain_then_go(s: aiohttp.ClientSession, url: str, stores: list[DrainingStore]) -> None:
    """A response made through the door at ``url`` (``.../v1/responses``); its home drains, then is gone:
    a lookup and a follow-up naming it get the same answer at each step (the hub's test runs it too)."""
    async with s.post(url, data=orjson.dumps({"model": "m", "input": "q"})) as r:
        assert r.status == 200, await r.read()
        rid = orjson.loads(await r.read())["id"]
    home = next(st for st in stores if rid in st.made)
    follow = orjson.dumps({"model": "m", "input": "more", "previous_response_id": rid})

    home.state = "draining"
    async with s.get(f"{url}/{rid}") as r:
        # (before loc27 at kvgate serve: 503 without Retry-After)
        assert (r.status, r.headers.get("Retry-After")) == (503, "5"), await r.read()
    async with s.post(url, data=follow) as r:  # (as a follow-up's, unchanged)
        assert (r.status, r.headers.get("Retry-After")) == (503, "5"), await r.read()

    home.state = "gone"
    async with s.get(f"{url}/{rid}") as r:
        # (before loc27, at both doors: 502 "lookup failed", no Retry-After)
        assert (r.status, r.headers.get("Retry-After")) == (503, "1"), await r.read()
        doc = orjson.loads(await r.read())
        assert doc["error"]["code"] == "upstream_unavailable"
        assert f"which holds response '{rid}', could not be reached" in doc["error"]["message"]
    async with s.post(url, data=follow) as r:  # (as a follow-up's, unchanged)
        assert (r.status, r.headers.get("Retry-After")) == (503, "1"), await r.read()


async def test_a_draining_homes_lookup_keeps_its_back_off_and_a_gone_home_is_a_503_to_retry() -> None:
    async with (
        serving(DrainingStore("a"), DrainingStore("b")) as stores,
        aiohttp.ClientSession() as s,
        running_gateway(make_config([st.address for st in stores])) as gw,
    ):
        await drain_then_go(s, base_url(gw) + "/v1/responses", stores)
