"""``slo-feasible`` across priority bands (fc24; fixfc24: per head, not per band, and "overdue" is past its
TTFT SLO deadline, a certain miss): a head already past its deadline is asked after the lower bands'
heads that are not. Before, strict priority sent it first: in the flood benchmark the
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
    """Three bands: the heads past their SLO deadline go after every head that is not, highest band
    first within each tier. Band 0's least-attained-service tie goes to ``flood``, whose head is past its
    deadline: its band's ``fresh`` (which can still make it) keeps band 0's place before the batch band,
    and ``flood`` waits with the other certain misses (fc24 deferred the whole band there, so ``fresh``
    went after ``batch``: review s24-rev-fc24 F1). ``slo-feasible`` orders inside a flow, and between flows
    and bands. (``crit-late`` is 0.5 s past its 4.5 s SLO: a band above the default ages one SLO past its
    deadline, fc26, so it still gives way at 5 s.)"""
    ctl = _ctl()
    ctl.enqueue(_req("crit-late", "c", 10, 4.5, 0.0), 0.0)
    ctl.enqueue(_req("late", "flood", 0, 1.0, 0.0), 0.0)
    ctl.enqueue(_req("fresh", "quiet", 0, 1.0, 4.9), 4.9)
    ctl.enqueue(_req("batch", "batch", -1, 10.0, 4.0), 4.0)
    ctl.enqueue(_req("batch-late", "batch", -1, 1.0, 0.0), 0.0)
    assert _order(ctl, 5.0) == ["fresh", "batch", "crit-late", "late", "batch-late"]


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
