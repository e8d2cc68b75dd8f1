"""s17-qa M1: a pool whose every endpoint died is not ready. ``/readyz`` and ``inference_pool_ready_pods``
(both doors: the Director sets the gauge) count by the health model routing uses
(``datalayer.health``: scrape failures, stale metrics), not only the ejection flag. Before: with no
request failing enough to eject them, ``/readyz`` stayed ``200 ready`` and the gauge at the pool's size
while every request got 503 and ``/v1/pool/aggregate`` said ``ready_endpoints: 0``."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import aiohttp

from gateway.conftest import make_config, running_gateway
from kvgate.config.director import build_director
from kvgate.datalayer.endpoint import Endpoint, EndpointMetrics
from kvgate.datalayer.health import HealthPolicy
from kvgate.datalayer.store import EndpointStore


async def _state(s: aiohttp.ClientSession, admin: str) -> tuple[int, float | None]:
    async with s.get(admin + "/readyz") as r:
        status = r.status
    async with s.get(admin + "/metrics") as r:
        m = re.search(r'^inference_pool_ready_pods\{name="p"\} (\S+)$', await r.text(), re.M)
    return status, float(m.group(1)) if m else None


async def test_a_dead_fleet_is_not_ready(backends):
    a, b = await backends(2)
    cfg = make_config(
        [a.address, b.address],
        extra={
            "listen": {"adminPort": 0},
            "health": {"metricsStalenessSeconds": 1, "scrapeFailures": 3},
            "scrapeIntervalSeconds": 0.1,
        },
    )
    async with running_gateway(cfg, scrape=True) as gw, aiohttp.ClientSession() as s:
        admin = f"http://127.0.0.1:{gw.admin_port}"
        seen: list[Any] = []

        async def state_is(want: tuple[int, float]) -> None:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 15  # (polled: the scraper runs on the loop's real time)
            while True:
                seen.append(await _state(s, admin))
                if seen[-1] == want:
                    return
                assert loop.time() < deadline, f"/readyz and ready pods {seen[-1]}, want {want}"
                await asyncio.sleep(0.05)

        await state_is((200, 2.0))
        await a.stop()
        await b.stop()  # no request sent: nothing is ejected, only the scrapes fail and go stale
        await state_is((503, 0.0))
        assert all(ep.healthy for ep in gw.pools[0].endpoints())  # (the ejection flag never moved)


def test_pool_gauges_count_by_the_health_model() -> None:
    from prometheus_client import REGISTRY

    def ready() -> float | None:
        return REGISTRY.get_sample_value("inference_pool_ready_pods", {"name": "qa17m1"})

    now = [0.0]
    eps = [
        Endpoint(address=f"10.9.0.{i}:8000", pool="qa17m1", metrics=EndpointMetrics(updated_at=0.0))
        for i in range(3)
    ]
    d = build_director("round-robin", EndpointStore(eps), clock=lambda: now[0])
    d.health = HealthPolicy(scrape_failures=3, metrics_staleness_s=5.0)
    d.update_pool_metrics("qa17m1")
    assert ready() == 3
    eps[0].scrape_failures = 3  # its port refuses scrapes
    d.update_pool_metrics("qa17m1")
    assert ready() == 2
    now[0] = 4.0
    eps[1].metrics.updated_at = 4.0  # only this one is still scraped
    now[0] = 6.0  # the others' metrics are 6 s old
    d.update_pool_metrics("qa17m1")
    assert ready() == 1
    now[0] = 10.0
    d.update_pool_metrics("qa17m1")
    assert ready() == 0  # no fail-open once known: routing's gate still tries them, the gauge says 0


def test_nothing_known_yet_counts_the_ejection_flag() -> None:
    from kvgate.datalayer.health import ready_endpoints

    eps = [Endpoint(address=f"10.9.1.{i}:8000") for i in range(2)]  # never scraped, no failed scrape
    policy = HealthPolicy()
    assert ready_endpoints(eps, 100.0, policy) == eps
    eps[0].healthy = False
    assert ready_endpoints(eps, 100.0, policy) == [eps[1]]
    eps[1].scrape_failures = 1  # something is known now: neither is healthy
    assert ready_endpoints(eps, 100.0, policy) == []
