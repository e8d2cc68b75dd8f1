from __future__ import annotations

import multiprocessing

import pytest

from kvgate.config.director import build_director
from kvgate.config.picker import PluginSpec, instantiate, parse_config
from kvgate.datalayer.endpoint import Endpoint, EndpointMetrics
from kvgate.datalayer.scraper import quiet_interval_for
from kvgate.datalayer.store import EndpointStore
from kvgate.flowcontrol.saturation import ConcurrencyDetector, UtilizationDetector
from kvgate.gateway.shared_inflight import SharedInFlight
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
    d = UtilizationDetector("u", PluginHandle(), own_load_staleness=1.0)
    ep = _scraped()
    assert d.endpoint_saturation(ep, 0.1) == pytest.approx(0.1 / 0.8)  # fresh: the page as it is
    assert d.endpoint_saturation(ep, 0.5) == pytest.approx(0.1 / 0.8)  # nothing happened since
    assert not d.saturated([ep], 0.9)
    assert d.endpoint_saturation(ep, 1.01) == 1.0  # past ownLoadStalenessThreshold (1 s): no news


def test_what_it_sent_since_the_page_counts_at_once() -> None:
    d = UtilizationDetector("u", PluginHandle(), own_load_staleness=1.0)
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
    # The same on a page younger than metricsStalenessThreshold (s8-sat N1: this line asserted the
    # page verbatim, 1 / 5, and so pinned B2 down).
    assert d.endpoint_saturation(ep, 0.2) == pytest.approx(0.35 / 0.8)
    assert d.endpoint_saturation(ep, 0.05) == pytest.approx(0.35 / 0.8)


def test_no_carry_forward_without_a_page_it_can_explain() -> None:
    d = UtilizationDetector("u", PluginHandle(), own_load_staleness=1.0)
    assert d.endpoint_saturation(_scraped(explained=False), 0.3) == 1.0  # load from elsewhere
    failing = _scraped()
    failing.scrape_failures = 1  # a scrape failed since: the server may be gone or stuck
    assert d.endpoint_saturation(failing, 0.3) == 1.0
    other_feed = _scraped()
    other_feed.metrics.own_pending = None  # not read by MetricsScraper (a simulator, a hub feed)
    assert d.endpoint_saturation(other_feed, 0.3) == 1.0


def test_own_load_staleness_threshold_zero_is_the_reference_rule() -> None:
    spec = PluginSpec("u", "utilization-detector", {"ownLoadStalenessThreshold": 0}, "saturationDetector")
    d = instantiate(spec, PluginHandle())
    assert isinstance(d, UtilizationDetector)
    assert d.endpoint_saturation(_scraped(), 0.3) == 1.0
    assert d.scrape_bound() == 0.2
    spec = PluginSpec("u", "utilization-detector", {"ownLoadStalenessThreshold": "3s"}, "s")
    d3 = instantiate(spec, PluginHandle())
    assert isinstance(d3, UtilizationDetector) and d3.scrape_bound() == 3.0
    assert UtilizationDetector("u", PluginHandle()).scrape_bound() == 0.2  # the default: reference
    assert ConcurrencyDetector("c", PluginHandle()).scrape_bound() == 0.2  # no page read: reference (F2)


def test_inline_detector_config_takes_the_new_key() -> None:
    cfg = parse_config({"saturationDetector": {"ownLoadStalenessThreshold": "500ms"}})
    store = EndpointStore()
    det = build_director(cfg, store).detector
    assert isinstance(det, UtilizationDetector) and det.own_load_staleness == 0.5
    assert build_director(cfg, store).scrape_bound() == 0.5


# -- review s8-sat ---------------------------------------------------------------------------------------


def test_a_reference_shaped_config_keeps_the_reference_rule() -> None:
    """s8-sat R2. Failed before: every config got ``ownLoadStalenessThreshold`` 1 s, so a config that set
    ``metricsStalenessThreshold: 100ms`` was scraped every 0.5 s when quiet and an idle page 0.5 s old
    scored 0.125 (the reference: saturated). The carry-forward is the ``kvgate`` policy's now."""
    idle = _scraped(running=0, own_requests=0, own_decoding=0)
    store = EndpointStore()
    strict = build_director(
        parse_config({"saturationDetector": {"metricsStalenessThreshold": "100ms"}}), store
    )
    assert strict.scrape_bound() == 0.1 and quiet_interval_for(0.05, strict.scrape_bound()) == 0.05
    assert strict.detector is not None and strict.detector.endpoint_saturation(idle, 0.5) == 1.0
    for shape in (parse_config({}), "reference", "round-robin"):
        plain = build_director(shape, store)
        assert plain.scrape_bound() == 0.2 and quiet_interval_for(0.05, plain.scrape_bound()) == 0.1
        assert plain.detector is not None and plain.detector.endpoint_saturation(idle, 0.3) == 1.0
    kvgate = build_director("kvgate", store)
    assert kvgate.scrape_bound() == 1.0 and quiet_interval_for(0.05, kvgate.scrape_bound()) == 0.5
    assert kvgate.detector is not None and kvgate.detector.endpoint_saturation(idle, 0.5) < 1.0


def test_a_burst_right_after_a_quiet_page_counts_before_the_page_is_stale() -> None:
    """s8-sat B2. Failed before: a page younger than metricsStalenessThreshold (0.2 s) was read verbatim,
    so for the first 0.2 s of each 0.5 s quiet pause what the gateway sent did not count (0.0625 with
    20 of its own requests queued at the server)."""
    d = UtilizationDetector("u", PluginHandle(), own_load_staleness=1.0)
    ep = _scraped(waiting=0, running=0, kv=0.05, own_requests=0, own_decoding=0)  # idle page at t=0
    ep.inflight.requests += 20  # sent right after it, 100 tokens each, none started
    ep.inflight.sent_tokens += 2_000
    assert d.endpoint_saturation(ep, 0.3) == pytest.approx(4.0)
    assert d.endpoint_saturation(ep, 0.15) == pytest.approx(4.0)
    assert d.endpoint_saturation(ep, 0.0) == pytest.approx(4.0)


def test_an_unchanged_endpoint_keeps_its_score_when_the_page_ages() -> None:
    """s8-sat B3: 10 of its own requests there, all past their first token; the page shows 6 waiting
    (preempted, or someone else's behind its own finished but still relaying) and 4 running. Failed
    before: the carried queue was clamped to its own requests without a first token (0), so the score
    fell from 1.2 to 0.625 when the page turned 0.2 s old, with nothing changed."""
    d = UtilizationDetector("u", PluginHandle(), own_load_staleness=1.0)
    ep = _scraped(waiting=6, running=4, kv=0.5, own_requests=10, own_decoding=10)
    for age in (0.0, 0.1, 0.2, 0.3, 0.9):
        assert d.endpoint_saturation(ep, age) == pytest.approx(6 / 5)
    assert d.endpoint_saturation(ep, 1.01) == 1.0


def test_a_running_total_that_went_back_is_not_read_as_nothing_sent() -> None:
    """s8-sat B5 (the detector's side): a total below the one beside the page is unknown: the
    reference rule (the page while fresh, saturated after)."""
    d = UtilizationDetector("u", PluginHandle(), own_load_staleness=1.0)
    ep = _scraped(waiting=0, running=0, kv=0.05, own_requests=0, own_decoding=0)
    ep.inflight.sent_tokens -= 1
    assert d.endpoint_saturation(ep, 0.1) == pytest.approx(0.05 / 0.8)
    assert d.endpoint_saturation(ep, 0.3) == 1.0


def test_a_worker_restart_does_not_hide_the_tokens_sent_since_the_page() -> None:
    """s8-sat B5, through the ``--workers`` shared table. Failed before: the supervisor zeroed a
    restarted worker's row, its lifetime total of tokens sent left every other worker's
    ``sent_tokens``, and the 6,000 tokens sent after it (73 % of the cache) added nothing (0.0625)."""
    lock = multiprocessing.get_context("spawn").Lock()
    owner = SharedInFlight.create(2, lock, 16)
    w0 = SharedInFlight.attach(owner.name, lock, 2, 0, 16)
    w1 = SharedInFlight.attach(owner.name, lock, 2, 1, 16)
    w1b = None
    try:
        a0 = _scraped(waiting=0, running=0, kv=0.05, own_requests=0, own_decoding=0, sent_tokens=0)
        a1 = Endpoint("a:1")  # worker 1's
        a1.inflight.sent_tokens = 500_000
        w1.sync([a1])
        w0.sync([a0])
        assert a0.inflight.sent_tokens == 500_000
        a0.metrics.own_sent_tokens = a0.inflight.sent_tokens  # worker 0 scrapes: an idle page at t=0
        owner.clear_row(1)  # worker 1 dies; the supervisor clears its row before starting it again
        a0.inflight.sent_tokens += 6_000  # worker 0 dispatches 73 % of the 8,192-token cache
        w0.sync([a0])
        d = UtilizationDetector("u", PluginHandle(), own_load_staleness=1.0)
        want = (0.05 + 6_000 / 8_192) / 0.8
        assert d.endpoint_saturation(a0, 0.3) >= want - 1e-9
        # The restarted worker 1 (a fresh process: a fresh view and InFlight) continues its total.
        w1b = SharedInFlight.attach(owner.name, lock, 2, 1, 16)
        fresh = Endpoint("a:1")
        fresh.inflight.sent_tokens = 100
        w1b.sync([fresh])
        assert fresh.inflight.sent_tokens == 506_100
        w0.sync([a0])
        assert a0.inflight.sent_tokens == 506_100
        # The endpoint removed from worker 0's store and added again: a fresh InFlight, same total.
        again = Endpoint("a:1")
        again.inflight.sent_tokens = 10
        w0.sync([again])
        assert again.inflight.sent_tokens == 506_110
    finally:
        for v in (w0, w1, w1b):
            if v is not None:
                v.close()
        owner.close()
