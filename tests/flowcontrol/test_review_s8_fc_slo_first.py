"""Review s8-fc: fairShareRunningReserve holds a request back whatever the adapted headroom's value
("It does not depend on the adapted headroom's value (which falls between bursts)", docs), but
fairShareSLOFirst's look past a held-back head (dispatcher._due_instead) runs only while
``ctl.headroom`` > 0. With fairShareTTFTTarget the headroom starts at 0 and falls to 0 between bursts;
then a head refused by the reserve alone hides another flow's due head, which the gate would let
through (a due request is not held back, so neither the reserve nor the headroom applies to it): the
due request waits past its TTFT deadline.

Fails on main c7391f1 (the first assertion after the precondition); the control at the end (headroom
> 0) passes, which shows it is the ``ctl.headroom`` guard.
"""

from __future__ import annotations

from typing import Any

from kvgate.config.director import build_director
from kvgate.datalayer.store import EndpointStore
from kvgate.flowcontrol.dispatcher import dispatch_ready
from kvgate.requestcontrol.director import Director
from kvgate.scheduling.types import InferenceRequest, Usage


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def req(rid: str, flow: str, priority: int = 0, slo_ms: int | None = None) -> InferenceRequest:
    headers = {"x-slo-ttft-ms": str(slo_ms)} if slo_ms is not None else {}
    return InferenceRequest(
        rid, "m", prompt_tokens=10, max_tokens=4, priority=priority, fairness_id=flow, headers=headers
    )


def setup() -> tuple[Director, Clock]:
    clock = Clock()
    cfg: dict[str, Any] = {
        "featureGates": ["flowControl"],
        "flowControl": {
            "fairShareHeadroom": 0.75,
            "fairShareHeadroomOn": "pending",
            "fairShareTTFTTarget": "50ms",
            "fairShareSLOFirst": True,
            "fairShareRunningReserve": True,
        },
        "saturationDetector": {
            "type": "concurrency-detector",
            "parameters": {"maxConcurrency": 16, "maxPendingRequests": 16},
        },
        "plugins": [{"type": "queue-scorer"}],
        "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": "queue-scorer"}]}],
    }
    d = build_director(cfg, EndpointStore.from_addresses(["10.0.0.1:8000"]), flow_metrics=False, clock=clock)
    ep = d.store.all()[0]
    quiet = [req(f"q{i}", "q") for i in range(10)]  # the others' load: 10 requests of 2 s each
    for r in quiet:
        d.on_dispatched(r, ep)
    clock.now = 2.0
    for r in quiet:
        d.on_first_token(r, ep)
        d.on_finished(r, ep, Usage(10, 4, 0), True)
    d.on_dispatched(req("q-live", "q"), ep)
    for i in range(10):  # sheddable work, held back at dispatch (the TTFT target's headroom)
        b = req(f"b{i}", "batch", priority=-1)
        d.on_dispatched(b, ep)
        d.on_first_token(b, ep)
    return d, clock


def test_a_due_head_is_not_hidden_by_a_head_the_reserve_holds_back_at_zero_headroom() -> None:
    d, clock = setup()
    ctl = d.flow.ctl  # type: ignore[union-attr]
    ctl.service_ttft = 0.1  # dispatch -> first token p90 (SLO first: due within 0.1-0.5 s)
    now = clock.now
    x = ctl.enqueue(req("x", "x", priority=-1), now)  # not due (2 s default SLO); the band's head
    due = ctl.enqueue(req("d", "d", priority=-1, slo_ms=300), now)  # due: deadline in 0.3 s
    # Preconditions: the adapted headroom is 0; x is refused by the reserve alone (11 of 16 slots
    # in use); d is due, so the gate lets it through.
    assert ctl.headroom == 0.0
    assert ctl.head(now) is x
    assert d.saturated(x.req) and ctl.reserve_full(x.req, now, 16)
    assert ctl.slo_due(due.req, now) and not d.saturated(due.req)
    got = list(dispatch_ready(ctl, now, d.saturated))
    assert [i.req.request_id for i in got] == ["d"]


def test_control_with_a_headroom_above_zero_the_due_head_goes() -> None:
    d, clock = setup()
    ctl = d.flow.ctl  # type: ignore[union-attr]
    ctl.service_ttft = 0.1
    now = clock.now
    ctl.enqueue(req("x", "x", priority=-1), now)
    ctl.enqueue(req("d", "d", priority=-1, slo_ms=300), now)
    ctl.headroom = 0.01
    got = list(dispatch_ready(ctl, now, d.saturated))
    assert [i.req.request_id for i in got] == ["d"]
