"""s25-rev-prev25 F1: a pinned follow-up's resend to its home after a stale kept-alive connection
(``StaleConnection``: qa24 F2's ``again``, same endpoint, new connection) is no longer treated as pinned
(``Proxy._dispatch``: ``if tried: pinned = False``), so the home's 429/503 on that resend is retried on
another endpoint, where the client gets vLLM's 404 "Response ... not found" instead of the home's answer
(the rule prev25 extends to 502/503/504; a 500 there is passed through uncharged, review s18-doors M4).
Real HTTP on loopback through an in-process ``GatewayServer``. All three fail on 968691a2's src."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web

from gateway.conftest import base_url, make_config, running_gateway
from gateway.handler_server import serving
from gateway.responses_backend import ResponsesStore


class StaleThenBusy(ResponsesStore):
    drop_next = False  # the next request: read, then its connection aborted (a keep-alive close race)
    status = 0  # then this status (0: answers)
    refused = 0  # answers given with ``status``

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        if self.drop_next:
            self.drop_next = False
            assert request.transport is not None
            request.transport.abort()
            raise asyncio.CancelledError
        if self.status:
            self.refused += 1
            err = {"message": "draining", "type": "ServiceUnavailableError", "code": self.status}
            return web.json_response({"error": err}, status=self.status, headers={"Retry-After": "2"})
        return await super()._answer(request)


@pytest.mark.parametrize("status", [429, 500, 503])
async def test_a_follow_ups_home_answer_after_a_stale_resend_reaches_the_client(status: int) -> None:
    async with serving(*(StaleThenBusy(f"s{i}") for i in range(2))) as stores:
        cfg = make_config([st.address for st in stores], extra={"limits": {"maxAttempts": 3}})
        async with running_gateway(cfg) as gw, aiohttp.ClientSession() as s:
            url = base_url(gw) + "/v1/responses"
            async with s.post(url, json={"model": "m", "input": "hi"}) as r:
                assert r.status == 200
                rid = (await r.json())["id"]
            home = next(st for st in stores if rid in st.made)
            other = next(st for st in stores if st is not home)
            home.drop_next, home.status = True, status
            body = {"model": "m", "input": "more", "previous_response_id": rid}
            async with s.post(url, json=body) as r:
                doc = await r.json()
                got = r.status
            assert home.drop_next is False, "the follow-up never reached its home"
            # (the resend reached the home on a new connection, which answered ``status``: a stale
            # connection, not a connection error, which is documented as retried elsewhere)
            assert home.refused == 1, home.refused
            # The home's own answer, as without the stale connection (prev25's rule); at HEAD the resend's
            # 429/503 is retried on the other store, which answers 404 "Response ... not found".
            assert got == status, (got, doc, other.followed)
