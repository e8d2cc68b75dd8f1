"""qa23 F4: ``concurrency-detector`` takes upstream GIE's parameters with GIE's meaning
(``pkg/epp/saturationdetector/framework/plugins/concurrencydetector``: ``maxConcurrency``, ``headroom``,
``concurrencyMode`` requests | tokens, ``maxTokenConcurrency``) and, listed in a scheduling profile, is a
filter as GIE's is: an endpoint at ``bound x (1 + headroom)`` in flight leaves the candidates. The live
test is the review's (s23-qa-tests/test_qa23_concurrency_detector_upstream.py)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import orjson
import pytest

from flowcontrol.test_doors import HeldBackend
from gateway.conftest import make_config, make_pools
from kvgate.config.picker import PluginSpec, instantiate
from kvgate.datalayer.endpoint import Endpoint
from kvgate.flowcontrol.saturation import ConcurrencyDetector
from kvgate.gateway.server import GatewayServer
from kvgate.scheduling.framework import ConfigError, CycleState, PluginHandle
from kvgate.scheduling.types import InferenceRequest

WAIT = 10.0


def build(picker: dict[str, Any]) -> Any:
    cfg = make_config(["127.0.0.1:1"])
    cfg.pools[0].picker_config = picker
    return make_pools(cfg)


def detector(**params: Any) -> ConcurrencyDetector:
    d = instantiate(PluginSpec("c", "concurrency-detector", params, "plugins[0]"), PluginHandle())
    assert isinstance(d, ConcurrencyDetector)
    return d


def endpoint(address: str, requests: int = 0, tokens: int = 0) -> Endpoint:
    ep = Endpoint(address)
    ep.inflight.requests = requests
    ep.inflight.pending_prefill_tokens = tokens
    return ep


@pytest.mark.parametrize(
    "params",
    [{"maxConcurrency": 4, "headroom": 0.2}, {"concurrencyMode": "tokens", "maxTokenConcurrency": 5000}],
)
def test_gie_concurrency_detector_parameters_are_accepted(params: dict[str, Any]) -> None:
    picker = {
        "featureGates": ["flowControl"],
        "saturationDetector": {"type": "concurrency-detector", "parameters": params},
        "plugins": [{"type": "queue-scorer"}],
        "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": "queue-scorer"}]}],
    }
    try:
        build(picker)
    except ConfigError as e:
        pytest.fail(f"GIE's concurrency-detector config refused: {e}")


def test_the_mode_picks_the_bound_the_gate_counts() -> None:
    busy = endpoint("a:1", requests=4, tokens=6000)
    # requests: the request bound only (GIE's default mode)
    assert detector(maxConcurrency=4, concurrencyMode="requests").endpoint_saturation(busy, 0.0) == 1.0
    # tokens: the token bound only, whatever the request count
    tok = detector(maxConcurrency=1, concurrencyMode="tokens", maxTokenConcurrency=12000)
    assert tok.endpoint_saturation(busy, 0.0) == pytest.approx(0.5)
    # unset: GIE's default, requests (its maxTokenConcurrency unused); kvgate's ``both``, or its older
    # key maxTokens with no mode, the larger of the two (review s23-rev-fixqa23 R3)
    assert detector(maxConcurrency=8, maxTokenConcurrency=3000).endpoint_saturation(busy, 0.0) == 0.5
    both = detector(maxConcurrency=8, maxTokenConcurrency=3000, concurrencyMode="both")
    assert both.endpoint_saturation(busy, 0.0) == 2.0
    assert detector(maxConcurrency=8, maxTokens=3000).endpoint_saturation(busy, 0.0) == 2.0
    assert (
        detector(maxConcurrency=8, maxTokens=3000, concurrencyMode="requests").endpoint_saturation(busy, 0.0)
        == 0.5
    )


@pytest.mark.parametrize(
    ("params", "key"),
    [
        ({"concurrencyMode": "bytes"}, "concurrencyMode"),
        ({"headroom": 1.5}, "headroom"),
        ({"headroom": -0.1}, "headroom"),
        ({"maxTokens": 10, "maxTokenConcurrency": 10}, "maxTokens"),
        ({"concurrencyMode": "tokens", "maxPendingRequests": 2}, "maxPendingRequests"),
    ],
)
def test_a_bad_value_names_its_key(params: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=rf"plugins\[0\]\.parameters\.{key}:"):
        detector(**params)


def test_the_filter_keeps_endpoints_below_the_bound_with_headroom() -> None:
    eps = [endpoint("a:1", requests=4), endpoint("b:1", requests=5), endpoint("c:1", requests=3)]
    cycle = CycleState(InferenceRequest(request_id="r", model="m"), 0.0)
    # limit int(4 x 1.25) = 5: below 5 stays (GIE: inflight < limit)
    kept = detector(maxConcurrency=4, headroom=0.25).filter(cycle, eps)
    assert [e.address for e in kept] == ["a:1", "c:1"]
    assert [e.address for e in detector(maxConcurrency=4).filter(cycle, eps)] == ["c:1"]
    tok = detector(concurrencyMode="tokens", maxTokenConcurrency=100)
    assert [e.address for e in tok.filter(cycle, [endpoint("a:1", 50, 100), endpoint("b:1", 50, 99)])] == [
        "b:1"
    ]


async def test_concurrency_detector_in_a_profile_filters_a_full_endpoint() -> None:
    a, b = await HeldBackend().start(), await HeldBackend().start()
    cfg = make_config([a.address, b.address])
    cfg.pools[0].picker_config = {
        "plugins": [
            {"type": "concurrency-detector", "parameters": {"maxConcurrency": 1}},
            {"type": "prefix-cache-scorer"},
            {"type": "max-score-picker"},
        ],
        "schedulingProfiles": [
            {
                "name": "default",
                "plugins": [
                    {"pluginRef": "concurrency-detector"},
                    {"pluginRef": "prefix-cache-scorer"},
                    {"pluginRef": "max-score-picker"},
                ],
            }
        ],
    }
    gw = GatewayServer(cfg, make_pools(cfg), scrape=False)
    prompt = "the same long system prompt " * 40
    tasks: list[asyncio.Task[Any]] = []
    try:
        await gw.start()
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{gw.port}/v1/completions"

            async def send(p: str) -> int:
                body = orjson.dumps({"model": "m", "prompt": p, "max_tokens": 1})
                async with http.post(url, data=body, headers={"content-type": "application/json"}) as r:
                    await r.read()
                    return r.status

            async def arrived(n: int) -> None:
                deadline = time.monotonic() + WAIT
                while len(a.arrivals) + len(b.arrivals) < n:
                    assert time.monotonic() < deadline, "request never reached a backend"
                    await asyncio.sleep(0.01)

            tasks.append(asyncio.ensure_future(send(prompt)))
            await arrived(1)
            tasks.append(asyncio.ensure_future(send(prompt)))  # same prefix: the scorer wants the busy one
            await arrived(2)
            placed = (len(a.arrivals), len(b.arrivals))
            for _ in range(2):
                a.release.release()
                b.release.release()
            statuses = await asyncio.wait_for(asyncio.gather(*tasks), WAIT)
        assert placed == (1, 1), (
            f"both requests went to one endpoint {placed} (maxConcurrency 1, the other idle): the "
            "concurrency-detector listed in the profile filtered nothing"
        )
        assert statuses == [200, 200]
    finally:
        for t in tasks:
            t.cancel()
        await gw.stop(drain_timeout=0.5)
        await a.stop()
        await b.stop()
