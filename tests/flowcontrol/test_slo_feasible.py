"""``orderingPolicy: slo-feasible``: inside a flow, the requests that can still meet their TTFT deadline
leave first (earliest deadline first), the overdue ones only when none of those is left (earliest
deadline, the most overdue, first). Under overload ``slo-deadline`` serves the most overdue first and
so makes everyone behind them late."""

from __future__ import annotations

import pytest

from kvgate.config.director import build_director
from kvgate.datalayer.endpoint import Endpoint
from kvgate.datalayer.store import EndpointStore
from kvgate.flowcontrol.config import BandConfig, FlowControlConfig, parse_flow_control
from kvgate.flowcontrol.controller import FlowController
from kvgate.flowcontrol.dispatcher import dispatch_ready
from kvgate.scheduling.types import InferenceRequest


def _req(rid: str, arrival: float, slo_ms: int = 1000, flow: str = "f") -> InferenceRequest:
    return InferenceRequest(rid, "m", prompt_tokens=10, fairness_id=flow, arrival_time=arrival,
                            headers={"x-slo-ttft-ms": str(slo_ms)})  # fmt: skip


def _order(ordering: str, now: float, fairness: str = "least-attained-service") -> list[str]:
    ctl = FlowController(FlowControlConfig(ordering=ordering, fairness=fairness))
    for i, at in enumerate((0.0, 0.5, 1.2, 1.8)):  # deadlines 1.0, 1.5, 2.2, 2.8
        ctl.enqueue(_req(f"r{i}", at), at)
    return [item.req.request_id for item in dispatch_ready(ctl, now, lambda _r: False)]


def test_overdue_requests_go_after_the_ones_that_can_still_make_it() -> None:
    # At t = 2.0, r0 and r1 are past their deadlines: r2, r3 first (earliest deadline first), then
    # r0, r1 (earliest deadline first).
    assert _order("slo-feasible", 2.0) == ["r2", "r3", "r0", "r1"]
    assert _order("slo-deadline", 2.0) == ["r0", "r1", "r2", "r3"]
    # Nothing overdue yet: the same order as slo-deadline.
    assert _order("slo-feasible", 0.9) == ["r0", "r1", "r2", "r3"]


def test_each_fairness_policy_sees_the_same_order_and_global_strict_ranks_overdue_heads_last() -> None:
    for fairness in ("round-robin", "least-attained-service", "global-strict"):
        assert _order("slo-feasible", 2.0, fairness) == ["r2", "r3", "r0", "r1"], fairness
    ctl = FlowController(FlowControlConfig(ordering="slo-feasible", fairness="global-strict"))
    ctl.enqueue(_req("old", 0.0, flow="a"), 0.0)  # deadline 1.0: overdue at 5.0
    ctl.enqueue(_req("fresh", 4.5, flow="b"), 4.5)  # deadline 5.5
    assert [i.req.request_id for i in dispatch_ready(ctl, 5.0, lambda _r: False)] == ["fresh", "old"]


def test_a_held_overdue_request_is_not_duplicated() -> None:
    ctl = FlowController(FlowControlConfig(ordering="slo-feasible"))
    item = ctl.enqueue(_req("late", 0.0), 0.0)
    head = next(ctl.heads(5.0))
    assert head is item
    ctl.take(item, 5.0, record=False)
    ctl.hold(item, 5.0, 5.1)
    ctl.unhold(5.2)
    q = ctl.bands[0].flows["f"]
    assert len(q.heap) + len(q.late) == 1  # its overdue entry was dropped when it was held
    assert [i.req.request_id for i in dispatch_ready(ctl, 5.2, lambda _r: False)] == ["late"]
    assert len(ctl) == 0 and next(ctl.heads(6.0), None) is None


def test_the_policy_name() -> None:
    assert parse_flow_control({"orderingPolicy": "slo-feasible"}).ordering == "slo-feasible"


def test_a_deadline_nearer_than_the_learned_dispatch_to_first_token_time_counts_as_overdue() -> None:
    ctl = FlowController(FlowControlConfig(ordering="slo-feasible"))
    for i in range(128):  # dispatch -> first token: 10..137 ms, p90 124 ms
        ctl.observe_service_ttft(0.010 + 0.001 * i)
    assert ctl.service_ttft == pytest.approx(0.124)
    ctl.enqueue(_req("tight", 0.0, slo_ms=1000), 0.0)  # deadline 1.0
    ctl.enqueue(_req("loose", 0.5, slo_ms=1000), 0.5)  # deadline 1.5
    # At 0.95 "tight" has 50 ms left, under the 124 ms a dispatch takes: it goes after "loose".
    assert [i.req.request_id for i in dispatch_ready(ctl, 0.95, lambda _r: False)] == ["loose", "tight"]


def test_only_slo_feasible_learns_the_margin() -> None:
    ctl = FlowController(FlowControlConfig(ordering="slo-deadline"))
    ctl.observe_service_ttft(5.0)
    assert ctl.service_ttft == 0.0
    banded = FlowController(FlowControlConfig(bands={-1: BandConfig(-1, ordering="slo-feasible")}))
    banded.observe_service_ttft(0.2)
    assert banded.service_ttft == pytest.approx(0.2)


def test_the_director_feeds_dispatch_to_first_token_times() -> None:
    from kvgate.config.director import build_director
    from kvgate.datalayer.endpoint import Endpoint
    from kvgate.datalayer.store import EndpointStore

    now = [0.0]
    doc = {
        "featureGates": ["flowControl"],
        "flowControl": {"orderingPolicy": "slo-feasible"},
        "saturationDetector": {"type": "concurrency-detector", "parameters": {"maxConcurrency": 100}},
        "plugins": [{"type": "queue-scorer"}],
        "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": "queue-scorer"}]}],
    }
    ep = Endpoint("10.0.0.1:8000")
    d = build_director(doc, EndpointStore([ep]), lambda: now[0], seed=0, flow_metrics=False)
    req = InferenceRequest("a", "m", prompt_tokens=10, arrival_time=0.0)
    d.on_dispatched(req, ep)
    now[0] = 0.25
    d.on_first_token(req, ep)
    assert d.flow is not None and d.flow.ctl.service_ttft == pytest.approx(0.25)


def test_overdue_ones_leave_by_deadline_the_most_overdue_first_not_by_arrival() -> None:
    # "old" arrived first but has the later deadline (3.0 vs 1.5): once both are overdue, "tight" (the
    # more overdue) leaves first. (Documents the order the docs name.)
    ctl = FlowController(FlowControlConfig(ordering="slo-feasible"))
    ctl.enqueue(_req("old", 0.0, slo_ms=3000), 0.0)
    ctl.enqueue(_req("tight", 1.0, slo_ms=500), 1.0)
    assert [i.req.request_id for i in dispatch_ready(ctl, 5.0, lambda _r: False)] == ["tight", "old"]


def test_an_overdue_head_ranks_after_an_on_time_one_at_any_clock_value() -> None:
    # Deadlines far from zero (a clock that is not process-relative): an overdue head must still rank
    # after an on-time one, with no constant added to its key. (Within its aging time: past it, a certain
    # miss goes first, review s25-rev-fc25; "old" queued 1e11 s before was past it.)
    ctl = FlowController(FlowControlConfig(ordering="slo-feasible", fairness="global-strict"))
    now = 2e12
    ctl.enqueue(_req("old", now - 2.0, flow="a"), now - 2.0)  # deadline now - 1: overdue, aging at now + 13.5
    ctl.enqueue(_req("fresh", now, flow="b"), now)  # deadline now + 1
    assert [i.req.request_id for i in dispatch_ready(ctl, now, lambda _r: False)] == ["fresh", "old"]


def test_head_sees_a_flow_that_has_only_overdue_requests() -> None:
    ctl = FlowController(FlowControlConfig(ordering="slo-feasible"))
    item = ctl.enqueue(_req("late", 0.0), 0.0)  # deadline 1.0
    assert ctl.head(5.0) is item  # (moves it to the flow's overdue heap)
    assert ctl.head() is item  # and without a now, it is still there
    assert next(ctl.heads(), None) is item


def test_a_first_token_that_times_no_prefill_teaches_no_margin() -> None:
    # A non-streamed reply's first token comes with its last (learn=False): its time is the whole
    # generation, which would make the margin (and every deadline's reach) far too long.
    doc = {
        "featureGates": ["flowControl"],
        "flowControl": {"orderingPolicy": "slo-feasible"},
        "plugins": [{"type": "queue-scorer"}],
        "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": "queue-scorer"}]}],
    }
    now = [0.0]
    ep = Endpoint("127.0.0.1:18301")
    d = build_director(doc, EndpointStore([ep]), lambda: now[0], seed=0, flow_metrics=False)
    assert d.flow is not None
    for i, learn in enumerate((False, True)):
        req = _req(f"r{i}", now[0])
        d.on_dispatched(req, d.pick(req).primary)
        now[0] += 5.0 if not learn else 0.1
        d.on_first_token(req, ep, learn=learn)
        d.on_finished(req, ep, None, True)
        assert d.flow.ctl.service_ttft == pytest.approx(0.0 if not learn else 0.1)
