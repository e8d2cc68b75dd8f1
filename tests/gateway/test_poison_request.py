"""s17-qa M4: a request that fails with a 5xx on every server (a "query of death": a vLLM engine error on
some input) does not eject healthy endpoints, and a pool never has more than ``health.maxEjectionPercent``
of its endpoints ejected at once.

Before: every 5xx was charged to the endpoint that answered it and the request retried elsewhere (up to
``maxAttempts``), so 8 such requests on a pool of 4 ejected 3 of them (one poison request a second kept
about half the pool out).
"""

from __future__ import annotations

import aiohttp
import orjson
import pytest

from gateway.conftest import base_url, make_config, running_gateway
from kvgate.config.gateway import GatewayConfigError, HealthConfig, parse_gateway_config
from kvgate.datalayer.endpoint import Endpoint
from kvgate.gateway.health import HealthTracker


async def _post(s: aiohttp.ClientSession, url: str, prompt: str) -> int:
    body = orjson.dumps({"model": "m", "prompt": prompt, "max_tokens": 1})
    async with s.post(url + "/v1/completions", data=body) as r:
        await r.read()
        return r.status


async def test_a_request_that_fails_everywhere_ejects_nobody_and_runs_twice(backends):
    bs = await backends(4)
    for b in bs:
        b.poison = "poison"
    cfg = make_config(
        [b.address for b in bs], extra={"health": {"ejectBaseSeconds": 30, "ejectMaxSeconds": 60}}
    )
    async with running_gateway(cfg) as gw, aiohttp.ClientSession() as s:
        for _ in range(8):
            assert await _post(s, base_url(gw), "poison") == 500  # the server's own answer, passed through
        assert [ep.healthy for ep in gw.pools[0].endpoints()] == [True] * 4
        assert gw.metrics.ejections._value.get() == 0
        # Two servers answered each one a 5xx: the request is the culprit, not tried a third time.
        assert sum(b.poisoned for b in bs) == 16
        before = [len(b.received) for b in bs]
        for _ in range(16):
            assert await _post(s, base_url(gw), "fine") == 200
        assert [len(b.received) - n for b, n in zip(bs, before, strict=True)] == [4, 4, 4, 4]


async def test_a_server_that_fails_alone_is_still_charged_and_ejected(backends):
    bs = await backends(3)
    bs[1].mode = "error500"
    cfg = make_config(
        [b.address for b in bs],
        extra={"health": {"ejectAfterFailures": 2, "ejectBaseSeconds": 30, "ejectMaxSeconds": 60}},
    )
    async with running_gateway(cfg) as gw, aiohttp.ClientSession() as s:
        for _ in range(9):
            assert await _post(s, base_url(gw), "fine") == 200  # its 5xx retried on a good one
        healthy = {ep.address: ep.healthy for ep in gw.pools[0].endpoints()}
        assert healthy == {bs[0].address: True, bs[1].address: False, bs[2].address: True}


@pytest.mark.parametrize(
    ("percent", "pool", "most"), [(50, 4, 2), (10, 4, 1), (0, 4, 1), (100, 4, 3), (50, 7, 3)]
)
def test_at_most_max_ejection_percent_of_the_pool_is_ejected_one_at_least(percent, pool, most):
    now = [0.0]
    tracker = HealthTracker(
        HealthConfig(eject_after_failures=1, max_ejection_percent=percent), lambda: now[0]
    )
    eps = [Endpoint(address=f"127.0.0.1:{i + 1}", pool="p") for i in range(pool)]
    for _ in range(3):
        for ep in eps:
            tracker.failure(ep, eps)
    assert sum(not ep.healthy for ep in eps) == most  # (100 %: the last healthy one is never ejected)


def test_max_ejection_percent_is_checked():
    raw = {"pools": [{"name": "p", "endpoints": ["127.0.0.1:1"], "models": ["m"]}]}
    assert parse_gateway_config(raw).health.max_ejection_percent == 50
    for bad in (101, -1, "x"):
        with pytest.raises(GatewayConfigError, match="maxEjectionPercent"):
            parse_gateway_config({**raw, "health": {"maxEjectionPercent": bad}})
