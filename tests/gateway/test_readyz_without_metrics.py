"""s17-bigbody M: since 35517ad, ``/readyz`` (and ``inference_pool_ready_pods``) need a successful
``/metrics`` scrape. A fleet that answers every request but whose ``/metrics`` fails (404: SGLang without
``--enable-metrics``, a metrics path blocked by a sidecar/NetworkPolicy, an engine whose metrics moved)
is served fine (routing fails open to the non-ejected endpoints), yet the gateway reports 503 ``no healthy
endpoint`` for good: a Kubernetes readinessProbe / load balancer on ``/readyz`` takes a working gateway
out of service (before 35517ad: 200). A scrape that got an HTTP answer shows the server is alive; only a
connection that fails (or a stale scrape of a server that stopped answering) says dead.
Run: cd /work/main && PYTHONPATH=src:tests .venv/bin/python -m pytest -c pyproject.toml -q
/work/team/reviews/s17-bigbody-tests/test_bigbody_readyz_without_metrics.py
"""

from __future__ import annotations

import asyncio

import aiohttp

from gateway.conftest import make_config, running_gateway
from gateway.test_big_json_answer import PathAnswer, _resp, answer_body, serve_keepalive


async def served_and_ready(answer: PathAnswer) -> tuple[int, tuple[int, str]]:
    """A fleet of one raw server (``answer``) behind a gateway scraping it every 0.1 s (3 failures eject,
    a scrape older than 1 s is stale); after 1.5 s (past 3 scrape intervals): (a completion's status,
    ``/readyz``'s status and text)."""
    server = await serve_keepalive(answer)
    addr = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    cfg = make_config(
        [addr],
        extra={
            "listen": {"adminPort": 0},
            "health": {"metricsStalenessSeconds": 1, "scrapeFailures": 3},
            "scrapeIntervalSeconds": 0.1,
        },
    )
    try:
        async with running_gateway(cfg, scrape=True) as gw, aiohttp.ClientSession() as s:
            await asyncio.sleep(1.5)  # > scrapeFailures scrape intervals
            async with s.post(
                f"http://127.0.0.1:{gw.port}/v1/completions", json={"model": "m", "prompt": "x"}
            ) as r:
                served = r.status
            async with s.get(f"http://127.0.0.1:{gw.admin_port}/readyz") as r:
                return served, (r.status, await r.text())
    finally:
        server.close()


async def _no_metrics(path: str, w: asyncio.StreamWriter) -> None:
    if path.startswith("/metrics"):
        w.write(_resp(404, b'{"detail":"Not Found"}'))
    else:
        w.write(_resp(200, answer_body(10) if path.startswith("/v1/") else b""))


async def test_a_serving_fleet_without_metrics_is_ready():
    served, ready = await served_and_ready(_no_metrics)
    assert served == 200
    assert ready[0] == 200, f"requests are served ({served}) but /readyz says {ready}"


def test_ready_endpoints_count_a_recent_http_answer_not_an_old_one() -> None:
    from kvgate.datalayer.endpoint import Endpoint
    from kvgate.datalayer.health import HealthPolicy, ready_endpoints

    policy = HealthPolicy(scrape_failures=3, metrics_staleness_s=5.0)
    alive, dead, ejected = (Endpoint(address=f"10.9.1.{i}:8000") for i in range(3))
    for ep in (alive, dead, ejected):
        ep.scrape_failures = 3  # every /metrics failed
    alive.answered_at = 9.0  # ... with an HTTP answer (404), 1 s ago
    dead.answered_at = 2.0  # its last answer 8 s ago: the port refuses since
    ejected.answered_at = 9.0
    ejected.healthy = False
    assert ready_endpoints([alive, dead, ejected], 10.0, policy) == [alive]
    # No endpoint up: routing fails open to the ejected one that answers its scrapes (review s30-qa30 Q1),
    # so readiness counts it (never stricter than routing); a dead pool still counts none. Only one seen
    # down by its scrapes since its ejection is back (review s30-rev-d30 F2): else it stays out.
    assert ready_endpoints([dead, ejected], 10.0, policy) == []
    ejected.down_since_ejected = True
    assert ready_endpoints([dead, ejected], 10.0, policy) == [ejected]
    ejected.answered_at = 2.0
    assert ready_endpoints([dead, ejected], 10.0, policy) == []
