"""Review s8-fc: fairShareRunningReserve compares the held-back requests in flight on the WHOLE pool
(FlowController.held_inflight) with the running slots of the request's CANDIDATES only
(Director.saturated: ``slots * len(cands)``). When the candidates are fewer than the endpoints that
hold those requests (a subset hint; endpoints out of the health gate with requests still running on
them), a held-back request is refused although its own endpoints are empty and the pool's reserve is
intact. It waits until the flood's pool-wide count falls (a subset request: while the flood lasts,
i.e. until its TTL; behind a hung server: until those requests time out), and a blocked subset head
lets lower bands through (dispatch_ready), so sheddable work passes it.

All three fail on main (c7391f1 and d861e63); with fairShareRunningReserve off the same state is not
saturated (the third: both requests leave, the critical one first).
"""

from __future__ import annotations

from typing import Any

from kvgate.config.director import build_director
from kvgate.datalayer.endpoint import Endpoint, EndpointMetrics
from kvgate.datalayer.store import EndpointStore
from kvgate.requestcontrol.director import Director
from kvgate.scheduling.types import InferenceRequest


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def req(rid: str, flow: str, subset: frozenset[str] | None = None) -> InferenceRequest:
    return InferenceRequest(rid, "m", prompt_tokens=10, max_tokens=4, fairness_id=flow, subset=subset)


def director(addresses: list[str], reserve: bool, clock: Clock) -> Director:
    fc: dict[str, Any] = {"fairShareHeadroom": 0.5, "fairShareHeadroomOn": "pending"}
    if reserve:
        fc["fairShareRunningReserve"] = True
    cfg: dict[str, Any] = {
        "featureGates": ["flowControl"],
        "flowControl": fc,
        "saturationDetector": {
            "type": "concurrency-detector",
            "parameters": {"maxConcurrency": 16, "maxPendingRequests": 16},
        },
        "plugins": [{"type": "queue-scorer"}],
        "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": "queue-scorer"}]}],
    }
    d = build_director(cfg, EndpointStore.from_addresses(addresses), flow_metrics=False, clock=clock)
    for ep in d.store.all():
        ep.metrics = EndpointMetrics(updated_at=0.0)  # fresh: every endpoint passes the health gate
    return d


def run(d: Director, r: InferenceRequest, ep: Endpoint) -> None:
    d.on_dispatched(r, ep)
    d.on_first_token(r, ep)


def test_a_subset_request_to_an_empty_endpoint_is_not_refused_by_the_pool_wide_held_count() -> None:
    addrs = [f"10.0.0.{i}:8000" for i in range(1, 5)]
    for reserve in (False, True):
        d = director(addrs, reserve, Clock())
        e1, e2, e3, e4 = d.store.all()
        for i in range(20):  # the flood: 20 running on e2..e4 (of their 48 slots); e1 is empty
            run(d, req(f"f{i}", "flood"), (e2, e3, e4)[i % 3])
        for q in ("q1", "q2", "q3"):
            run(d, req(q, q), e2)
        assert d.flow.ctl.over_share("flood")  # type: ignore[union-attr]
        # Control: a request of the flood without a subset hint passes (20 held of 64 slots).
        assert not d.saturated(req("f-any", "flood"))
        # The same request bound to e1 (0 of its 16 slots in use): the reserve refuses it because
        # the 20 requests on e2..e4 are compared with e1's 16 slots.
        only_e1 = req("f-e1", "flood", subset=frozenset({e1.address}))
        assert not d.saturated(only_e1), f"refused with fairShareRunningReserve={reserve}"


def test_requests_on_an_endpoint_out_of_the_health_gate_do_not_take_the_slots_of_the_others() -> None:
    for reserve in (False, True):
        d = director(["10.0.0.1:8000", "10.0.0.2:8000"], reserve, Clock())
        e1, e2 = d.store.all()
        for i in range(15):  # the flood's requests on e2 ...
            run(d, req(f"f{i}", "flood"), e2)
        run(d, req("q1", "q1"), e2)
        run(d, req("q2", "q2"), e1)
        assert d.flow.ctl.over_share("flood")  # type: ignore[union-attr]
        e2.scrape_failures = 3  # ... which hangs: out of the candidates, its 16 requests still open
        assert [ep.address for ep in d.candidates(req("x", "flood"))] == [e1.address]
        # e1 runs 1 of its 16 slots; the flood's requests there hold none of them.
        assert not d.saturated(req("f-next", "flood")), f"refused with fairShareRunningReserve={reserve}"


def test_a_critical_subset_request_is_not_overtaken_by_sheddable_work() -> None:
    """The consequence in the dispatcher: a blocked head with a subset hint lets lower bands through
    (dispatch_ready: ``if item.req.subset is None: break``), so a sheddable request leaves first while
    the critical request, whose only endpoint is empty, waits."""
    from kvgate.flowcontrol.dispatcher import dispatch_ready

    addrs = [f"10.0.0.{i}:8000" for i in range(1, 5)]
    d = director(addrs, True, Clock())
    ctl = d.flow.ctl  # type: ignore[union-attr]
    e1, e2, e3, e4 = d.store.all()
    for i in range(20):
        run(d, req(f"f{i}", "flood"), (e2, e3, e4)[i % 3])
    for q in ("q1", "q2", "q3"):
        run(d, req(q, q), e2)
    crit = InferenceRequest(
        "crit", "m", prompt_tokens=10, max_tokens=4, priority=10, fairness_id="flood",
        subset=frozenset({e1.address}),
    )  # fmt: skip
    shed = InferenceRequest("shed", "m", prompt_tokens=10, max_tokens=4, priority=-1, fairness_id="b")
    ctl.enqueue(crit, 0.0)
    ctl.enqueue(shed, 0.0)
    got = [item.req.request_id for item in dispatch_ready(ctl, 0.0, d.saturated)]
    assert got[:1] == ["crit"], f"dispatched {got}"
