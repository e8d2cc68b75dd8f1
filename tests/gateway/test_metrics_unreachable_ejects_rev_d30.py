"""Review s30-rev-d30 F1: a pool that serves but whose ``/metrics`` is unreachable (refused, 5xx: a
NetworkPolicy on the metrics port, vLLM with a broken PROMETHEUS_MULTIPROC_DIR) is down by its scrapes
everywhere; a really dead server in it must still be ejected by its failed requests, or 1/N of the picks
go to it for ever. A peer that served a request within ``metricsStalenessSeconds`` counts as able to take
traffic. Each test fails on dcca1a1f (an ejection needed a peer up by its scrapes)."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web

from gateway.conftest import base_url, make_config, running_gateway, until
from gateway.switchable import Switchable
from kvgate.config.gateway import HealthConfig
from kvgate.datalayer.endpoint import Endpoint, EndpointMetrics
from kvgate.datalayer.health import HealthPolicy, gate
from kvgate.gateway.health import HealthTracker

POLICY = HealthPolicy(scrape_failures=3, metrics_staleness_s=5.0)
NOW = 100.0
BODY = b'{"model":"m","prompt":"hello there","max_tokens":1}'
WAIT_S = 60.0


def _scrape_dead(address: str) -> Endpoint:
    ep = Endpoint(address, metrics=EndpointMetrics())
    ep.scrape_failures = 50  # every scrape refused or 5xx
    return ep


def test_a_dead_server_is_ejected_beside_peers_that_serve_with_their_scrapes_failing():
    clock = [NOW]
    pool = [_scrape_dead(f"10.0.0.{i}:8000") for i in range(1, 4)]
    dead = pool[0]
    tracker = HealthTracker(HealthConfig(), lambda: clock[0])
    for live in pool[1:]:
        tracker.success(live)
    clock[0] += 1.0
    for _ in range(10):
        tracker.failure(dead, pool)
    assert not dead.healthy, "a dead server never ejected: its live peers' scrapes fail, not their requests"
    assert dead not in list(gate(pool, clock[0], POLICY))


def test_a_whole_pool_outage_still_ejects_nobody():
    # Down by their scrapes and nothing served within metricsStalenessSeconds: a real outage.
    clock = [NOW]
    pool = [_scrape_dead(f"10.0.0.{i}:8000") for i in range(1, 4)]
    tracker = HealthTracker(HealthConfig(), lambda: clock[0])
    for live in pool[1:]:
        tracker.success(live)
    clock[0] += POLICY.metrics_staleness_s + 1.0  # (their last success before the outage's window)
    for ep in pool:
        for _ in range(10):
            tracker.failure(ep, pool)
    assert all(ep.healthy for ep in pool)


class MetricsOff(Switchable):
    """Serves requests; its /metrics answers 503 while ``metrics_down``."""

    metrics_down = False

    async def _metrics(self, request: web.Request) -> web.Response:
        if self.metrics_down:
            return web.Response(status=503, text="metrics down")
        return await super()._metrics(request)


@pytest.mark.asyncio
async def test_a_dead_server_is_ejected_when_the_pools_metrics_are_unreachable():
    bs = [MetricsOff(n) for n in "abc"]
    for b in bs:
        await b.start()
    cfg = make_config(
        [b.address for b in bs],
        extra={"scrapeIntervalSeconds": 0.05, "health": {"ejectBaseSeconds": 300, "ejectMaxSeconds": 300}},
    )
    try:
        async with running_gateway(cfg, scrape=True) as gw:
            eps = {ep.address: ep for ep in gw.pools[0].endpoints()}
            # (scraped once first: the test backend answers the filtered /metrics/?name[]=... 404, a sign
            # of life, until the scraper has fallen back to the plain page)
            await until(lambda: all(ep.metrics.updated_at is not None for ep in eps.values()), WAIT_S)
            for b in bs:
                b.metrics_down = True
            await until(lambda: all(ep.scrape_failures >= 3 for ep in eps.values()), WAIT_S)
            dead = bs[0]
            dead.mode = "drop"  # its requests reset: dead for serving
            async with aiohttp.ClientSession() as s:
                for _ in range(30):  # round-robin: the dead one is picked (and fails) about 10 times
                    async with s.post(base_url(gw) + "/v1/completions", data=BODY) as r:
                        assert r.status == 200, await r.text()  # (retried on a live one)
                    if not eps[dead.address].healthy:
                        break
            assert not eps[dead.address].healthy, "never ejected: 1/3 of the picks go to it for ever"
    finally:
        for b in bs:
            await b.stop()
