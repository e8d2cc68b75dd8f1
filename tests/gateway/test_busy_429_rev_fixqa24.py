"""Review s24-rev-fixqa24 R1, R2: a model server's own 429 (busy: it ran nothing) after qa24 F1's retry.
Real HTTP on loopback: ``gateway.backend.Backend`` servers and Responses stores behind a real in-process
``GatewayServer`` (ephemeral ports); everything stopped at the end."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web

from gateway.backend import Backend
from gateway.conftest import base_url, make_config, running_gateway
from gateway.handler_server import serving
from gateway.responses_backend import ResponsesStore

pytestmark = pytest.mark.asyncio


async def test_servers_at_capacity_are_not_ejected() -> None:
    """R1 (F1): a pool whose every server is at capacity (each answers 429: it ran nothing) must not lose
    servers to ejection: a 429 says "busy", not "broken" (Envoy's outlier detection counts 5xx and local
    origin errors only). Since fbf8a361 each 429 is charged as a 503: 4 servers, 6 requests
    (maxAttempts 3) eject 2 of them (maxEjectionPercent 50) for ejectBaseSeconds, and the pool's capacity
    is halved exactly when it is saturated."""
    bs = [await Backend(f"b{i}").start() for i in range(4)]
    try:
        for b in bs:
            b.mode, b.error_headers = "error429", {"Retry-After": "1"}
        cfg = make_config([b.address for b in bs], extra={"limits": {"maxAttempts": 3}})
        async with running_gateway(cfg) as gw, aiohttp.ClientSession() as s:
            statuses = []
            for i in range(6):
                body = {"model": "m", "prompt": f"q{i}", "max_tokens": 2}
                async with s.post(base_url(gw) + "/v1/completions", json=body) as r:
                    await r.read()
                    statuses.append(r.status)
            healthy = [ep.address for p in gw.proxy.pools for ep in p.endpoints() if ep.healthy]
        assert statuses == [429] * 6, statuses
        assert len(healthy) == 4, healthy  # (2 ejected at b10fb7c4)
    finally:
        for b in bs:
            await b.stop()


async def test_a_follow_ups_429_at_its_busy_home_stays_a_429() -> None:
    """R2 (F1): a Responses follow-up (``previous_response_id``) is pinned to its home, the only server
    that holds the response (vLLM keeps it in its own memory). Its home answering 429 (busy: it ran
    nothing, a retry later there will work) is now retried on another endpoint, which can only answer
    vLLM's 404 ``Response with id ... not found``: the client gets a permanent 404 in place of a retryable
    429 (the home also charged a failure). The pinned 500 was kept at home for this reason (s18-doors M4)."""

    class BusyStore(ResponsesStore):
        busy = False

        async def _answer(self, request: web.Request) -> web.StreamResponse:
            if self.busy:
                return web.json_response(
                    {"error": {"message": "busy", "type": "RateLimitError", "code": 429}},
                    status=429,
                    headers={"Retry-After": "2"},
                )
            return await super()._answer(request)

    async with serving(*(BusyStore(f"s{i}") for i in range(2))) as stores:
        cfg = make_config([st.address for st in stores], extra={"limits": {"maxAttempts": 3}})
        async with running_gateway(cfg) as gw, aiohttp.ClientSession() as s:
            url = base_url(gw) + "/v1/responses"
            async with s.post(url, json={"model": "m", "input": "hi"}) as r:
                rid = (await r.json())["id"]
            home = next(st for st in stores if rid in st.made)
            home.busy = True
            async with s.post(url, json={"model": "m", "input": "more", "previous_response_id": rid}) as r:
                await r.read()
                status, after = r.status, r.headers.get("Retry-After")
        assert (status, after) == (429, "2"), (status, after)  # (b10fb7c4: 404 from the other server)
