"""Review s26-rev-prev26: gateway.locate findings (real HTTP on loopback, ports 0; moved here by
fixprev26, which adapted F2's and F3's waits to rounds keyed by candidates and ended with their last
waiter, and added the concurrent half of F1)."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from aiohttp import web

from gateway.conftest import base_url, make_config, running_gateway
from gateway.handler_server import serve_app
from kvgate.gateway.locate import Locator
from kvgate.gateway.upstream import UpstreamPool

pytestmark = pytest.mark.asyncio


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    """``app`` on a port of its own (port 0: a fixed port may be held by another process, flake27); its
    runner and address."""
    runner, port = await serve_app(app)
    return runner, f"127.0.0.1:{port}"


def _keyed_store(kept: set[str]) -> web.Application:
    """vLLM with ``--api-key good``: 401 for any other key, then 200 for a kept id, else 404."""

    async def get(request: web.Request) -> web.Response:
        if request.headers.get("authorization") != "Bearer good":
            return web.json_response({"error": "Unauthorized"}, status=401)
        rid = request.match_info["rid"]
        if rid in kept:
            return web.json_response({"id": rid, "object": "response"})
        return web.json_response({"error": {"message": f"Response with id '{rid}' not found."}}, status=404)

    app = web.Application()
    app.router.add_get("/v1/responses/{rid}", get)
    return app


async def test_a_wrong_key_does_not_hide_an_id_from_the_right_key() -> None:
    # F1: a client with a bad key (401 at every replica) makes the round "found nowhere": the miss is
    # kept MISS_TTL_S for the id, for every client: the right key's follow-up is then placed by score
    # (vLLM's 404 at a replica that never stored it) without being asked.
    runner, addr = await _serve(_keyed_store({"resp_kept"}))
    pool = UpstreamPool(connect_timeout=1.0, idle_timeout=5.0)
    loc = Locator(pool, time.monotonic)
    try:
        cands = [(addr, None)]
        bad = await loc.find("resp_kept", cands, "authorization: Bearer bad\r\n")
        assert bad.home is None
        good = await loc.find("resp_kept", cands, "authorization: Bearer good\r\n")
        assert good.home == addr, good
    finally:
        await runner.cleanup()


async def test_a_lookup_sharing_a_round_whose_home_went_unready_is_not_a_500() -> None:
    # F2: lookups._where picks ``next(pe for pe in ready if address == found.home)`` over its own
    # ``ready``; a round shared with an earlier caller may find a home that is not in it (unready since):
    # StopIteration inside a coroutine -> RuntimeError -> 500.
    release = asyncio.Event()
    asked = asyncio.Event()

    async def slow_home(request: web.Request) -> web.Response:
        asked.set()
        await release.wait()
        return web.json_response({"id": request.match_info["rid"], "object": "response"})

    async def nowhere(request: web.Request) -> web.Response:
        return web.json_response({"error": {"message": "not found"}}, status=404)

    a, b = web.Application(), web.Application()
    a.router.add_get("/v1/responses/{rid}", slow_home)
    b.router.add_get("/v1/responses/{rid}", nowhere)
    (ra, home), (rb, other) = await _serve(a), await _serve(b)
    runners = [ra, rb]
    try:
        cfg = make_config([home, other], models=("m",))
        async with aiohttp.ClientSession() as session, running_gateway(cfg) as gw:
            assert gw.proxy is not None
            url = base_url(gw) + "/v1/responses/resp_x"

            async def get() -> tuple[int, str]:
                async with session.get(url) as r:
                    return r.status, await r.text()

            first = asyncio.ensure_future(get())
            await asyncio.wait_for(asked.wait(), 30)
            ep = next(e for e in gw.pools[0].endpoints() if e.address == home)
            ep.healthy = False  # (its readiness lost while the round runs)
            second = asyncio.ensure_future(get())
            deadline = time.monotonic() + 5.0
            # (fixprev26: the second's candidates differ (the home is not ready), so it runs its own round
            # and may end before the first: wait for it to join or end)
            while gw.proxy.inflight < 2 and not second.done():
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            release.set()
            await first
            s2, text2 = await second
            # (200/503: it shared the round; 404: asked of the ready one alone, which does not keep it)
            assert s2 in (200, 503, 404), (s2, text2)
    finally:
        release.set()
        for r in runners:
            await r.cleanup()


async def test_asks_of_clients_gone_do_not_outnumber_the_concurrency_limit() -> None:
    # F3: a round goes on after its only client left (shielded, up to LOCATE_S), outside
    # maxConcurrentRequests: a client sending follow-ups naming random ids and hanging up at once keeps
    # (rate x 2 s) rounds alive, each with one task per endpoint, and their GETs at the backends, while
    # the gateway counts nothing in flight.
    release = asyncio.Event()
    asks = 0

    async def hang(request: web.Request) -> web.Response:
        nonlocal asks
        asks += 1
        await release.wait()
        return web.json_response({"error": {"message": "not found"}}, status=404)

    apps = [web.Application(), web.Application()]
    for app in apps:
        app.router.add_get("/v1/responses/{rid}", hang)
    (ra, a0), (rb, a1) = await _serve(apps[0]), await _serve(apps[1])
    runners = [ra, rb]
    limit = 2
    try:
        cfg = make_config(
            [a0, a1], models=("m",),
            extra={"limits": {"maxConcurrentRequests": limit}},
        )  # fmt: skip
        async with running_gateway(cfg) as gw:
            assert gw.proxy is not None
            port = gw.port
            for i in range(10):
                body = f'{{"model":"m","input":"x","previous_response_id":"resp_r{i}"}}'.encode()
                r, w = await asyncio.open_connection("127.0.0.1", port)
                w.write(
                    b"POST /v1/responses HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                    + f"content-length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                await w.drain()
                deadline = time.monotonic() + 5.0
                while gw.proxy.locator.rounds < i + 1:
                    assert time.monotonic() < deadline, "the ask never started"
                    await asyncio.sleep(0.01)
                w.close()  # the client leaves mid-ask
                while gw.proxy.inflight:
                    assert time.monotonic() < deadline, "the request never ended"
                    await asyncio.sleep(0.01)
            # nothing in flight, yet 10 rounds and 20 GETs out
            assert len(gw.proxy.locator._rounds) <= limit, (len(gw.proxy.locator._rounds), asks)
    finally:
        release.set()
        for r in runners:
            await r.cleanup()


async def test_one_endpoint_failing_its_gets_does_not_turn_every_lost_id_into_503_forever() -> None:
    # F4: an id nobody keeps (a typo, an id from before every replica's restart) while one ready endpoint
    # answers its GET with a 5xx (or is unreachable; at the hub: one cluster down) is a 503 with
    # Retry-After: 1 on every try, for as long as that lasts (no miss is kept when some did not answer):
    # before prev26, vLLM's 404. A client honouring Retry-After retries forever.
    posts = 0

    async def not_found(request: web.Request) -> web.Response:
        nonlocal posts
        if request.method == "POST":
            posts += 1
        msg = "Response with id 'resp_typo' not found."
        return web.json_response(
            {"error": {"message": msg, "type": "NotFoundError", "code": 404}}, status=404
        )

    async def broken_get(request: web.Request) -> web.Response:
        return web.json_response({"error": {"message": "boom"}}, status=500)

    a, b = web.Application(), web.Application()
    a.router.add_route("*", "/v1/responses{tail:.*}", not_found)
    b.router.add_get("/v1/responses/{rid}", broken_get)
    b.router.add_post("/v1/responses", not_found)
    (ra, a0), (rb, a1) = await _serve(a), await _serve(b)
    runners = [ra, rb]
    try:
        cfg = make_config([a0, a1], models=("m",))
        async with aiohttp.ClientSession() as session, running_gateway(cfg) as gw:
            url = base_url(gw) + "/v1/responses"
            statuses = []
            for _ in range(5):
                body = {"model": "m", "input": "x", "previous_response_id": "resp_typo"}
                async with session.post(url, json=body) as r:
                    statuses.append(r.status)
            assert 404 in statuses, statuses
    finally:
        for r in runners:
            await r.cleanup()


async def test_concurrent_callers_with_other_keys_do_not_share_a_round_fixprev26() -> None:
    # F1 (concurrent half): a round was keyed by id alone and asked with its first caller's key: the right
    # key's follow-up, arriving while a wrong key's round ran, got "found nowhere" from it.
    gate = asyncio.Event()
    store = _keyed_store({"resp_kept"})

    @web.middleware
    async def held(request: web.Request, handler):  # type: ignore[no-untyped-def]
        await gate.wait()
        return await handler(request)

    store.middlewares.append(held)
    runner, addr = await _serve(store)
    pool = UpstreamPool(connect_timeout=1.0, idle_timeout=5.0)
    loc = Locator(pool, time.monotonic)
    try:
        cands = [(addr, None)]
        bad = asyncio.ensure_future(loc.find("resp_kept", cands, "authorization: Bearer bad\r\n"))
        deadline = time.monotonic() + 5.0
        while loc.rounds < 1:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        good = asyncio.ensure_future(loc.find("resp_kept", cands, "authorization: Bearer good\r\n"))
        await asyncio.sleep(0)
        gate.set()
        assert (await bad).home is None
        assert (await good).home == addr
    finally:
        gate.set()
        await runner.cleanup()
