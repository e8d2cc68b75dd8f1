"""s26-rev-fixes26 F3: fixprev26 (98c34dcb) lets a round with any refusal (401/403/407) go on as "not
found" even when other candidates could not answer (``found.unanswered and not found.refused``: lookups.py
and proxy._place). The request is then sent to the least busy endpoint, not to the one that refused, so
"the endpoint's own 401/403 says it" does not hold: here a candidate that said 404 answers it, a false 404
while a candidate that could not be asked (429: busy) may keep the id. Before (main 1b0eae32), and with no
refusal in the round, a 503 with Retry-After. Real HTTP on loopback."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web

from gateway.backend import free_port
from gateway.conftest import base_url, make_config, running_gateway

pytestmark = pytest.mark.asyncio


async def _serve(app: web.Application, port: int) -> web.AppRunner:
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


def _app(status: int) -> web.Application:
    async def get(request: web.Request) -> web.Response:
        rid = request.match_info["rid"]
        return web.json_response(
            {"error": {"message": f"Response with id '{rid}' not found."}}, status=status
        )

    app = web.Application()
    app.router.add_get("/v1/responses/{rid}", get)
    return app


async def test_a_refusal_elsewhere_does_not_turn_an_unanswered_home_into_a_404() -> None:
    # a: not here (404; first in the pool: the least busy on ties); b: refuses the key (401); c: busy
    # (429), may be the home.
    a, b, c = free_port(), free_port(), free_port()
    runners = [await _serve(_app(404), a), await _serve(_app(401), b), await _serve(_app(429), c)]
    try:
        cfg = make_config([f"127.0.0.1:{p}" for p in (a, b, c)], models=("m",))
        async with aiohttp.ClientSession() as session, running_gateway(cfg) as gw:
            async with session.get(base_url(gw) + "/v1/responses/resp_lost") as r:
                status = r.status
            # (c could not be asked: not a 404 from a, which was asked and does not keep it)
            assert status == 503, f"{status}: answered by an endpoint that said it does not keep the id"
    finally:
        for r in runners:
            await r.cleanup()
