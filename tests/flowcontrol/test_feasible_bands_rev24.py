"""Review s24-rev-fc24: slo-feasible across bands (fc24, FlowController.heads at 242ec2a1), the review's
tests moved here by fixfc24. No process is started; time is injected.
Each test fails on 242ec2a1's src (and on main f29693d1's) and passes on f42b389b's (before fc24)."""

from __future__ import annotations

import pytest

from kvgate.flowcontrol.config import parse_flow_control
from kvgate.flowcontrol.controller import FlowController
from kvgate.flowcontrol.dispatcher import dispatch_ready
from kvgate.scheduling.types import InferenceRequest


def _ctl(fairness: str) -> FlowController:
    cfg = {"fairnessPolicy": fairness, "orderingPolicy": "slo-feasible", "maxRequests": 1000}
    return FlowController(parse_flow_control(cfg))


def _req(rid: str, flow: str, priority: int, slo_s: float, at: float, model: str = "m") -> InferenceRequest:
    return InferenceRequest(
        rid, model, prompt_tokens=10, max_tokens=100, fairness_id=flow, priority=priority,
        headers={"x-slo-ttft-ms": str(int(slo_s * 1000))}, arrival_time=at,
    )  # fmt: skip


def _one(ctl: FlowController, now: float) -> str | None:
    """One slot frees at ``now``: the request a dispatch pass sends into it."""
    sent: list[str] = []

    def saturated(_r: InferenceRequest) -> bool:
        return len(sent) >= 1

    for item in dispatch_ready(ctl, now, saturated):
        sent.append(item.req.request_id)
    return sent[0] if sent else None


@pytest.mark.parametrize("fairness", ["least-attained-service", "round-robin"])
def test_a_feasible_critical_request_is_not_starved_by_batch_behind_its_bands_overdue_flow(
    fairness: str,
) -> None:
    """Critical band 10: flow ``x`` has one overdue request (the fairness policy's choice: LAS tie to the
    least recently served / round-robin's turn), flow ``y`` a request that can still make its 2 s SLO.
    Batch band -1 has a steady backlog that can make its 10 s SLO. One slot frees every 0.25 s.
    Strict priority among feasible requests (the docstring's claim) sends ``y`` first; at 242ec2a1 the
    whole critical band is deferred because ``x`` is its choice, ``x`` is never served (it stays the
    choice), so ``y`` waits behind every batch request until it is itself overdue: a critical miss
    made by batch work."""
    ctl = _ctl(fairness)
    ctl.enqueue(_req("x-late", "x", 10, 1.0, 0.0), 0.0)  # deadline 1 s: overdue from then on
    ctl.enqueue(_req("y-fresh", "y", 10, 2.0, 5.0), 5.0)  # deadline 7 s
    for i in range(20):
        ctl.enqueue(_req(f"b{i}", "batch", -1, 10.0, 4.0), 4.0)  # deadline 14 s
    now, order = 5.0, []
    while len(ctl):
        got = _one(ctl, now)
        assert got is not None
        order.append((got, now))
        now += 0.25
    sent_at = dict(order)
    assert sent_at["y-fresh"] <= 7.0, order  # fails: y-fresh goes at 7.0+ after 8+ batch requests


def test_a_saturated_lower_band_head_does_not_block_an_overdue_head_whose_pool_has_room() -> None:
    """Model ``a``'s pool has room, model ``b``'s is full. The only critical request (model ``a``) is
    overdue; the batch head (model ``b``) can still make its SLO but cannot go. On main before fc24 the
    critical request went (strict priority); at 242ec2a1 the batch head comes first, is saturated, and
    the pass ends (``key is None: break``): nothing is sent, model a's capacity idles and the critical
    request waits for model b's pool (or its TTL). Same with one pool where the batch flow is held back
    by fairShareHeadroom / the running reserve and the critical flow is not."""
    ctl = _ctl("least-attained-service")
    ctl.enqueue(_req("crit-late", "c", 10, 1.0, 0.0, model="a"), 0.0)
    ctl.enqueue(_req("batch", "batch", -1, 10.0, 4.0, model="b"), 4.0)
    sent = [it.req.request_id for it in dispatch_ready(ctl, 5.0, lambda r: r.model == "b")]
    assert sent == ["crit-late"]


def test_a_critical_flow_whose_slo_is_under_the_service_p90_is_not_demoted_below_batch() -> None:
    """``reach`` is now + the dispatch -> first token p90 pooled over every band (``observe_service_ttft``).
    A critical tenant whose TTFT SLO is under that p90 is overdue on arrival, every request of it, so at
    242ec2a1 it goes after every batch request that can still make its 10 s SLO: with a steady batch
    backlog it waits until the backlog is gone or its TTL (no TTL: forever). Its miss was not certain
    (a p90 is not a bound: short critical prompts beat it); before fc24 it went first."""
    ctl = _ctl("least-attained-service")
    for _ in range(20):
        ctl.observe_service_ttft(0.5)  # (p90 0.5 s)
    ctl.enqueue(_req("crit", "c", 10, 0.3, 5.0), 5.0)  # 300 ms SLO: under the p90
    for i in range(20):
        ctl.enqueue(_req(f"b{i}", "batch", -1, 10.0, 4.0), 4.0)
    now, passes = 5.0, 0
    while len(ctl) and passes < 3:
        got = _one(ctl, now)
        passes += 1
        if got == "crit":
            break
        now += 0.25
    assert got == "crit", f"critical still queued after {passes} one-slot passes"
