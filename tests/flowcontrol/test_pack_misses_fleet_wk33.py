"""``flowControl.packCertainMisses`` under ``kvgate serve --workers N`` (wk32's finding, wk33): the certain
misses pending at an endpoint are the fleet's, shared through the in-flight table
(``gateway.shared_inflight``) with the pending count the late pick compares them with. Before, each
worker's Director counted only its own (``Director._misses``) against the fleet's pending count, so a
worker never packed a certain miss onto an endpoint whose pending request was the other worker's.

Two Directors over two stores of the same addresses, each with its worker's view of one real
shared-memory table, synced by hand (the workers' 5 ms loop, ``gateway.workers._share_inflight``): no
processes, no clock, no ports."""

from __future__ import annotations

import contextlib
import multiprocessing
from collections.abc import Iterator
from typing import Any

import pytest

from kvgate.config.director import build_director
from kvgate.datalayer.store import EndpointStore
from kvgate.gateway import shared_inflight
from kvgate.gateway.shared_inflight import SharedInFlight
from kvgate.requestcontrol.director import Director
from kvgate.scheduling.types import InferenceRequest

ADDRS = ["10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000"]


def _director(max_pending: int = 2) -> Director:
    cfg: dict[str, Any] = {
        "featureGates": ["flowControl"],
        "flowControl": {
            "fairShareHeadroom": 0.5,
            "fairShareHeadroomOn": "pending",
            "orderingPolicy": "slo-feasible",
            "packCertainMisses": True,
        },
        "saturationDetector": {
            "type": "concurrency-detector",
            "parameters": {"maxConcurrency": 8, "maxPendingRequests": max_pending},
        },
        "plugins": [{"type": "active-request-scorer"}],
        "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": "active-request-scorer"}]}],
    }
    return build_director(cfg, EndpointStore.from_addresses(ADDRS), flow_metrics=False)


def _held(d: Director, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every request held back by the headroom, and (arrival -5 s, SLO 2 s, service 1 s) a certain miss."""
    assert d.flow is not None
    monkeypatch.setattr(d.flow.ctl, "held_back", lambda req, now=None, slo_deadline=None: True)
    d.flow.ctl.service_ttft = 1.0


def _req(rid: str, seqs: int = 1) -> InferenceRequest:
    return InferenceRequest(rid, "m", prompt_tokens=10, max_tokens=4, arrival_time=-5.0, sequences=seqs)


@contextlib.contextmanager
def _table(workers: int = 2) -> Iterator[tuple[SharedInFlight, list[SharedInFlight]]]:
    lock = multiprocessing.get_context("spawn").Lock()
    owner = SharedInFlight.create(workers, lock, 16)
    views = [SharedInFlight.attach(owner.name, lock, workers, w, 16) for w in range(workers)]
    try:
        yield owner, views
    finally:
        for v in views:
            v.close()
        owner.close()


def _sync(views: list[SharedInFlight], directors: list[Director]) -> None:
    for _ in range(2):  # (each worker publishes, then each folds the other's)
        for v, d in zip(views, directors, strict=True):
            v.sync(d.store.all())


def test_a_worker_packs_its_certain_miss_onto_the_other_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    with _table() as (_owner, views):
        d0, d1 = _director(), _director()
        _held(d0, monkeypatch)
        _held(d1, monkeypatch)
        first = d0._pick_late(_req("m1"), False).primary  # worker 0: a certain miss, nothing pending anywhere
        _sync(views, [d0, d1])
        there = d1.store.get(first.address)
        assert there is not None and (there.inflight.requests, there.inflight.decoding) == (1, 0)
        # Worker 1's certain miss: the one endpoint whose pending requests are all certain misses is the
        # one worker 0 sent to (the active-request scorer alone would pick an idle one; before, worker 1
        # counted no miss there and did).
        second = d1._pick_late(_req("m2"), False).primary
        assert second is there
        assert there.inflight.certain_misses == 2
        _sync(views, [d0, d1])
        assert first.inflight.certain_misses == 2  # worker 0 sees worker 1's too
        # Worker 0's miss starts: off the fleet's count; worker 1's ends before its first token: off too.
        d0.on_first_token(_req("m1"), first, learn=False)
        _sync(views, [d0, d1])
        assert (first.inflight.certain_misses, there.inflight.certain_misses) == (1, 1)
        d1.on_finished(_req("m2"), there, None, False)
        _sync(views, [d0, d1])
        assert (first.inflight.certain_misses, there.inflight.certain_misses) == (0, 0)


def test_a_dead_workers_certain_misses_leave_the_fleets_count(monkeypatch: pytest.MonkeyPatch) -> None:
    # Not a running total: the supervisor's ``clear_row`` at a worker's death zeroes it (its requests died).
    assert "certain_misses" in shared_inflight.FIELDS
    assert shared_inflight.FIELDS.index("certain_misses") not in shared_inflight._TOTALS
    with _table() as (owner, views):
        d0, d1 = _director(), _director()
        _held(d0, monkeypatch)
        first = d0._pick_late(_req("m1"), False).primary
        _sync(views, [d0, d1])
        there = d1.store.get(first.address)
        assert there is not None and there.inflight.certain_misses == 1
        owner.clear_row(0)
        views[1].sync(d1.store.all())
        assert there.inflight.certain_misses == 0


def test_a_certain_miss_of_several_sequences_counts_each(monkeypatch: pytest.MonkeyPatch) -> None:
    # The pending count it is compared with counts sequences (``InFlight``): a 2-sequence miss pending
    # alone is "all certain misses" (before, it counted 1 against 2 pending and never was).
    d = _director(max_pending=4)
    _held(d, monkeypatch)
    first = d._pick_late(_req("n2", seqs=2), False).primary
    assert d._pick_late(_req("m"), False).primary is first  # (the scorer alone: an idle endpoint)
    assert first.inflight.certain_misses == 3
