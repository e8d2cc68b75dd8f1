"""Review s25-rev-fc25 (F1-F3): ``slo-feasible``'s aging bound per request, inside a flow as across flows
and bands. A request past its SLO deadline (a certain miss) gives way until its aging time
(``controller.aging_time``), then its flow ranks at its band's priority, and inside its flow it goes
before the flow's other overdue requests, by aging time (``FlowQueue.dead`` keyed by it), never before a
request that can still make its SLO (review s25-rev-fixfc25 F1: fixfc25 sent it before those too, and under
sustained overload in one flow almost every hit became a miss). No process is started; time is injected.
Each test fails on main d7350194's src (fc25's rule) or 29f4ddf8's (fixfc25's); on 0cfe18cf (before fc25)
the overload one passed (the regression)."""

from __future__ import annotations

from kvgate.flowcontrol.config import parse_flow_control
from kvgate.flowcontrol.controller import EVICTED_TTL, FlowController
from kvgate.flowcontrol.dispatcher import dispatch_ready
from kvgate.scheduling.types import InferenceRequest


def _ctl(ttl: float = 30.0, fairness: str = "least-attained-service") -> FlowController:
    cfg = {
        "fairnessPolicy": fairness, "orderingPolicy": "slo-feasible", "maxRequests": 1000,
        "defaultRequestTTL": f"{ttl:g}s",
    }  # fmt: skip
    return FlowController(parse_flow_control(cfg))


def _req(rid: str, flow: str | None, prio: int, slo_s: float, at: float) -> InferenceRequest:
    return InferenceRequest(
        rid, "m", prompt_tokens=10, max_tokens=100, fairness_id=flow, priority=prio,
        headers={"x-slo-ttft-ms": str(round(slo_s * 1000))}, arrival_time=at,
    )  # fmt: skip


def _one(ctl: FlowController, now: float) -> str | None:
    sent: list[str] = []
    for item in dispatch_ready(ctl, now, lambda _r: len(sent) >= 1):
        sent.append(item.req.request_id)
    return sent[0] if sent else None


def _drive(
    ctl: FlowController, target: str, fresh_flow: str | None, fresh_prio: int, stop: int = 80
) -> tuple[str, float]:
    """One slot per 0.5 s from 1.01 s, one fresh request (1 s SLO) arriving just before each until slot
    ``stop``, where one that is overdue on arrival (0.2 s SLO, nearer than the p90 when there is one)
    arrives instead and the arrivals end: when and how ``target`` leaves (sent, or its TTL)."""
    now = 0.0
    for i in range(80):
        now = 1.01 + 0.5 * i
        for it in ctl.expire(now):
            if it.req.request_id == target:
                return "ttl", now
        if i < stop:
            ctl.enqueue(_req(f"n{i}", fresh_flow, fresh_prio, 1.0, now), now)
        elif i == stop:
            ctl.enqueue(_req("overdue", fresh_flow, fresh_prio, 0.2, now), now)
        if _one(ctl, now) == target:
            return "sent", now
    return "queued", now


def test_aging_bounds_a_late_request_behind_other_flows_not_its_own_flows_fresh_arrivals() -> None:
    """F1 (s25-rev-fc25) and review s25-rev-fixfc25 F1. The same late request (1 s SLO, 30 s TTL: aging
    time 15.5 s), the same sustained fresh arrivals one per slot. In another flow: it is sent at the first
    slot past its aging time. In its own (no fairness id: every request in ``default-flow``) its flow's
    fresh requests, which can still make their SLO, go first: it is shed at its TTL (503), and when the
    flow has no fresh work it is sent at once, before the flow's other overdue request. fixfc25 (29f4ddf8)
    sent it at its aging time before the fresh ones; fc25 (d7350194) sent the overdue one first."""
    ctl = _ctl()
    ctl.enqueue(_req("old", "t1", 0, 1.0, 0.0), 0.0)
    assert _drive(ctl, "old", "t2", 0) == ("sent", 1.01 + 0.5 * 29)
    ctl = _ctl()
    old = ctl.enqueue(_req("old", None, 0, 1.0, 0.0), 0.0)
    assert _drive(ctl, "old", None, 0) == ("ttl", 1.01 + 0.5 * 58)
    assert old.outcome == EVICTED_TTL  # (answered 503)
    ctl = _ctl()
    ctl.service_ttft = 0.3  # (the dispatch -> first-token p90: "overdue" at 0.2 s SLO)
    ctl.enqueue(_req("old", None, 0, 1.0, 0.0), 0.0)
    assert _drive(ctl, "old", None, 0, stop=38) == ("sent", 1.01 + 0.5 * 38)


def test_global_strict_ranks_a_head_past_its_aging_time_after_other_flows_feasible_heads() -> None:
    """With ``global-strict`` (the band as one queue) as inside one flow: a head past its aging time goes
    after the band's requests that can still make their SLO (review s25-rev-fixfc25 F1; fixfc25 ranked it
    first across flows), before the band's other overdue ones."""
    ctl = _ctl(fairness="global-strict")
    ctl.enqueue(_req("old", "t1", 0, 1.0, 0.0), 0.0)
    assert _drive(ctl, "old", "t2", 0) == ("ttl", 1.01 + 0.5 * 58)
    ctl = _ctl(fairness="global-strict")
    ctl.service_ttft = 0.3
    ctl.enqueue(_req("old", "t1", 0, 1.0, 0.0), 0.0)
    assert _drive(ctl, "old", "t2", 0, stop=38) == ("sent", 1.01 + 0.5 * 38)


def test_a_request_ranks_at_its_bands_priority_from_its_own_aging_time() -> None:
    """F3. x: arrival 0, SLO 5 s (deadline 5, aging time 17.5 s); y, same flow: arrival 4, SLO 0.5 s
    (deadline 4.5, aging 19.25 s). At 18 s x is past its aging time: its band goes before batch. main: the
    flow was aged by its earliest-deadline overdue request (y) only, batch went first until 19.25 s. (In the
    default band 0, which ages halfway to the TTL: a band above it ages one SLO past the deadline since
    fc26, x at 10 s and y at 5 s, and the review's priority-10 flow no longer shows F3.)"""
    ctl = _ctl()
    ctl.enqueue(_req("x", "c", 0, 5.0, 0.0), 0.0)
    ctl.enqueue(_req("y", "c", 0, 0.5, 4.0), 4.0)
    for i in range(10):
        ctl.enqueue(_req(f"b{i}", "batch", -1, 100.0, 9.0), 9.0)
    assert _one(ctl, 18.0) == "x"  # (by aging time: x's 17.5 s before y's 19.25 s)


def test_one_flow_whose_requests_are_all_overdue_on_arrival_loses_none_to_its_ttl() -> None:
    """F2 (a regression of fc25). One flow, 1 s SLO, the dispatch -> first-token p90 2 s (overload: every
    request overdue by the p90 on arrival). A backlog of 5, then one arrival per slot (arrivals = service).
    Before fc25, ``late`` went earliest deadline first and none reached its 6 s TTL; fc25 served each
    fresh arrival before the backlog past its deadline, 3 TTL 503s. Now the backlog goes at its aging time
    (3.5 s), before the arrivals."""
    ctl = _ctl(ttl=6.0)
    for _ in range(20):
        ctl.observe_service_ttft(2.0)
    for i in range(5):
        ctl.enqueue(_req(f"old{i}", "t", 0, 1.0, 0.0), 0.0)
    expired: list[str] = []
    for i in range(40):
        now = 0.5 + 0.5 * i
        expired += [it.req.request_id for it in ctl.expire(now)]
        ctl.enqueue(_req(f"n{i}", "t", 0, 1.0, now), now)
        _one(ctl, now)
    assert expired == [], expired


def test_a_parked_home_wakes_a_head_past_its_aging_time_after_the_fresh_before_the_overdue() -> None:
    """At a parked home (``park``, ``wake``: ``Home.dead`` keyed by aging time, as ``FlowQueue.dead``), one
    flow, the dispatch -> first-token p90 2 s. x (deadline 0.3 s, aging time 15.15 s), y (can still make
    its SLO: deadline 20 s) and z (overdue: deadline 17 s, nearer than the p90 at 16 s) wait aside for a
    full home. At 16 s a freed slot wakes y (review s25-rev-fixfc25 F1; fixfc25 woke x first), the next
    one x, past its aging time, before z (fc25 woke z: overdue before past-deadline)."""
    home = "10.0.0.1:8000"

    def parked(rid: str, slo_s: float, at: float) -> InferenceRequest:
        r = _req(rid, "c", 0, slo_s, at)
        r.subset = frozenset({home})
        return r

    ctl = _ctl()
    ctl.service_ttft = 2.0
    x = ctl.enqueue(parked("x", 0.3, 0.0), 0.0)
    y = ctl.enqueue(parked("y", 10.0, 10.0), 10.0)
    z = ctl.enqueue(parked("z", 2.0, 15.0), 15.0)
    assert list(dispatch_ready(ctl, 15.0, lambda _r: True)) == []  # (its home full: all three parked)
    assert x.parked is not None and y.parked is not None and z.parked is not None
    key = x.parked
    assert ctl.wake(key, 16.0)
    assert y.parked is None and x.parked is not None and z.parked is not None  # (y back in its band)
    assert ctl.wake(key, 16.0)
    assert x.parked is None and z.parked is not None
