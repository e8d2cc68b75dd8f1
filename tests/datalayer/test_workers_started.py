"""``--workers``: the first tokens the utilization detector's carry-forward counts are the fleet's
(``InFlight.started`` in the shared in-flight table, review s8-final-c C2).

Two workers' views of one real ``SharedInFlight`` table, each with its own store and ``Director`` (the
accounting ``kvgate serve`` does per worker), worker 0's ``MetricsScraper`` against a real page, and
the kvgate policy's detector (``ownLoadStalenessThreshold`` 1 s) in worker 0. Every request is worker 1's.
"""

from __future__ import annotations

import multiprocessing

import pytest

from kvgate.config.director import build_director
from kvgate.datalayer.endpoint import Endpoint
from kvgate.datalayer.store import EndpointStore, make_endpoint
from kvgate.flowcontrol.saturation import UtilizationDetector
from kvgate.gateway.shared_inflight import SharedInFlight
from kvgate.requestcontrol.director import Director
from kvgate.scheduling.framework import PluginHandle
from kvgate.scheduling.types import InferenceRequest

from ._metrics_page import PAGE, Server, kvgate_detector, scrape_once


class _Fleet:
    """Two workers on one shared table; worker 1's requests go through its own Director."""

    def __init__(self, address: str) -> None:
        lock = multiprocessing.get_context("spawn").Lock()
        self.owner = SharedInFlight.create(2, lock, 16)
        self.views = [SharedInFlight.attach(self.owner.name, lock, 2, w, 16) for w in range(2)]
        self.stores = [EndpointStore([make_endpoint(address)]) for _ in range(2)]
        self.eps: list[Endpoint] = []
        for st in self.stores:
            ep = st.get(address)
            assert ep is not None
            self.eps.append(ep)
        self.d1: Director = build_director("kvgate", self.stores[1], clock=lambda: 0.0)
        self.reqs: list[InferenceRequest] = []

    def sync(self) -> None:
        """Worker 1's sync task, then worker 0's (a fold: 5 ms apart in the gateway)."""
        self.views[1].sync([self.eps[1]])
        self.views[0].sync([self.eps[0]])

    def send(self, n: int) -> None:
        for _ in range(n):
            r = InferenceRequest(f"r{len(self.reqs)}", "m", prompt_tokens=60, max_tokens=40)
            self.reqs.append(r)
            self.d1.on_dispatched(r, self.eps[1])

    def start(self, rs: list[InferenceRequest]) -> None:
        for r in rs:
            self.d1.on_first_token(r, self.eps[1])

    def finish(self, rs: list[InferenceRequest]) -> None:
        for r in rs:
            self.d1.on_finished(r, self.eps[1], None, True)

    def close(self) -> None:
        for v in self.views:
            v.close()
        self.owner.close()


def _detectors() -> tuple[UtilizationDetector, UtilizationDetector]:
    return kvgate_detector(), UtilizationDetector("r", PluginHandle(), own_load_staleness=0.0)


async def test_another_workers_starts_during_the_get_are_not_hidden_by_its_finishes(server: Server) -> None:
    """Worker 1: 16 requests there, 5 decoding, 11 waiting. During worker 0's GET 6 of the waiting ones
    start and the 5 decoding ones and one of those finish (a fold lands): the page shows W=5, R=5. The
    carried queue must keep the page's 5 waiting (1.0, as the reference reads the page). Before the
    fix worker 0's ``started`` was its own (unchanged) and the net ``decoding`` change 0, so its
    ``own_pending`` stayed 11 and the queue read 5 + 5 - 11 -> 0: a saturated endpoint read free."""
    fleet = _Fleet(server.address)
    try:
        fleet.send(16)
        fleet.start(fleet.reqs[:5])
        fleet.sync()
        ep = fleet.eps[0]
        assert (ep.inflight.requests, ep.inflight.decoding) == (16, 5)

        def fold_during_get() -> None:
            fleet.start(fleet.reqs[5:11])
            fleet.finish(fleet.reqs[:6])
            fleet.sync()
            assert (ep.inflight.requests, ep.inflight.decoding) == (10, 5)  # net decoding unchanged

        server.during = fold_during_get
        server.page = lambda: PAGE % (5, 5, "0.20")
        await scrape_once(ep, fleet.stores[0])
        kvgate, ref = _detectors()
        assert ref.endpoint_saturation(ep, 0.01) == pytest.approx(1.0)
        score = kvgate.endpoint_saturation(ep, 0.01)
        assert score >= 1.0, f"fresh saturated page read {score:.3f} (own_pending {ep.metrics.own_pending})"
    finally:
        fleet.close()


async def test_another_workers_prefill_starts_after_the_page_do_not_empty_its_queue(server: Server) -> None:
    """The C1 rule across workers: worker 1's 2 requests in prefill on the page (R=2, none decoding) and
    5 waiting (W=5). After the page the 2 in prefill start: they were never in the page's waiting
    count, so the carried queue stays 5 (1.0). Before the fix worker 0 did not see those starts as
    starts, so it took them as 2 requests leaving the page's queue (3: 0.6)."""
    fleet = _Fleet(server.address)
    try:
        fleet.send(7)
        fleet.sync()
        ep = fleet.eps[0]
        server.page = lambda: PAGE % (5, 2, "0.10")
        await scrape_once(ep, fleet.stores[0])
        assert ep.metrics.own_prefill == 2
        fleet.start(fleet.reqs[:2])
        fleet.sync()
        kvgate, ref = _detectors()
        assert ref.endpoint_saturation(ep, 0.05) == pytest.approx(1.0)
        assert kvgate.endpoint_saturation(ep, 0.05) >= 1.0
    finally:
        fleet.close()
