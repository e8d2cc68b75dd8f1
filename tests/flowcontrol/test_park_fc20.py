"""fc20 (#15, closing note s19 "Flow control"): a queued head whose home is full (a Responses follow-up pinned
to its busy home, a subset hint) waits aside for that home (``FlowController.park``) until the home is found
with room: told by the Director where a request finished or produced its first token (``freed``), or by a
bounded sweep once per recheck interval. A pass no longer meets it: more than 1,024 such heads or 64 full
homes no longer end a pass (holding the band's other requests and every band below), and a pass's cost no
longer grows with them. A soft pin (a follow-up) is given up once its home has been without room for as
long as the request has left to wait (``unpin_at``): it is then picked as any request. Pure, injected time;
the Director ones on a real Director and concurrency-detector."""

from __future__ import annotations

from typing import Any

from flowcontrol.test_pass_over import drain
from flowcontrol.test_running_reserve import Clock, director
from kvgate.flowcontrol.config import FlowControlConfig
from kvgate.flowcontrol.controller import FlowController, unpin_at
from kvgate.flowcontrol.dispatcher import dispatch_ready
from kvgate.scheduling.types import InferenceRequest

A, B = "10.0.0.1:8000", "10.0.0.2:8000"


def req(
    rid: str, flow: str, home: str | None = None, priority: int = 0, soft: bool = False
) -> InferenceRequest:
    subset = None if home is None else frozenset({home})
    return InferenceRequest(
        rid, "m", prompt_tokens=10, max_tokens=4, fairness_id=flow, subset=subset, subset_soft=soft,
        priority=priority,
    )  # fmt: skip


class Gate:
    """Pinned requests: saturated while their home is in ``full``; the others while ``room`` is 0."""

    def __init__(self, full: set[str], room: int) -> None:
        self.full, self.room, self.calls = full, room, 0

    def __call__(self, r: InferenceRequest) -> bool:
        self.calls += 1
        if r.subset is not None:
            return bool(r.subset & self.full)
        return self.room <= 0


def test_thousands_of_heads_on_hundreds_of_full_homes_do_not_hold_the_bands_below() -> None:
    """Before: the pass ended past 64 full homes or 1,024 heads; the band's plain request and band 0 waited
    while the pool had room, pass after pass (fails on 387aa1e: [] each pass)."""
    c = FlowController(FlowControlConfig())
    for i in range(2000):
        c.enqueue(req(f"p{i}", f"s{i}", home=f"10.1.{i % 200}.1:8000", priority=10), 0.0)
    c.enqueue(req("u", "v", priority=10), 0.0)
    c.enqueue(req("low", "w", priority=0), 0.0)
    gate = Gate({f"10.1.{i}.1:8000" for i in range(200)}, room=2)
    assert drain(c, gate, 1.0) == ["u", "low"]
    assert c.parked == 2000 and len(c) == 2000
    # A later pass, nothing freed, no sweep due: it meets none of them (one gate call: band 10 is empty,
    # so nothing is asked; the pass ends at once).
    c.enqueue(req("late", "v", priority=10), 1.0)
    gate.calls = 0
    assert drain(c, gate, 1.0) == [] and gate.calls == 1  # (late: the pool is full now)


def test_a_home_told_of_a_freed_slot_sends_its_heads_first_in_their_order() -> None:
    c = FlowController(FlowControlConfig())
    c.enqueue(req("p1", "s1", home=A, priority=10), 0.0)
    c.enqueue(req("p2", "s2", home=A, priority=10), 0.0)
    c.enqueue(req("u", "v", priority=10), 0.0)
    c.enqueue(req("low", "w", priority=0), 0.0)
    gate = Gate({A}, room=1)
    assert drain(c, gate, 1.0) == ["u"]  # (p1, p2 aside; low waits: the pool is full again)
    gate.full.clear()
    gate.room = 1
    c.freed(A)
    # p1 and p2 (band 10) before low; then the pool's one slot to low.
    assert drain(c, gate, 1.0) == ["p1", "p2", "low"]


def test_a_held_back_pinned_head_whose_home_has_room_waits_as_any_head() -> None:
    """Its home has room (for a flow no rule holds back) but its own flow is held back: it waits as a
    plain head held back would, its band and the bands below with it; it is not parked."""
    c = FlowController(FlowControlConfig())
    c.enqueue(req("p", "flood", home=A, priority=10), 0.0)
    c.enqueue(req("low", "w", priority=0), 0.0)

    def saturated(r: InferenceRequest) -> bool:
        return r.fairness_id == "flood"

    assert [i.req.request_id for i in dispatch_ready(c, 1.0, saturated)] == []
    assert c.parked == 0 and c.head(1.0).req.request_id == "p"  # type: ignore[union-attr]


# -- a soft pin given up: its home without room for as long as the request has left to wait ----------------


def test_unpin_at_is_the_midpoint_of_the_spell_and_the_deadline() -> None:
    assert unpin_at(0.0, 30.0) == 15.0
    assert unpin_at(10.0, 30.0) == 20.0


def test_a_follow_up_whose_home_stays_full_is_picked_as_any_request_at_the_midpoint() -> None:
    """Before: held to its TTL (30 s), then 503 (fails on 387aa1e: still pinned at 15 s)."""
    c = FlowController(FlowControlConfig(ttl=30.0))
    c.enqueue(req("f", "t", home=A, soft=True), 0.0)
    gate = Gate({A}, room=0)
    assert drain(c, gate, 0.0) == [] and c.parked == 1
    assert c.next_deadline() == 15.0  # (the dispatcher's next pass comes then at the latest)
    gate.room = 1
    assert drain(c, gate, 14.99) == []  # (the pool has room; its home has not: it waits aside)
    assert drain(c, gate, 15.0) == ["f"]
    assert c.parked == 0 and c.passed_homes == frozenset()


def test_a_hint_is_never_given_up() -> None:
    """A subset hint (GIE's, not soft) is the request's own constraint: it waits for its subset to its TTL."""
    c = FlowController(FlowControlConfig(ttl=30.0))
    c.enqueue(req("h", "t", home=A), 0.0)
    gate = Gate({A}, room=1)
    assert drain(c, gate, 0.0) == []
    assert drain(c, gate, 29.0) == [] and c.parked == 1
    assert [i.req.request_id for i in c.expire(30.0)] == ["h"]


def test_the_request_deadline_counts_and_a_slot_another_took_does_not_restart_the_spell() -> None:
    """Review s20-fc M2: a home that frees a slot now and then for one of its waiting heads no longer
    restarts every other head's spell (before: f2, parked again in the pass at 8 s, was given up at 19 s;
    with a slot every few seconds, never)."""
    c = FlowController(FlowControlConfig(ttl=30.0))
    c.enqueue(req("f1", "t1", home=A, soft=True), 0.0, bound=20.0)  # its requestTimeoutSeconds: 20 s
    c.enqueue(req("f2", "t2", home=A, soft=True), 0.0)
    gate = Gate({A}, room=0)
    assert drain(c, gate, 0.0) == [] and c.parked == 2
    gate.full.clear()
    c.freed(A)
    it = dispatch_ready(c, 8.0, gate)
    assert next(it).req.request_id == "f1"  # (one slot at its home; then full again)
    gate.full.add(A)
    assert list(it) == [] and c.parked == 1  # f2 aside again, its spell from 0 s: given up at 15 s
    assert c.next_deadline() == 15.0
    gate.room = 1
    assert drain(c, gate, 14.99) == []
    assert drain(c, gate, 15.0) == ["f2"]


def test_a_head_back_in_line_and_not_parked_again_in_that_pass_starts_a_new_spell() -> None:
    c = FlowController(FlowControlConfig(ttl=30.0))
    c.enqueue(req("f", "t", home=A, soft=True), 0.0)
    gate = Gate({A}, room=0)
    assert drain(c, gate, 0.0) == [] and c.parked == 1
    c.enqueue(req("u", "v", priority=10), 8.0)  # (band 10 waits for the pool: the pass ends there)
    gate.full.clear()
    c.freed(A)
    assert drain(c, gate, 8.0) == [] and c.parked == 0  # (f back in line behind band 10)
    gate.full.add(A)
    gate.room = 1
    assert drain(c, gate, 9.0) == ["u"] and c.parked == 1  # (f found its home full again: from 9 s)
    assert c.next_deadline() == 19.5
    gate.room = 1
    assert drain(c, gate, 15.0) == []
    assert drain(c, gate, 19.5) == ["f"]


def test_a_cancelled_or_expired_parked_request_leaves_no_trace() -> None:
    c = FlowController(FlowControlConfig(ttl=30.0))
    f = c.enqueue(req("f", "t", home=A, soft=True), 0.0)
    c.enqueue(req("g", "u", home=B, soft=True), 0.0)
    gate = Gate({A, B}, room=0)
    assert drain(c, gate, 0.0) == [] and c.parked == 2
    assert c.cancel(f, 1.0)
    assert c.parked == 1 and set(c.passed_homes) == {B}
    assert [i.req.request_id for i in c.expire(30.0)] == ["g"]
    assert c.parked == 0 and c.passed_homes == frozenset() and len(c) == 0
    assert c.next_deadline() is None


# -- through a real Director: the finish at the home tells the queue --------------------------------------


def two_endpoints(**fc: Any) -> Any:
    d = director([A, B], max_concurrency=1, max_pending=0, flow_control=fc or {}, clock=Clock())
    assert d.flow is not None
    return d


def test_a_finish_at_the_home_sends_its_follow_up_there_before_a_lower_band() -> None:
    d = two_endpoints()
    ctl = d.flow.ctl
    a, b = d.store.all()
    busy = req("busy", "x")
    d.on_dispatched(busy, a)  # a full (maxConcurrency 1)
    d.on_dispatched(req("busy2", "x"), b)  # b full
    ctl.enqueue(req("f", "t", home=A, priority=10, soft=True), 0.0)
    ctl.enqueue(req("low", "w", priority=0), 0.0)
    assert [i.req.request_id for i in dispatch_ready(ctl, 0.0, d.saturated)] == []
    assert ctl.parked == 1
    d.on_finished(busy, a, None, True)  # a frees: the Director tells the queue where
    sent = []
    for item in dispatch_ready(ctl, 0.0, d.saturated):
        got = d.flow.settle(item, 0.0)
        sent.append((item.req.request_id, got.primary.address))  # type: ignore[union-attr]
    assert sent == [("f", A)]


def test_a_follow_up_given_up_is_picked_elsewhere() -> None:
    d = two_endpoints()
    ctl = d.flow.ctl
    a, _b = d.store.all()
    d.on_dispatched(req("busy", "x"), a)  # its home a stays full; b free
    ctl.enqueue(req("f", "t", home=A, soft=True), 0.0)
    assert [i.req.request_id for i in dispatch_ready(ctl, 0.0, d.saturated)] == []
    assert ctl.parked == 1
    d.clock.now = 15.0  # type: ignore[attr-defined]
    for ep, waiting in ((a, 1), (_b, 0)):  # (scraped: a's queue the longer; else the pick is a coin toss)
        ep.metrics.waiting_queue_size = waiting
        ep.metrics.updated_at = 15.0
    sent = []
    for item in dispatch_ready(ctl, 15.0, d.saturated):
        got = d.flow.settle(item, 15.0)
        sent.append((item.req.request_id, got.primary.address))  # type: ignore[union-attr]
    assert sent == [("f", B)]


def test_a_head_pinned_to_a_parked_home_never_goes_before_the_heads_parked_there() -> None:
    """The home freed with nothing told and no sweep due: a head pinned there, chosen, has its home asked
    first; with room, the heads parked there are back in their places and go first."""
    c = FlowController(FlowControlConfig(fairness="global-strict"))
    c.enqueue(req("p", "t1", home=A), 0.0)
    gate = Gate({A}, room=0)
    assert drain(c, gate, 1.0) == [] and c.parked == 1
    gate.full.clear()  # (untold)
    c.enqueue(req("s", "t2", home=A), 1.0)
    assert drain(c, gate, 1.0) == ["p", "s"]


def test_with_preemption_a_parked_head_is_tried_again_at_each_sweep() -> None:
    """``flowControl.preemption``: a home full of sheddable work has no room to be found; a parked head of a
    band that may preempt is tried again as a head at each sweep (it may stop one there), its spell kept."""
    c = FlowController(FlowControlConfig(ttl=30.0))
    c.enqueue(req("f", "t", home=A, priority=10, soft=True), 0.0)
    gate = Gate({A}, room=0)
    stop = False

    def preempt(_r: InferenceRequest) -> bool:
        return stop

    assert [i.req.request_id for i in dispatch_ready(c, 0.0, gate, preempt)] == [] and c.parked == 1
    assert [i.req.request_id for i in dispatch_ready(c, c.sweep_every, gate, preempt)] == []
    assert c.parked == 1 and c.next_deadline() == 15.0  # (parked again; its spell from 0 s)
    stop = True
    assert [i.req.request_id for i in dispatch_ready(c, 2 * c.sweep_every, gate, preempt)] == ["f"]
