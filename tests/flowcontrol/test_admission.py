"""The async admission queue: priority bands, fairness between flows, TTL, capacity, cancellation."""

from __future__ import annotations

import asyncio

import pytest

from kvgate.config.director import build_director
from kvgate.datalayer.endpoint import Endpoint, EndpointMetrics
from kvgate.datalayer.store import EndpointStore
from kvgate.requestcontrol.admission import AdmissionQueue
from kvgate.scheduling.types import InferenceRequest, NoCapacityError, PickResult, ShedError


def _setup(**kw: float) -> tuple[EndpointStore, AdmissionQueue]:
    store = EndpointStore([Endpoint("a:1", metrics=EndpointMetrics(waiting_queue_size=10, updated_at=0.0))])
    d = build_director("least-request", store, clock=lambda: 0.0)
    return store, AdmissionQueue(d, **kw)  # type: ignore[arg-type]


def _req(rid: str, prio: int = 0, flow: str = "f") -> InferenceRequest:
    return InferenceRequest(rid, "m", prompt_text="hi", priority=prio, fairness_id=flow)


def _unsaturate(store: EndpointStore) -> None:
    for ep in store.all():
        ep.metrics.waiting_queue_size = 0


async def test_passes_through_when_not_saturated() -> None:
    store, q = _setup()
    _unsaturate(store)
    assert (await q.admit(_req("x"))).primary.address == "a:1"
    assert len(q) == 0


async def test_priority_then_fairness_order() -> None:
    store, q = _setup()
    order: list[str] = []

    def track(rid: str, prio: int, flow: str) -> asyncio.Task[PickResult]:
        t = asyncio.ensure_future(q.admit(_req(rid, prio, flow)))
        t.add_done_callback(lambda _t: order.append(rid))
        return t

    tasks = [
        track("a1", 0, "A"),
        track("a2", 0, "A"),
        track("a3", 0, "A"),
        track("b1", 0, "B"),
        track("hi", 5, "C"),
    ]
    await asyncio.sleep(0.05)
    assert len(q) == 5 and not order  # all held while saturated
    _unsaturate(store)
    q.notify()
    await asyncio.gather(*tasks)
    assert order == ["hi", "a1", "b1", "a2", "a3"]


async def test_sheddable_rejected_not_queued_and_capacity() -> None:
    _store, q = _setup(max_queued=1)
    with pytest.raises(ShedError):
        await q.admit(_req("s", -1))
    held = asyncio.ensure_future(q.admit(_req("n1")))
    await asyncio.sleep(0.01)
    with pytest.raises(ShedError, match="full"):
        await q.admit(_req("n2"))
    held.cancel()
    with pytest.raises(asyncio.CancelledError):
        await held
    assert len(q) == 0


async def test_ttl_expiry_is_503() -> None:
    _store, q = _setup(ttl=0.05, recheck_interval=0.01)
    with pytest.raises(NoCapacityError, match="TTL"):
        await q.admit(_req("late"))
    assert len(q) == 0
