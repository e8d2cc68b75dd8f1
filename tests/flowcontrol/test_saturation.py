from __future__ import annotations

import math

import pytest

from kvgate.config.director import build_director
from kvgate.config.picker import PluginSpec, instantiate, parse_config
from kvgate.datalayer.endpoint import Endpoint, EndpointMetrics
from kvgate.datalayer.store import EndpointStore
from kvgate.flowcontrol.saturation import ConcurrencyDetector, UtilizationDetector
from kvgate.scheduling.framework import PluginHandle


def _ep(q: int, kv: float, t: float | None = 0.0) -> Endpoint:
    return Endpoint("a:1", metrics=EndpointMetrics(waiting_queue_size=q, kv_cache_usage=kv, updated_at=t))


def test_utilization_detector() -> None:
    d = UtilizationDetector("u", PluginHandle())
    assert d.endpoint_saturation(_ep(5, 0.2), 0.0) == pytest.approx(1.0)
    assert d.endpoint_saturation(_ep(1, 0.4), 0.0) == pytest.approx(0.5)
    assert d.endpoint_saturation(_ep(0, 0.0), 0.3) == 1.0  # stale
    assert d.endpoint_saturation(_ep(0, 0.0, None), 0.0) == 1.0  # never scraped
    assert d.saturation([_ep(10, 0.0), _ep(0, 0.0)], 0.0) == pytest.approx(1.0)
    assert d.saturated([_ep(10, 0.0), _ep(0, 0.0)], 0.0)
    assert not d.saturated([_ep(9, 0.0), _ep(0, 0.0)], 0.0)


def test_concurrency_detector() -> None:
    d = ConcurrencyDetector("c", PluginHandle(), max_requests=4, max_tokens=1000)
    e = _ep(0, 0.0)
    e.inflight.requests = 2
    assert d.endpoint_saturation(e, 0.0) == 0.5
    e.inflight.pending_prefill_tokens = 1500
    assert d.endpoint_saturation(e, 0.0) == 1.5


# -- ownLoadStalenessThreshold: the gateway's own in-flight accounting carries a quiet page forward ----


def _scraped(
    waiting: int = 0,
    running: int = 1,
    kv: float = 0.1,
    own_requests: int = 1,
    own_decoding: int = 1,
    sent_tokens: int = 10_000,
    explained: bool = True,
    blocks: int | None = 64,
) -> Endpoint:
    """An endpoint as ``MetricsScraper`` leaves it after a page read at t=0: block 128 x ``blocks``
    (8,192 tokens of KV by default), this gateway's own load beside the page."""
    ep = Endpoint("a:1")
    ep.metrics = EndpointMetrics(
        waiting_queue_size=waiting,
        running_requests=running,
        kv_cache_usage=kv,
        block_size=128,
        num_gpu_blocks=blocks,
        updated_at=0.0,
        own_explained=explained,
        own_pending=own_requests - own_decoding,
        own_sent_tokens=sent_tokens,
    )
    ep.inflight.requests, ep.inflight.decoding = own_requests, own_decoding
    ep.inflight.sent_tokens = sent_tokens
    return ep


def test_a_page_its_own_load_explains_stays_news_past_the_staleness_threshold() -> None:
    """Failed before: any page older than 0.2 s made the endpoint saturated, so the scraper could not
    pause longer than 0.1 s on a quiet endpoint without an idle pool shedding."""
    d = UtilizationDetector("u", PluginHandle())
    ep = _scraped()
    assert d.endpoint_saturation(ep, 0.1) == pytest.approx(0.1 / 0.8)  # fresh: the page as it is
    assert d.endpoint_saturation(ep, 0.5) == pytest.approx(0.1 / 0.8)  # nothing happened since
    assert not d.saturated([ep], 0.9)
    assert d.endpoint_saturation(ep, 1.01) == 1.0  # past ownLoadStalenessThreshold (1 s): no news


def test_what_it_sent_since_the_page_counts_at_once() -> None:
    d = UtilizationDetector("u", PluginHandle())
    ep = _scraped(waiting=1, running=1, own_requests=2, own_decoding=1)  # 1 waiting on the page
    inf = ep.inflight
    # Three sent since (no first token yet), 2,048 tokens between them: a quarter of the cache.
    inf.requests += 3
    inf.sent_tokens += 2048
    assert d.endpoint_saturation(ep, 0.5) == pytest.approx(max(4 / 5, (0.1 + 0.25) / 0.8))
    inf.sent_tokens += 4096  # and another half of the cache's worth: 0.85 of it
    assert d.endpoint_saturation(ep, 0.5) == pytest.approx(0.85 / 0.8)
    inf.sent_tokens -= 4096
    inf.decoding += 2  # two started since: they leave the queue
    assert d.endpoint_saturation(ep, 0.5) == pytest.approx(max(2 / 5, 0.35 / 0.8))
    inf.decoding += 2  # every one of its requests there has started: nothing of its own can wait
    assert d.endpoint_saturation(ep, 0.5) == pytest.approx(0.35 / 0.8)
    # A fresh page is read as the reference reads it (the estimate is only for older ones).
    assert d.endpoint_saturation(ep, 0.2) == pytest.approx(max(1 / 5, 0.1 / 0.8))


def test_no_carry_forward_without_a_page_it_can_explain() -> None:
    d = UtilizationDetector("u", PluginHandle())
    assert d.endpoint_saturation(_scraped(explained=False), 0.3) == 1.0  # load from elsewhere
    failing = _scraped()
    failing.scrape_failures = 1  # a scrape failed since: the server may be gone or stuck
    assert d.endpoint_saturation(failing, 0.3) == 1.0
    other_feed = _scraped()
    other_feed.metrics.own_pending = None  # not read by MetricsScraper (a simulator, a hub feed)
    assert d.endpoint_saturation(other_feed, 0.3) == 1.0
    unknown = _scraped(blocks=None)  # KV capacity not on the page
    assert d.endpoint_saturation(unknown, 0.3) == pytest.approx(0.1 / 0.8)  # nothing sent since
    unknown.inflight.sent_tokens += 1
    assert d.endpoint_saturation(unknown, 0.3) == 1.0  # sent since: what it took is not known


def test_own_load_staleness_threshold_zero_is_the_reference_rule() -> None:
    spec = PluginSpec("u", "utilization-detector", {"ownLoadStalenessThreshold": 0}, "saturationDetector")
    d = instantiate(spec, PluginHandle())
    assert isinstance(d, UtilizationDetector)
    assert d.endpoint_saturation(_scraped(), 0.3) == 1.0
    assert d.scrape_bound() == 0.2
    spec = PluginSpec("u", "utilization-detector", {"ownLoadStalenessThreshold": "3s"}, "s")
    d3 = instantiate(spec, PluginHandle())
    assert isinstance(d3, UtilizationDetector) and d3.scrape_bound() == 3.0
    assert UtilizationDetector("u", PluginHandle()).scrape_bound() == 1.0
    assert ConcurrencyDetector("c", PluginHandle()).scrape_bound() == math.inf


def test_inline_detector_config_takes_the_new_key() -> None:
    cfg = parse_config({"saturationDetector": {"ownLoadStalenessThreshold": "500ms"}})
    store = EndpointStore()
    det = build_director(cfg, store).detector
    assert isinstance(det, UtilizationDetector) and det.own_load_staleness == 0.5
    assert build_director(cfg, store).scrape_bound() == 0.5
