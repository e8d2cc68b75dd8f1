"""A follow-up's 502/503/504 at its home (a draining or overloaded vLLM) reaches the client as the home
answered it, with its Retry-After: retried on another endpoint it could only become vLLM's 404 "Response
... not found", a retryable answer made permanent and misleading (review s24-rev-fix24b F4, prev25; the
review's test, adapted). A request that is no follow-up is still retried elsewhere. Real HTTP on
loopback, a real in-process ``GatewayServer``, Responses stores (all stopped)."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web

from gateway.conftest import base_url, make_config, running_gateway
from gateway.handler_server import serving
from gateway.responses_backend import ResponsesStore


class DrainingStore(ResponsesStore):
    status = 0  # (0: answers; else this status, as a draining or overloaded server)

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        if self.status:
            err = {"message": "draining", "type": "ServiceUnavailableError", "code": self.status}
            return web.json_response({"error": err}, status=self.status, headers={"Retry-After": "2"})
        return await super()._answer(request)


@pytest.mark.parametrize("status", [502, 503, 504])
async def test_a_follow_ups_5xx_at_its_home_reaches_the_client(status: int) -> None:
    async with serving(*(DrainingStore(f"s{i}") for i in range(2))) as stores:
        cfg = make_config([st.address for st in stores], extra={"limits": {"maxAttempts": 3}})
        async with running_gateway(cfg) as gw, aiohttp.ClientSession() as s:
            url = base_url(gw) + "/v1/responses"
            async with s.post(url, json={"model": "m", "input": "hi"}) as r:
                rid = (await r.json())["id"]
            home = next(st for st in stores if rid in st.made)
            home.status = status
            body = {"model": "m", "input": "more", "previous_response_id": rid}
            async with s.post(url, json=body) as r:
                doc = await r.json()
                assert r.status == status, (r.status, doc)  # (main: 404 from the other server)
                assert r.headers.get("Retry-After") == "2" or status != 503
            assert doc["error"]["message"] == "draining"
            # A first turn is no follow-up: retried on the other server, answered there.
            async with s.post(url, json={"model": "m", "input": "again"}) as r:
                assert r.status == 200, await r.text()
