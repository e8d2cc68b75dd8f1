"""qa35a F1, the store's part: an address removed while this picker's requests run there keeps their
``InFlight`` until they finish; back meanwhile, its new endpoint takes it over. Bounded (an idle one goes
at the next removal), never below zero, and ``--workers``' shared table keeps a worker's own count across
the flap. The doors' view (discovery's remove and re-add under flow control's gate) is
tests/k8s/test_inflight_across_flap_qa35a.py."""

from __future__ import annotations

import contextlib
import multiprocessing
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

from kvgate.config.director import build_director
from kvgate.datalayer.store import EndpointStore, make_endpoint
from kvgate.gateway.shared_inflight import SharedInFlight
from kvgate.gateway.workers import _accounted
from kvgate.requestcontrol import director as director_mod
from kvgate.scheduling.types import InferenceRequest

CFG: dict[str, Any] = {
    "featureGates": ["flowControl"],
    "saturationDetector": {"type": "concurrency-detector", "parameters": {"maxConcurrency": 2}},
    "plugins": [{"type": "queue-scorer"}],
    "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": "queue-scorer"}]}],
}
A, B = "10.0.0.1:8000", "10.0.0.2:8000"


def _req(rid: str) -> InferenceRequest:
    return InferenceRequest(rid, "m", prompt_tokens=10, max_tokens=100)


def test_a_returned_address_counts_the_old_requests_down_to_zero_never_below() -> None:
    store = EndpointStore.from_addresses([A])
    d = build_director(CFG, store, flow_metrics=False)
    old = store.get(A)
    assert old is not None
    r1, r2 = _req("r1"), _req("r2")
    for r in (r1, r2):
        d.on_dispatched(r, old)
    store.remove(A)
    new = store.add(make_endpoint(A))
    assert new is not old and new.inflight.requests == 2 and new.inflight.calls == 2
    r3 = _req("r3")
    d.on_dispatched(r3, new)
    assert new.inflight.requests == 3
    d.on_finished(r1, old, None, True)
    d.on_finished(r1, old, None, True)  # (a repeat finds no track: no second count down)
    d.on_finished(r2, old, None, True)
    assert new.inflight.requests == 1  # r3 alone: never below what still runs
    d.on_finished(r3, new, None, True)
    assert (new.inflight.requests, new.inflight.calls, new.inflight.pending_decode_tokens) == (0, 0, 0)


def test_departed_entries_are_bounded_and_an_idle_one_is_not_taken_over() -> None:
    store = EndpointStore.from_addresses([A, B])
    d = build_director(CFG, store, flow_metrics=False)
    a = store.get(A)
    assert a is not None
    r = _req("r")
    d.on_dispatched(r, a)
    store.remove(B)  # idle: nothing kept
    assert store.departed() == ()
    store.remove(A)
    assert store.departed() == (a,) and store.departed(A) == (a,) and store.departed(B) == ()
    d.on_finished(r, a, None, True)
    assert store.add(make_endpoint(A)).inflight is not a.inflight  # idle by its return: a fresh one
    store.remove(A)
    store.add(make_endpoint(B))
    store.remove(B)  # a remove prunes the idle ones before it keeps any
    assert store.departed() == ()


def test_a_forgotten_track_of_a_gone_address_is_released_there(monkeypatch: Any) -> None:
    """The leak guard (``MAX_TRACKED``) undoes a forgotten request's counts on the departed endpoint too,
    so its entry can go."""
    monkeypatch.setattr(director_mod, "MAX_TRACKED", 1)
    store = EndpointStore.from_addresses([A, B])
    d = build_director(CFG, store, flow_metrics=False)
    a, b = store.get(A), store.get(B)
    assert a is not None and b is not None
    d.on_dispatched(_req("leaked"), a)
    store.remove(A)
    d.on_dispatched(_req("next"), b)  # forgets "leaked"
    assert a.inflight.requests == 0
    store.remove(B)
    assert store.departed() == (b,)


@contextlib.contextmanager
def _views() -> Iterator[tuple[SharedInFlight, SharedInFlight]]:
    lock = multiprocessing.get_context("spawn").Lock()
    owner = SharedInFlight.create(2, lock, 16)
    views = [SharedInFlight.attach(owner.name, lock, 2, w, 16) for w in range(2)]
    try:
        yield views[0], views[1]
    finally:
        for v in views:
            v.close()
        owner.close()


def test_workers_keep_a_workers_count_across_the_flap_and_see_it_end_while_gone() -> None:
    """Worker 0 runs 2 requests at A; A leaves worker 0's store and comes back. Worker 1 still sees them
    (before: the fresh ``InFlight`` reset worker 0's row to 0); and a finish while A is gone reaches
    worker 1 (the departed endpoint is still synced)."""
    store = EndpointStore.from_addresses([A])
    d = build_director(CFG, store, flow_metrics=False)
    pool = SimpleNamespace(endpoints=store.all, store=store)
    theirs = make_endpoint(A)
    with _views() as (w0, w1):
        mine = store.get(A)
        assert mine is not None
        r1, r2 = _req("r1"), _req("r2")
        for r in (r1, r2):
            d.on_dispatched(r, mine)
        w0.sync(_accounted(pool))
        w1.sync([theirs])
        assert theirs.inflight.requests == 2
        store.remove(A)
        d.on_finished(r1, mine, None, True)
        w0.sync(_accounted(pool))
        w1.sync([theirs])
        assert theirs.inflight.requests == 1  # finished while gone: seen
        store.add(make_endpoint(A))
        w0.sync(_accounted(pool))
        w1.sync([theirs])
        assert theirs.inflight.requests == 1  # back: the one still running still counts
        d.on_finished(r2, mine, None, True)
        w0.sync(_accounted(pool))
        w1.sync([theirs])
        assert theirs.inflight.requests == 0
