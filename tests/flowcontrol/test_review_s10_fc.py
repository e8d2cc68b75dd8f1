"""Review s10-fc M1: the running reserve's take rate and its miss learning must classify a request as
held back the way the dispatch gate did (``held_back(req, now)`` at dispatch), not re-ask without
``now`` (SLO-first) or at first-token time (shares have moved). (Adapted from
/work/team/reviews/s10-fc-tests/test_s10_fc_held_consistency.py: the first token is told what the
dispatch said, as the Director does, and the Director's own path is tested below.)"""

from __future__ import annotations

from kvgate.flowcontrol.config import FlowControlConfig
from kvgate.flowcontrol.controller import FlowController
from kvgate.scheduling.types import InferenceRequest


def _req(rid: str, flow: str, arrival: float = 0.0) -> InferenceRequest:
    r = InferenceRequest(rid, "m", prompt_tokens=10, max_tokens=4, priority=0, fairness_id=flow)
    r.arrival_time = arrival
    return r


def test_slo_due_request_passed_by_the_gate_counts_in_the_take_rate() -> None:
    cfg = FlowControlConfig(
        fair_share_headroom=0.5,
        fair_share_slo_first=True,
        fair_share_running_reserve=True,
        default_ttft_slo=2.0,
    )
    ctl = FlowController(cfg)
    ctl.service_ttft = 0.1  # dispatch-to-first-token p90 learned
    now = 10.0
    for i in range(3):  # flood: 3 in flight, quiet: 1 -> flood over its share
        ctl.started("flood", _req(f"f{i}", "flood", now), now)
    ctl.started("quiet", _req("q", "quiet", now), now)
    # a flood request whose TTFT deadline is due: deadline = now + 0.3 (within 5 x 0.1, >= 0.1)
    due = _req("fdue", "flood", arrival=now - 2.0 + 0.3)
    assert ctl.held_back(due) is True
    assert ctl.held_back(due, now) is False  # the gate (Director.saturated) lets it into the free slots
    before = ctl.rates(now)[0]
    ctl.started("flood", due, now)
    assert ctl.rates(now)[0] > before, "a request taking a reserved free slot is missing from the take rate"


def test_miss_of_a_request_held_back_at_dispatch_does_not_wind_up_free_extra() -> None:
    cfg = FlowControlConfig(
        fair_share_headroom=0.5,
        fair_share_ttft_target=0.05,
        fair_share_running_reserve=True,
    )
    ctl = FlowController(cfg)
    now = 10.0
    ctl.free_reserve(now, 8)  # the gate has asked (cap known)
    # flood: 6 in flight, two quiet flows: 1 each -> flood over twice the mean (6 x 3 > 2 x 8): held back
    for i in range(6):
        ctl.started("flood", _req(f"f{i}", "flood", now), now)
    ctl.started("quiet", _req("q", "quiet", now), now)
    ctl.started("quiet2", _req("q2", "quiet2", now), now)
    r = _req("fx", "flood", now)
    held = ctl.started("flood", r, now)
    assert held is True  # held back at dispatch: it waited by design
    # the flood's other requests finish before this one's first token: now under its share
    for _ in range(5):
        ctl.ended("flood", now + 0.5)
    assert ctl.held_back(r) is False
    before = ctl.free_extra
    # over the target, within it from dispatch: counted as a "miss by waiting" on main
    ctl.observe_first_token(r, ttft=1.0, service=0.01, held=held)
    assert ctl.free_extra == before, (
        f"free_extra {before} -> {ctl.free_extra}: a request held back at dispatch counted as a reserve miss"
    )


def test_the_director_tells_the_first_token_what_the_dispatch_said() -> None:
    from typing import Any

    from kvgate.config.director import build_director
    from kvgate.datalayer.store import EndpointStore
    from kvgate.scheduling.types import Usage

    now = [10.0]
    cfg: dict[str, Any] = {
        "featureGates": ["flowControl"],
        "flowControl": {
            "fairShareHeadroom": 0.5,
            "fairShareTTFTTarget": "50ms",
            "fairShareRunningReserve": True,
        },
        "saturationDetector": {
            "type": "concurrency-detector",
            "parameters": {"maxConcurrency": 16, "maxPendingRequests": 16},
        },
        "plugins": [{"type": "queue-scorer"}],
        "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": "queue-scorer"}]}],
    }
    d = build_director(
        cfg, EndpointStore.from_addresses(["10.0.0.1:8000"]), flow_metrics=False, clock=lambda: now[0]
    )
    ctl = d.flow.ctl  # type: ignore[union-attr]
    ep = d.store.all()[0]
    ctl.free_reserve(now[0], 8)
    flood = [_req(f"f{i}", "flood", now[0]) for i in range(6)]
    for r in flood:
        d.on_dispatched(r, ep)
    for f in ("quiet", "quiet2"):
        d.on_dispatched(_req(f, f, now[0]), ep)
    r = _req("fx", "flood", now[0] - 1.0)  # waited 1 s in the queue, held back at its dispatch
    d.on_dispatched(r, ep)
    for x in flood[:5]:  # the flood drains before its first token
        d.on_finished(x, ep, Usage(10, 4, 0), True)
    assert not ctl.held_back(r)
    now[0] += 0.01
    d.on_first_token(r, ep)
    assert ctl.free_extra == 0.0
