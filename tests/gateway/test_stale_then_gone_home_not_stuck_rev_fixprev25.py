"""s25-rev-fixprev25, a check of fixprev25's F1 (``pinned = pinned and again is not None``), no finding: a
pinned follow-up whose home closes the kept-alive connection and then is gone (its resend refused) is not
stuck on the pin: the resend (``again``) is the only attempt kept pinned, and its refused connect ends
the request. Since prev26 the client gets a 503 with ``Retry-After`` at once (its home unreachable; the
other server, which never stored it, is not sent it: before, it answered the store's 404), not a 503
after every attempt went to the dead home. Real HTTP on loopback through an in-process
``GatewayServer``."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web

from gateway.conftest import base_url, make_config, running_gateway
from gateway.handler_server import serving
from gateway.responses_backend import ResponsesStore


class StaleThenGone(ResponsesStore):
    drop_next = False
    asked = 0

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        self.asked += 1
        if self.drop_next:
            self.drop_next = False
            assert self._runner is not None
            for site in self._runner.sites:  # no longer listening: the resend's connect is refused
                site._server.close()  # type: ignore[union-attr]
            assert request.transport is not None
            request.transport.abort()
            raise asyncio.CancelledError
        return await super()._answer(request)


async def test_a_follow_ups_home_gone_after_a_stale_resend_is_not_retried() -> None:
    async with serving(*(StaleThenGone(f"s{i}") for i in range(2))) as stores:
        cfg = make_config([st.address for st in stores], extra={"limits": {"maxAttempts": 3}})
        async with running_gateway(cfg) as gw, aiohttp.ClientSession() as s:
            url = base_url(gw) + "/v1/responses"
            async with s.post(url, json={"model": "m", "input": "hi"}) as r:
                assert r.status == 200
                rid = (await r.json())["id"]
            home = next(st for st in stores if rid in st.made)
            other = next(st for st in stores if st is not home)
            home.drop_next = True
            before = other.asked
            body = {"model": "m", "input": "more", "previous_response_id": rid}
            async with s.post(url, json=body) as r:
                got = r.status
                await r.read()
            assert home.asked == 2  # (the first turn, the stale follow-up; the resend was refused)
            assert other.asked == before, "sent where the response is not kept"
            assert got == 503, got
