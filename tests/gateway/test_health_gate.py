"""Issue #12: a dead endpoint whose metrics went stale gets no traffic, with every named policy,
through ``kvgate serve`` (the EPP door: tests/extproc/test_health_gate.py). Before the fix the default
policy sent it every request: its stale metrics said "idle"."""

from __future__ import annotations

import asyncio
import collections

import aiohttp
import pytest

from gateway.backend import Backend
from gateway.conftest import base_url, make_config, running_gateway
from gateway.handler_server import serve_app
from kvgate.config.policies import POLICIES
from kvgate.datalayer.endpoint import Endpoint, EndpointMetrics
from kvgate.datalayer.health import HealthPolicy, gate, is_healthy

BODY = b'{"model":"m","prompt":"hello there","max_tokens":1}'


async def wait_until(cond, within: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while not cond():
        assert loop.time() < end, "condition not reached in time"
        await asyncio.sleep(0.05)


def count_picks(director) -> collections.Counter[str]:
    picks: collections.Counter[str] = collections.Counter()
    inner = director.pick

    def pick(req, explain=False):
        result = inner(req, explain)
        picks[result.endpoints[0].address] += 1
        return result

    director.pick = pick
    return picks


@pytest.mark.parametrize("policy", list(POLICIES))
async def test_dead_endpoint_with_stale_metrics_gets_no_picks_from_kvgate_serve(backends, policy):
    (live,) = await backends(1)
    dead = await Backend("dead").start()
    cfg = make_config([live.address, dead.address], policy=policy, extra={"scrapeIntervalSeconds": 0.05})
    async with running_gateway(cfg, scrape=True) as gw:
        eps = {ep.address: ep for ep in gw.pools[0].endpoints()}
        await wait_until(lambda: all(ep.metrics.updated_at is not None for ep in eps.values()))
        await dead.stop()  # killed: its last metrics (idle) stay behind, ever staler
        await wait_until(lambda: eps[dead.address].scrape_failures >= 3)
        picks = count_picks(gw.pools[0].director)
        async with aiohttp.ClientSession() as s:
            for _ in range(30):
                async with s.post(base_url(gw) + "/v1/completions", data=BODY) as r:
                    assert r.status == 200
        assert picks[dead.address] == 0, (policy, dict(picks))
        assert picks[live.address] == 30


def _ep(address: str, updated_at: float | None, failures: int = 0, healthy: bool = True) -> Endpoint:
    ep = Endpoint(address, metrics=EndpointMetrics(updated_at=updated_at), healthy=healthy)
    ep.scrape_failures = failures
    return ep


def test_health_model_staleness_failures_ejection_and_fail_open():
    policy = HealthPolicy(scrape_failures=3, metrics_staleness_s=5.0)
    now = 100.0
    fresh, stale, unknown = _ep("a:1", 99.0), _ep("b:1", 40.0), _ep("c:1", None)
    failing, ejected = _ep("d:1", 99.0, failures=3), _ep("e:1", 99.0, healthy=False)
    assert is_healthy(fresh, now, policy)
    for ep in (stale, unknown, failing, ejected):
        assert not is_healthy(ep, now, policy), ep
    assert list(gate([fresh, stale, unknown, failing, ejected], now, policy)) == [fresh]
    # Nothing healthy: fail open to every endpoint not ejected (never to an ejected one).
    assert list(gate([stale, unknown, ejected], now, policy)) == [stale, unknown]


async def test_scrapes_are_capped_in_size_and_time():
    from aiohttp import web

    from kvgate.datalayer.scraper import MetricsScraper
    from kvgate.datalayer.store import EndpointStore

    async def huge(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()  # chunked: no Content-Length to refuse it by
        await resp.prepare(request)
        line = b"# HELP x " + b"y" * 1000 + b"\n"
        for _ in range(10_000):  # 10 MB
            await resp.write(line)
        return resp

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.Response(text="")

    app = web.Application()
    app.router.add_get("/huge/metrics", huge)
    app.router.add_get("/slow/metrics", slow)
    runner, port = await serve_app(app, shutdown_timeout=0.1)
    try:
        store = EndpointStore.from_addresses([f"127.0.0.1:{port}"])
        (ep,) = store.all()
        big = MetricsScraper(store, path="/huge/metrics", max_bytes=1 << 20)
        assert not await big.scrape(ep)
        assert ep.scrape_failures == 1 and "over" in (big.stats[ep.address].last_error or "")
        await big.stop()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        slow_scraper = MetricsScraper(store, path="/slow/metrics", timeout=0.5)
        assert not await slow_scraper.scrape(ep)
        assert loop.time() - t0 < 5 and ep.scrape_failures == 2
        await slow_scraper.stop()
    finally:
        await runner.cleanup()
