"""fixfc24 (review s24-rev-fc24 F1-F4): ``slo-feasible`` across bands per head, not per band. A band whose
heads are all past their SLO deadline is remembered as such until its queue changes (F4: no rescan of its
flows at every one-slot pass); these pin that the memory never hides a change. No process is started; time
is injected."""

from __future__ import annotations

from kvgate.flowcontrol.config import parse_flow_control
from kvgate.flowcontrol.controller import FlowController
from kvgate.flowcontrol.dispatcher import dispatch_ready
from kvgate.scheduling.types import InferenceRequest


def _ctl(fairness: str = "least-attained-service") -> FlowController:
    cfg = {"fairnessPolicy": fairness, "orderingPolicy": "slo-feasible", "maxRequests": 1000}
    return FlowController(parse_flow_control(cfg))


def _req(rid: str, flow: str, priority: int, slo_s: float, at: float) -> InferenceRequest:
    return InferenceRequest(
        rid, "m", prompt_tokens=10, max_tokens=100, fairness_id=flow, priority=priority,
        headers={"x-slo-ttft-ms": str(int(slo_s * 1000))}, arrival_time=at,
    )  # fmt: skip


def _one(ctl: FlowController, now: float) -> str | None:
    sent: list[str] = []
    for item in dispatch_ready(ctl, now, lambda _r: len(sent) >= 1):
        sent.append(item.req.request_id)
    return sent[0] if sent else None


def test_a_request_that_can_make_it_arriving_in_an_all_overdue_band_goes_before_the_lower_band() -> None:
    ctl = _ctl()
    for f in range(3):
        ctl.enqueue(_req(f"late{f}", f"f{f}", 0, 1.0, 0.0), 0.0)
    for i in range(5):
        ctl.enqueue(_req(f"b{i}", "batch", -1, 100.0, 9.0), 9.0)
    assert _one(ctl, 10.0) == "b0"
    assert _one(ctl, 10.1) == "b1"  # (band 0 remembered as all overdue)
    ctl.enqueue(_req("fresh", "f1", 0, 1.0, 10.1), 10.1)
    assert _one(ctl, 10.2) == "fresh"
    assert _one(ctl, 10.3) == "b2"


def test_the_overdue_band_drains_in_its_fairness_order_once_the_lower_band_is_empty() -> None:
    """Least-attained-service among the overdue flows, as a rescan would choose (the remembered choice is
    dropped at every dispatch of the band)."""
    ctl = _ctl()
    ctl.enqueue(_req("a0", "a", 0, 1.0, 0.0), 0.0)
    ctl.enqueue(_req("a1", "a", 0, 1.0, 0.0), 0.0)
    ctl.enqueue(_req("c0", "c", 0, 1.0, 0.1), 0.1)
    ctl.enqueue(_req("b0", "batch", -1, 100.0, 9.0), 9.0)
    got = [_one(ctl, 10.0 + 0.1 * i) for i in range(4)]
    assert got == ["b0", "a0", "c0", "a1"]


def test_a_head_past_its_deadline_in_another_pool_goes_when_the_lower_head_is_held_back() -> None:
    """F2 for one pool: the batch head is held back (its gate closed), the overdue critical head is not."""
    ctl = _ctl()
    ctl.enqueue(_req("crit-late", "c", 10, 1.0, 0.0), 0.0)
    ctl.enqueue(_req("batch", "batch", -1, 10.0, 4.0), 4.0)
    sent = [it.req.request_id for it in dispatch_ready(ctl, 5.0, lambda r: r.fairness_id == "batch")]
    assert sent == ["crit-late"]
