"""Parked heads and the bands (review s20-fc M1, M5; fc20's parking, e85fc5e).

M1: a parked home is asked again when told (``freed``), by the sweep (once per recheck interval) or when a
head of the same (model, subset, band) is chosen. A home that frees with no signal in this process (its
scraped load falls, another --workers worker's request there ends) must still not go to a lower band before
the sweep: before a head is dispatched, the parked homes of higher bands where it could go are asked first
(``FlowController.parked_above``). M5: a parked lower-band head's home keeps only requests of its band or
lower off that endpoint (``FlowController.waited_for``), never a higher band's onto a full one. All fail on
e85fc5e..ab1ba7c (pass on 387aa1e). Pure, injected time; M5 on a real Director and concurrency detector."""

from __future__ import annotations

from flowcontrol.test_running_reserve import Clock, director
from kvgate.datalayer.endpoint import Endpoint
from kvgate.flowcontrol.config import FlowControlConfig
from kvgate.flowcontrol.controller import FlowController
from kvgate.flowcontrol.dispatcher import dispatch_ready
from kvgate.scheduling.types import InferenceRequest

A, B = "10.0.0.1:8000", "10.0.0.2:8000"


def req(
    rid: str, flow: str, home: str | None = None, priority: int = 0, soft: bool = False
) -> InferenceRequest:
    return InferenceRequest(
        rid, "m", prompt_tokens=10, max_tokens=4, fairness_id=flow,
        subset=None if home is None else frozenset({home}), subset_soft=soft, priority=priority,
    )  # fmt: skip


class OneSlotHome:
    """Home A holds ``free`` more requests; the rest of the pool holds ``room`` more."""

    def __init__(self, free: int, room: int) -> None:
        self.free, self.room = free, room

    def __call__(self, r: InferenceRequest) -> bool:
        if r.subset is not None:
            return self.free <= 0
        return self.room <= 0


def test_a_lower_band_pinned_request_does_not_take_the_home_a_parked_higher_band_head_waits_for() -> None:
    c = FlowController(FlowControlConfig())
    c.enqueue(req("high", "s1", A, priority=10), 0.0)
    gate = OneSlotHome(free=0, room=0)
    assert list(dispatch_ready(c, 1.0, gate)) == [] and c.parked == 1  # (high waits aside for A)
    gate.free = 1  # A frees a slot with no signal here (a scrape, another worker's request ending)
    c.enqueue(req("low", "s2", A, priority=0), 1.005)  # (5 ms later: before the 20 ms sweep)
    sent = []
    for item in dispatch_ready(c, 1.005, gate):
        sent.append(item.req.request_id)
        gate.free -= 1
    assert sent == ["high"], f"band 0 took the home band 10 waits for: sent {sent}"
    assert c.parked == 1  # (low waits aside for A now)


def test_a_lower_band_plain_request_does_not_take_the_only_room_a_parked_higher_band_head_waits_for() -> None:
    """One-endpoint pool (A): a band-0 plain request's gate reads A's room too."""
    c = FlowController(FlowControlConfig())
    c.enqueue(req("high", "s1", A, priority=10), 0.0)
    gate = OneSlotHome(free=0, room=0)
    assert list(dispatch_ready(c, 1.0, gate)) == []
    gate.free = gate.room = 1  # (A is the pool: one slot, seen by a scrape)
    c.enqueue(req("low", "s2", priority=0), 1.005)
    sent = []
    for item in dispatch_ready(c, 1.005, gate):
        sent.append(item.req.request_id)
        gate.free -= 1
        gate.room -= 1
    assert sent == ["high"], f"band 0 went first: {sent}"


def test_a_parked_home_of_a_higher_band_elsewhere_costs_a_lower_band_nothing() -> None:
    """The question is asked only of higher bands' homes where the request could go: band 0 pinned to B
    goes while band 10 waits for a full A (one question of A, found full, not asked again in the pass)."""
    c = FlowController(FlowControlConfig())
    c.enqueue(req("high", "s1", A, priority=10), 0.0)
    asked: list[str] = []

    def gate(r: InferenceRequest) -> bool:
        if r.subset is not None:
            asked.append(next(iter(r.subset)))
            return A in r.subset
        return True

    assert list(dispatch_ready(c, 1.0, gate)) == []
    c.enqueue(req("low", "s2", B, priority=0), 1.005)
    c.enqueue(req("low2", "s3", B, priority=0), 1.005)
    asked.clear()
    assert [i.req.request_id for i in dispatch_ready(c, 1.005, gate)] == ["low", "low2"]
    assert asked.count(A) == 0, asked


def scraped(a: Endpoint, b: Endpoint) -> None:
    """Fresh metrics (the Clock's time 0): B's waiting queue 1, A's 0."""
    for ep, waiting in ((a, 0), (b, 1)):
        ep.metrics.waiting_queue_size = waiting
        ep.metrics.updated_at = 0.0


def test_a_parked_lower_band_head_does_not_steer_a_higher_band_request_onto_a_full_endpoint() -> None:
    d = director([A, B], max_concurrency=1, max_pending=0, clock=Clock())
    assert d.flow is not None
    ctl = d.flow.ctl
    a, b = d.store.all()
    d.on_dispatched(req("busy-a", "x"), a)
    d.on_dispatched(req("busy-b", "x"), b)  # both full (maxConcurrency 1)
    scraped(a, b)  # (B's queue is the longer: the profile's pick is A, not a coin toss)
    ctl.enqueue(req("f", "t", home=A, priority=0, soft=True), 0.0)
    assert list(dispatch_ready(ctl, 0.0, d.saturated)) == [] and ctl.parked == 1
    # A's request ends where this process is not told (a scrape; another --workers worker): no notify.
    a.inflight.requests = 0
    a.inflight.decoding = 0
    ctl.enqueue(req("u", "v", priority=10), 0.001)  # a band-10 request, no subset
    sent = []
    for item in dispatch_ready(ctl, 0.001, d.saturated):
        got = d.flow.settle(item, 0.001)
        assert got is not None
        sent.append((item.req.request_id, got.primary.address))
    assert ("u", A) in sent, f"band 10 was kept off the free home for band 0's parked head: {sent}"


def test_a_parked_head_of_the_same_band_still_keeps_a_request_off_its_home() -> None:
    """What M5's fix keeps: a band-0 request going past band 0's parked follow-up is picked off its home
    when it has another endpoint with room."""
    d = director([A, B], max_concurrency=2, max_pending=0, clock=Clock())
    assert d.flow is not None
    ctl = d.flow.ctl
    a, b = d.store.all()
    d.on_dispatched(req("busy-a1", "x"), a)
    d.on_dispatched(req("busy-a2", "x"), a)  # A full
    scraped(a, b)  # (the profile alone would pick A)
    ctl.enqueue(req("f", "t", home=A, priority=0, soft=True), 0.0)
    assert list(dispatch_ready(ctl, 0.0, d.saturated)) == [] and ctl.parked == 1
    a.inflight.requests = 1  # (A has a slot again, untold)
    a.inflight.decoding = 1
    ctl.enqueue(req("u", "v", priority=0), 0.001)
    sent = []
    for item in dispatch_ready(ctl, 0.001, d.saturated):
        got = d.flow.settle(item, 0.001)
        assert got is not None
        sent.append((item.req.request_id, got.primary.address))
    assert ("u", B) in sent, sent
    assert ctl.waited_for(A, 0) and not ctl.waited_for(A, 1) and not ctl.waited_for(B, 0)
