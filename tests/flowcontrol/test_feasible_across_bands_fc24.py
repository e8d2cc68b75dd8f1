"""``slo-feasible`` across priority bands (fc24): a band's choice that can no longer meet its TTFT SLO
(its deadline is nearer than a request sent now reaches: it misses wherever it goes) is asked after the
lower bands' choices that still can. Before, strict priority sent it first: in the flood benchmark the
flooder's overdue backlog (band 0, held back by the fair-share headroom) went before every batch request
(band -1, 10 s SLO), which then waited out its TTL (503) or missed, where the reference served them all in
time. The first two tests fail on main's src (a6977267); the others pin what does not change.
No process is started; time is injected."""

from __future__ import annotations

from kvgate.flowcontrol.config import parse_flow_control
from kvgate.flowcontrol.controller import FlowController
from kvgate.flowcontrol.dispatcher import dispatch_ready
from kvgate.scheduling.types import InferenceRequest


def _ctl(ordering: str = "slo-feasible") -> FlowController:
    cfg = {"fairnessPolicy": "least-attained-service", "orderingPolicy": ordering, "maxRequests": 1000}
    return FlowController(parse_flow_control(cfg))


def _req(rid: str, flow: str, priority: int, slo_s: float, at: float) -> InferenceRequest:
    return InferenceRequest(
        rid, "m", prompt_tokens=10, max_tokens=100, fairness_id=flow, priority=priority,
        headers={"x-slo-ttft-ms": str(int(slo_s * 1000))}, arrival_time=at,
    )  # fmt: skip


def _order(ctl: FlowController, now: float) -> list[str]:
    """Everything queued, in the order one unsaturated dispatch pass takes it."""
    return [item.req.request_id for item in dispatch_ready(ctl, now, lambda _r: False)]


def test_an_overdue_head_goes_after_a_lower_bands_head_that_can_still_make_it() -> None:
    ctl = _ctl()
    ctl.enqueue(_req("late", "flood", 0, 1.0, 0.0), 0.0)  # deadline 1 s: overdue at 5 s
    ctl.enqueue(_req("batch", "batch", -1, 10.0, 4.0), 4.0)  # deadline 14 s
    assert _order(ctl, 5.0) == ["batch", "late"]


def test_a_band_chooses_again_after_its_deferred_overdue_head() -> None:
    """Three bands: each band's overdue choice is asked after the feasible choices below it, the
    overdue ones highest band first. Inside a band the fairness policy's choice stands, as before (band
    0's least-attained-service tie goes to ``flood``, whose head is overdue: ``fresh`` waits for its
    band's turn); ``slo-feasible`` orders inside a flow, and now between bands."""
    ctl = _ctl()
    ctl.enqueue(_req("crit-late", "c", 10, 1.0, 0.0), 0.0)
    ctl.enqueue(_req("late", "flood", 0, 1.0, 0.0), 0.0)
    ctl.enqueue(_req("fresh", "quiet", 0, 1.0, 4.9), 4.9)
    ctl.enqueue(_req("batch", "batch", -1, 10.0, 4.0), 4.0)
    ctl.enqueue(_req("batch-late", "batch", -1, 1.0, 0.0), 0.0)
    assert _order(ctl, 5.0) == ["batch", "crit-late", "late", "fresh", "batch-late"]


def test_feasible_heads_keep_strict_priority() -> None:
    ctl = _ctl()
    ctl.enqueue(_req("batch", "batch", -1, 10.0, 4.0), 4.0)
    ctl.enqueue(_req("fresh", "flood", 0, 1.0, 4.9), 4.9)
    ctl.enqueue(_req("crit", "c", 10, 1.0, 4.9), 4.9)
    assert _order(ctl, 5.0) == ["crit", "fresh", "batch"]


def test_other_orderings_keep_strict_priority() -> None:
    for ordering in ("slo-deadline", "fcfs", "edf"):
        ctl = _ctl(ordering)
        ctl.enqueue(_req("late", "flood", 0, 1.0, 0.0), 0.0)
        ctl.enqueue(_req("batch", "batch", -1, 10.0, 4.0), 4.0)
        assert _order(ctl, 5.0) == ["late", "batch"], ordering


def test_without_a_time_the_bands_keep_their_order() -> None:
    ctl = _ctl()
    ctl.enqueue(_req("late", "flood", 0, 1.0, 0.0), 0.0)
    ctl.enqueue(_req("batch", "batch", -1, 10.0, 4.0), 4.0)
    head = ctl.head()
    assert head is not None and head.req.request_id == "late"
