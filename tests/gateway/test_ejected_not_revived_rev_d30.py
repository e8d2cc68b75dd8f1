"""Review s30-rev-d30 F2: an endpoint ejected for failing its requests (its scrapes answering all along)
is not "revived" by those scrapes: it does not take the traffic, nor the retries, from a serving peer
whose scrapes fail. REVIVED is only for one seen down by its scrapes since its ejection and answering
them again (a server back from an outage, review s30-qa30 Q1). Each test fails on 2df22e68 (every
ejected endpoint whose scrapes answered was REVIVED, which outranks SCRAPE_DOWN)."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web

from gateway.conftest import base_url, make_config, running_gateway, until
from gateway.switchable import Switchable
from kvgate.config.gateway import HealthConfig
from kvgate.datalayer.endpoint import Endpoint, EndpointMetrics
from kvgate.datalayer.health import OUT, REVIVED, HealthPolicy, gate, serving, standing
from kvgate.gateway.health import HealthTracker

POLICY = HealthPolicy(scrape_failures=3, metrics_staleness_s=5.0)
NOW = 100.0
BODY = b'{"model":"m","prompt":"hello there","max_tokens":1}'
WAIT_S = 60.0


def _ep(
    address: str,
    updated_at: float | None = None,
    failures: int = 0,
    healthy: bool = True,
    answered_at: float | None = None,
) -> Endpoint:
    ep = Endpoint(address, metrics=EndpointMetrics(updated_at=updated_at), healthy=healthy)
    ep.scrape_failures = failures
    ep.answered_at = answered_at
    return ep


def test_a_server_ejected_for_its_requests_does_not_take_the_traffic_from_a_serving_one():
    # ``a`` was ejected for failing its requests (its /metrics answers fine: nothing "came back"); ``b``
    # serves, but its last 3 scrapes timed out (an overloaded vLLM's /metrics over the 2 s cap).
    a = _ep("10.0.0.1:8000", updated_at=99.9, answered_at=99.9, healthy=False)
    b = _ep("10.0.0.2:8000", updated_at=92.0, failures=3, answered_at=92.0)
    assert standing(a, NOW, POLICY) == OUT
    assert list(gate([a, b], NOW, POLICY)) == [b]
    assert serving([a, b], NOW, POLICY) == [b]  # (a retry after ``b`` finds nowhere else)


def test_revived_only_after_the_probe_loop_saw_it_down_by_its_scrapes():
    clock = [NOW]
    cfg = HealthConfig(eject_after_failures=1, eject_base_s=300.0, eject_max_s=300.0)
    tracker = HealthTracker(cfg, lambda: clock[0])
    a = _ep("a:1", updated_at=NOW, answered_at=NOW)
    b = _ep("b:1", updated_at=NOW, answered_at=NOW)
    assert tracker.failure(a, [a, b])
    assert tracker.due([a, b]) == []
    assert standing(a, NOW, POLICY) == OUT  # ejected, its scrapes answering: not back from anything
    a.scrape_failures = 3  # an outage
    clock[0] += 1.0
    assert tracker.due([a, b]) == []
    assert standing(a, clock[0], POLICY) == OUT
    a.scrape_failures, a.metrics, a.answered_at = 0, EndpointMetrics(updated_at=clock[0]), clock[0]
    assert tracker.due([a, b]) == [a]  # back: probed now
    tracker.probe_result(a, False)
    assert standing(a, clock[0], POLICY) == REVIVED  # (until its probe passes or it is ejected again)
    tracker.probe_result(a, True)
    assert a.healthy and not a.down_since_ejected
    assert tracker.failure(a, [a, b])  # ejected afresh: the mark is gone with the old ejection
    assert standing(a, clock[0], POLICY) == OUT


class MetricsOff(Switchable):
    """Serves requests; its /metrics answers 503 while ``metrics_down``."""

    metrics_down = False

    async def _metrics(self, request: web.Request) -> web.Response:
        if self.metrics_down:
            return web.Response(status=503, text="metrics down")
        return await super()._metrics(request)


@pytest.mark.asyncio
async def test_an_ejected_server_does_not_take_the_traffic_from_one_whose_scrapes_fail():
    a, b = MetricsOff("a"), MetricsOff("b")
    await a.start()
    await b.start()
    cfg = make_config(
        [a.address, b.address],
        extra={
            "scrapeIntervalSeconds": 0.05,
            "health": {"ejectAfterFailures": 1, "ejectBaseSeconds": 300, "ejectMaxSeconds": 300},
        },
    )
    try:
        async with running_gateway(cfg, scrape=True) as gw:
            eps = {ep.address: ep for ep in gw.pools[0].endpoints()}
            # (scraped once first: the test backend answers the filtered /metrics/?name[]=... 404 until
            # the scraper falls back to the plain page)
            await until(lambda: all(ep.metrics.updated_at is not None for ep in eps.values()), WAIT_S)
            url = base_url(gw) + "/v1/completions"
            async with aiohttp.ClientSession() as s:
                a.mode = "drop"  # a's requests fail (its /metrics still answers): ejected
                for _ in range(20):
                    async with s.post(url, data=BODY) as r:
                        assert r.status == 200, await r.text()
                    if not eps[a.address].healthy:
                        break
                assert not eps[a.address].healthy
                b.metrics_down = True  # b still serves; its scrapes fail
                await until(lambda: eps[b.address].scrape_failures >= 3, WAIT_S)
                statuses = []
                for _ in range(5):
                    async with s.post(url, data=BODY) as r:
                        statuses.append((r.status, (await r.text())[:160]))
            # (2df22e68: [(503, 'all attempts failed; last: <a>: connection closed'), ...])
            assert all(st == 200 for st, _ in statuses), statuses
    finally:
        await a.stop()
        await b.stop()
