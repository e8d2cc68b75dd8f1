"""Issue #12 through the EPP door: with every named policy, a dead endpoint whose metrics went stale
gets no picks (the Envoy-playing harness forwards what the EPP picks). Before the fix ``kvgate epp``
with the default policy picked the dead endpoint 200/200."""

from __future__ import annotations

import collections

import aiohttp
import orjson
import pytest

from gateway.backend import Backend
from gateway.test_health_gate import wait_until
from kvgate.config.director import build_director
from kvgate.config.policies import POLICIES
from kvgate.datalayer.endpoint import EndpointMetrics
from kvgate.datalayer.scraper import MetricsScraper
from kvgate.datalayer.store import EndpointStore
from kvgate.extproc.testing import EnvoyHarness
from kvgate.scheduling.types import InferenceRequest


@pytest.mark.parametrize("policy", list(POLICIES))
async def test_dead_endpoint_with_stale_metrics_gets_no_picks_from_kvgate_epp(start_epp, policy):
    live, dead = await Backend("live").start(), await Backend("dead").start()
    try:
        epp = await start_epp([live.address, dead.address], policy=policy)
        async with MetricsScraper(epp.store, interval=0.05), aiohttp.ClientSession() as http:
            eps = {ep.address: ep for ep in epp.store.all()}
            await wait_until(lambda: all(ep.metrics.updated_at is not None for ep in eps.values()))
            await dead.stop()
            await wait_until(lambda: eps[dead.address].scrape_failures >= 3)
            envoy = EnvoyHarness(epp.stub, http)
            body = orjson.dumps({"model": "m", "prompt": "hello there", "max_tokens": 1})
            for _ in range(30):
                res = await envoy.request("POST", "/v1/completions", body)
                assert res.status == 200
        picked = collections.Counter(addr for _rid, addr in epp.picker.calls.dispatched)
        assert picked[dead.address] == 0, (policy, dict(picked))
        assert picked[live.address] == 30
    finally:
        await live.stop()
        await dead.stop()


@pytest.mark.parametrize("policy", list(POLICIES))
def test_every_policy_skips_an_endpoint_whose_metrics_are_stale(policy):
    # No scrape failures at all, only age: 60 s-old metrics saying "idle" against a loaded fresh one.
    now = [1000.0]
    store = EndpointStore.from_addresses(["10.0.0.1:8000", "10.0.0.2:8000"])
    busy, stale = store.all()
    busy.metrics = EndpointMetrics(
        waiting_queue_size=50, running_requests=60, kv_cache_usage=0.9, updated_at=now[0]
    )
    stale.metrics = EndpointMetrics(updated_at=now[0] - 60)
    director = build_director(policy, store, lambda: now[0], seed=1)
    picks: collections.Counter[str] = collections.Counter()
    for i in range(200):
        req = InferenceRequest(request_id=f"r{i}", model="m", prompt_text=f"prompt {i}", max_tokens=8)
        picks[director.pick(req).endpoints[0].address] += 1
    assert picks[stale.address] == 0, (policy, dict(picks))
    # Both stale: fail open rather than refuse every request.
    busy.metrics = EndpointMetrics(updated_at=now[0] - 60)
    req = InferenceRequest(request_id="last", model="m", prompt_text="x", max_tokens=8)
    assert director.pick(req).endpoints
