"""qa36b-F1: a page without a KV cache size (a vLLM-named server without ``vllm:cache_config_info``) made
the carried-forward utilization detector (``ownLoadStalenessThreshold``, set by the default ``kvgate``
policy) call the endpoint saturated as soon as this gateway had sent it anything since the page: an idle
pool shed sheddable requests (429) and, with flow control, held every request until the next page.
Now the KV term is the page's own reading there, as upstream's detector reads it (the requests sent
since still count in the queue term until their first token), and a WARNING names the endpoint once."""

from __future__ import annotations

import logging
from typing import Any

import aiohttp
import pytest

from gateway.backend import Backend
from kvgate.config.gateway import parse_gateway_config
from kvgate.datalayer.endpoint import Endpoint, EndpointMetrics
from kvgate.datalayer.mappings import cache_size_series
from kvgate.datalayer.scraper import MetricsScraper
from kvgate.flowcontrol.saturation import UtilizationDetector
from kvgate.gateway.pools import build_pool
from kvgate.gateway.server import GatewayServer
from kvgate.scheduling.framework import PluginHandle

WAIT = 30.0


def _page_without_cache_size(address: str = "a:1") -> Endpoint:
    """As ``MetricsScraper`` leaves an idle endpoint whose page has KV usage 0.1 but no cache size."""
    ep = Endpoint(address)
    ep.metrics = EndpointMetrics(kv_cache_usage=0.1, updated_at=0.0, own_explained=True, own_pending=0)
    return ep


def test_tokens_sent_to_a_page_without_a_cache_size_leave_its_kv(caplog: pytest.LogCaptureFixture) -> None:
    d = UtilizationDetector("u", PluginHandle(), own_load_staleness=1.0)
    ep = _page_without_cache_size()
    assert d.endpoint_saturation(ep, 0.3) == pytest.approx(0.1 / 0.8)
    # One request sent and finished since the page: before, 1.0 (saturated) until the next page.
    ep.inflight.sent_tokens += 500
    with caplog.at_level(logging.WARNING, logger="kvgate.flowcontrol.saturation"):
        assert d.endpoint_saturation(ep, 0.3) == pytest.approx(0.1 / 0.8)
        # Three in flight without a first token: the queue term still counts them (a page younger than
        # metricsStalenessThreshold); older, with requests in flight, upstream's rule: saturated (rev-c36 F2).
        ep.inflight.requests = 3
        assert d.endpoint_saturation(ep, 0.1) == pytest.approx(3 / 5)
        assert d.endpoint_saturation(ep, 0.3) == 1.0
        ep.inflight.requests = 5
        assert d.saturated([ep], 0.1)
        ep.inflight.requests = 0
        other = _page_without_cache_size("b:2")
        other.inflight.sent_tokens = 1
        d.endpoint_saturation(other, 0.3)
    warned = [r.getMessage() for r in caplog.records if "no KV cache size" in r.getMessage()]
    assert len(warned) == 2, warned  # once per endpoint, however often read
    assert warned[0].startswith("a:1:") and "vllm:cache_config_info" in warned[0]
    assert warned[1].startswith("b:2:")
    # A page that does give one is still carried forward by the tokens sent since.
    known = _page_without_cache_size()
    known.metrics.block_size, known.metrics.num_gpu_blocks = 16, 100  # 1,600 tokens
    known.inflight.sent_tokens = 800
    assert d.endpoint_saturation(known, 0.3) == pytest.approx((0.1 + 0.5) / 0.8)


def test_cache_size_series_names_each_engines_series() -> None:
    assert cache_size_series("vllm") == "vllm:cache_config_info (block_size, num_gpu_blocks)"
    assert cache_size_series("sglang") == "sglang:cache_config_info (page_size, num_pages)"
    trt = "trtllm_kv_cache_tokens_per_block and trtllm_kv_cache_max_blocks"
    assert cache_size_series("trtllm-serve") == trt


def _config(port: int, flow_control: bool) -> dict[str, Any]:
    # The carry-forward's bound long (30 s) so that one page read by the test stays the news for the
    # whole test: no scrape races the requests.
    picker: dict[str, Any] = {
        "saturationDetector": {
            "type": "utilization-detector",
            "parameters": {"ownLoadStalenessThreshold": "30s"},
        },
        "plugins": [{"type": "queue-scorer"}],
        "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": "queue-scorer"}]}],
    }
    if flow_control:
        picker["featureGates"] = ["flowControl"]
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "objectives": [{"name": "batch", "priority": -1}],
        "pools": [
            {"name": "p", "endpoints": [f"127.0.0.1:{port}"], "models": ["m"], "endpointPickerConfig": picker}
        ],
    }


@pytest.mark.asyncio
@pytest.mark.parametrize("flow_control", [False, True], ids=["shedding", "flow-control"])
async def test_an_idle_server_without_a_cache_size_admits_request_after_request(flow_control: bool) -> None:
    """The QA's run, in process: the test backend's page (waiting 0, running 0, KV 0.1) has no
    ``vllm:cache_config_info``; one page read, then sequential requests. Before: the second and later
    sheddable ones 429 (without flow control), or held in the queue until a page that never comes
    (with it)."""
    backend = await Backend("b0").start()
    cfg = parse_gateway_config(_config(backend.port, flow_control))
    pools = [build_pool(p) for p in cfg.pools]
    gw = GatewayServer(cfg, pools, scrape=False)
    await gw.start()
    scraper = MetricsScraper(pools[0].store)
    try:
        (ep,) = pools[0].store.all()
        assert await scraper.scrape(ep)
        assert ep.metrics.num_gpu_blocks is None and ep.metrics.own_explained
        url = f"http://127.0.0.1:{gw.port}/v1/chat/completions"
        headers = {} if flow_control else {"x-gateway-inference-objective": "batch"}
        codes = []
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT)) as http:
            for i in range(5):
                body = {"model": "m", "messages": [{"role": "user", "content": f"q{i}"}], "max_tokens": 1}
                async with http.post(url, json=body, headers=headers) as r:
                    await r.read()
                    codes.append(r.status)
        assert codes == [200] * 5
        assert ep.inflight.sent_tokens > 0  # (what made it "saturated" before)
    finally:
        await scraper.stop()
        await gw.stop(drain_timeout=1.0)
        await backend.stop()


def test_a_page_past_the_reference_staleness_with_requests_in_flight_is_saturated() -> None:
    """rev-c36 F2: the qa36b-F1 fix read a page with no cache size alone up to ownLoadStalenessThreshold
    (1 s in the ``kvgate`` policy): at 0.9 s, KV 0.7, with 10 requests x 100k tokens sent since and all
    decoding (out of the queue term), it admitted (0.875) where upstream's detector (and kvgate before)
    said saturated. With none in flight (all finished: qa36b-F1's sequential client) the page still reads."""
    d = UtilizationDetector("u", PluginHandle(), own_load_staleness=1.0)
    ep = Endpoint("10.0.0.1:8000")
    ep.metrics = EndpointMetrics(kv_cache_usage=0.7, updated_at=0.0, own_explained=True, own_pending=0)
    ep.inflight.requests = ep.inflight.decoding = 10
    ep.inflight.sent_tokens = 10 * 100_000
    assert UtilizationDetector("r", PluginHandle(), own_load_staleness=0.0).saturated([ep], 0.9)
    assert d.saturated([ep], 0.9), d.endpoint_saturation(ep, 0.9)
    assert d.endpoint_saturation(ep, 0.15) == pytest.approx(0.7 / 0.8)  # (as upstream, under 0.2 s)
    ep.inflight.requests = ep.inflight.decoding = 0
    assert d.endpoint_saturation(ep, 0.9) == pytest.approx(0.7 / 0.8)
