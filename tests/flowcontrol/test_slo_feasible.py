"""``orderingPolicy: slo-feasible``: inside a flow, the requests that can still meet their TTFT deadline
leave first (earliest deadline first), the overdue ones only when none of those is left (oldest first).
Under overload ``slo-deadline`` serves the most overdue first and so makes everyone behind them late."""

from __future__ import annotations

from kvgate.flowcontrol.config import FlowControlConfig, parse_flow_control
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
    # r0, r1 (oldest first).
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
