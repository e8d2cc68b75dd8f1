"""s17-qafix-d F5: an endpoint that answered 500, whose request's retry elsewhere then timed out (504) or
whose client left meanwhile, is charged that 500, as when the retry ends in a 503: only a second 500
(the request's own fault) clears it. Before, those two ends dropped it uncharged."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from gateway.backend import Backend
from gateway.conftest import base_url, make_config, running_gateway, until
from kvgate.gateway.server import GatewayServer

BODY = orjson.dumps({"model": "m", "prompt": "x", "max_tokens": 1})


def _failures(gw: GatewayServer, address: str) -> int:
    st = gw.health._state.get(address)
    return st.failures if st is not None else 0


def _first_500s_then_hang(bs: list[Backend]) -> list[Backend]:
    """Whichever backend the pick tries first answers 500, every later attempt hangs; the list it
    returns gets the first one (the suspect), then the other."""
    order: list[Backend] = []

    def misbehave(b: Backend) -> Any:
        async def answer(request: web.Request) -> web.StreamResponse | None:
            order.append(b)
            if len(order) == 1:
                return web.Response(status=500, text="broken")
            await asyncio.sleep(3600)
            return None

        return answer

    for b in bs:
        b._misbehave = misbehave(b)  # type: ignore[method-assign]
    return order


async def test_a_500_whose_retry_times_out_is_charged(backends):
    bs = await backends(2)
    order = _first_500s_then_hang(bs)
    extra = {"limits": {"idleTimeoutSeconds": 0.3, "requestTimeoutSeconds": 0.6}}
    async with running_gateway(make_config([b.address for b in bs], extra=extra)) as gw:
        async with aiohttp.ClientSession() as s, s.post(base_url(gw) + "/v1/completions", data=BODY) as r:
            assert r.status == 504, await r.read()
        assert len(order) == 2 and order[0] is not order[1]  # the 500 first, then the retry
        broken, hung = order
        assert _failures(gw, broken.address) == 1
        assert _failures(gw, hung.address) == 1  # (F1: the timeout is charged too)


async def test_a_500_whose_client_left_during_the_retry_is_charged(backends):
    bs = await backends(2)
    order = _first_500s_then_hang(bs)
    extra = {"limits": {"requestTimeoutSeconds": 30}}
    async with running_gateway(make_config([b.address for b in bs], extra=extra)) as gw:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.5)) as s:
            try:
                async with s.post(base_url(gw) + "/v1/completions", data=BODY) as r:
                    await r.read()
            except TimeoutError:
                pass
        assert len(order) == 2 and order[0] is not order[1]
        broken, hung = order
        await until(lambda: _failures(gw, broken.address) == 1, what="the 500 charged")
        await asyncio.sleep(0.2)
        assert _failures(gw, hung.address) == 0  # the client leaving is not the endpoint's fault
