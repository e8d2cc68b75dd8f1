"""Review s8-final-a: the detector and flow-control side (the reviewer's tests, moved here)."""

from __future__ import annotations

import math
import multiprocessing

import pytest

from kvgate.config.director import build_director
from kvgate.datalayer.endpoint import Endpoint, EndpointMetrics
from kvgate.datalayer.scraper import quiet_interval_for
from kvgate.datalayer.store import EndpointStore, make_endpoint
from kvgate.flowcontrol.controller import free_slots
from kvgate.flowcontrol.saturation import UtilizationDetector
from kvgate.gateway.shared_inflight import SharedInFlight
from kvgate.scheduling.framework import PluginHandle

# test_final_a_reference_cadence.py (review s8-final-a)
# F2: a reference-shaped config without any new key, whose saturation detector is the reference's
# ``concurrency-detector`` (scheduling.md: in-flight requests / tokens), gets the scraper's 0.5 s quiet
# cadence: ``Director.scrape_bound`` is inf for a detector that reads no page, so ``quiet_interval_for``
# gives ``QUIET_S``. At ebf64c8 every quiet endpoint was re-scraped every 0.1 s
# (``quiet_interval_for(0.05)`` = min(2 x 0.05, 0.1)). The reference scorers of such a config
# (queue-scorer, kv-cache-utilization-scorer, the prefix filter's overload check) read the page
# verbatim, so they now route on pages up to 0.5 s (+ the GET) old instead of 0.1 s for an endpoint
# only this gateway loads. 170627b restored 0.1 s only for the utilization detector.
REFERENCE_WITH_CONCURRENCY = {
    "plugins": [
        {"type": "queue-scorer"},
        {"type": "kv-cache-utilization-scorer"},
        {"type": "prefix-cache-scorer"},
    ],
    "schedulingProfiles": [
        {
            "name": "default",
            "plugins": [
                {"pluginRef": "queue-scorer", "weight": 2},
                {"pluginRef": "kv-cache-utilization-scorer", "weight": 2},
                {"pluginRef": "prefix-cache-scorer", "weight": 3},
            ],
        }
    ],
    "saturationDetector": {"type": "concurrency-detector"},
}


def test_reference_config_with_concurrency_detector_keeps_the_0_1_s_quiet_cadence() -> None:
    store = EndpointStore([make_endpoint("a:1")])
    d = build_director(REFERENCE_WITH_CONCURRENCY, store)
    # ebf64c8: quiet_interval_for(0.05) == 0.1 for every pool.
    assert quiet_interval_for(0.05, d.scrape_bound()) == pytest.approx(0.1)


# test_final_a_restarted_worker_first_page.py (review s8-final-a)
# F4 (--workers): a restarted worker (or an endpoint removed from and re-added to a worker's store)
# starts with a fresh ``InFlight`` (sent_tokens 0). Its scraper starts with the server, before the
# worker's first ``SharedInFlight.sync`` (workers.py: ``_share_inflight`` is created after
# ``server.start``), so the first page's ``own_sent_tokens`` is 0. The first fold then sets
# ``sent_tokens`` to the fleet's lifetime total (4a61b31 keeps the restarted row's total too), and the
# detector takes all of it as "sent since the page": an idle endpoint reads saturated in that worker
# until its next scrape (an idle page is explained: the 0.5 s quiet pause under the kvgate policy). The
# worker sheds every sheddable request and its flow control holds every request meanwhile. The
# snapshot should be taken on the fleet's total (fold first), or a fresh view should treat its first
# fold's jump as "before the page".
ADDR = "10.0.0.1:8000"


def _idle_page(ep: Endpoint) -> None:
    """What MetricsScraper.scrape leaves after an idle page at t=0 (own load read before the GET)."""
    inf = ep.inflight
    ep.metrics = EndpointMetrics(
        waiting_queue_size=0,
        running_requests=0,
        kv_cache_usage=0.05,
        block_size=128,
        num_gpu_blocks=64,
        updated_at=0.0,
        own_explained=True,
        own_pending=max(0, inf.requests - inf.decoding),
        own_sent_tokens=inf.sent_tokens - inf.unstarted_tokens,
    )


def test_a_restarted_worker_does_not_read_an_idle_endpoint_as_saturated() -> None:
    lock = multiprocessing.get_context("spawn").Lock()
    owner = SharedInFlight.create(2, lock, 16)
    w0 = SharedInFlight.attach(owner.name, lock, 2, 0, 16)
    w1 = SharedInFlight.attach(owner.name, lock, 2, 1, 16)
    views = [w0, w1]
    try:
        a0, a1 = Endpoint(ADDR), Endpoint(ADDR)
        a0.inflight.sent_tokens = 300_000  # what each worker sent there in its life (all finished)
        a1.inflight.sent_tokens = 200_000
        w0.sync([a0])
        w1.sync([a1])
        # Worker 1 dies; the supervisor clears its row and starts a new process.
        owner.clear_row(1)
        w1.close()
        views.remove(w1)
        w1b = SharedInFlight.attach(owner.name, lock, 2, 1, 16)
        views.append(w1b)
        b1 = Endpoint(ADDR)  # the new process's endpoint: a fresh InFlight
        _idle_page(b1)  # its scraper's first page, before the worker's first fold
        w1b.sync([b1])  # the sync task's first pass, 5 ms later
        assert b1.inflight.requests == 0 and b1.inflight.unstarted_tokens == 0  # nothing in flight
        d = UtilizationDetector("u", PluginHandle(), own_load_staleness=1.0)
        score = d.endpoint_saturation(b1, 0.05)
        # Idle: 0.05 / 0.8 = 0.0625. main: (0.05 + 500,000 / 8,192) / 0.8 = 76.4.
        assert score < 1.0, f"idle endpoint scored {score:.1f} in the restarted worker"
    finally:
        for v in views:
            v.close()
        owner.close()


# test_final_a_erlang_nan.py (review s8-final-a)
# F6 (nit): c7e7b07's guard in ``erlang_b_servers`` says "not a load: fail toward the reserve, not away
# from it", but a NaN load returns 0 (``nan > 0`` is False): no reserve at all, less than the 1 it
# returned before the guard. inf and negative loads are handled as the comment says.
# (Session 10: the reserve is sized by ``free_slots`` now, the Erlang functions are gone; the same rule
# holds for its rates: a rate that is not one fails toward the reserve.)
def test_a_nan_load_fails_toward_the_reserve() -> None:
    assert free_slots(math.inf, 10.0, 0.05, 12) == 12
    assert free_slots(1.0, math.nan, 0.05, 12) == 12
