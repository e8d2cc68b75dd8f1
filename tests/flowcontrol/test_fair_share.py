"""``flowControl.fairShareHeadroom``: in-flight requests per flow, the under-share-first choice inside a
band, and the stricter gate for a flow over its fair share (off the whole saturation, or with
``fairShareHeadroomOn: pending`` off ``maxPendingRequests`` only)."""

from __future__ import annotations

from typing import Any

import pytest

from kvgate.config.director import build_director
from kvgate.datalayer.endpoint import Endpoint
from kvgate.datalayer.store import EndpointStore
from kvgate.flowcontrol.config import FlowControlConfig
from kvgate.flowcontrol.controller import FlowController
from kvgate.flowcontrol.saturation import ConcurrencyDetector, UtilizationDetector
from kvgate.requestcontrol.director import Director
from kvgate.scheduling.framework import ConfigError, PluginHandle
from kvgate.scheduling.types import InferenceRequest, Usage


def req(rid: str, flow: str, priority: int = 0) -> InferenceRequest:
    return InferenceRequest(rid, "m", prompt_tokens=10, max_tokens=4, priority=priority, fairness_id=flow)


def director(
    headroom: float, on: str = "pending", max_pending: int = 2, max_concurrency: int = 100
) -> Director:
    cfg: dict[str, Any] = {
        "featureGates": ["flowControl"],
        "flowControl": {
            "fairShareHeadroom": headroom,
            "fairShareHeadroomOn": on,
            "fairnessPolicy": "least-attained-service",
        },
        "saturationDetector": {
            "type": "concurrency-detector",
            "parameters": {"maxConcurrency": max_concurrency, "maxPendingRequests": max_pending},
        },
        "plugins": [{"type": "queue-scorer"}],
        "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": "queue-scorer"}]}],
    }
    return build_director(cfg, EndpointStore.from_addresses(["10.0.0.1:8000"]), flow_metrics=False)


def send(d: Director, r: InferenceRequest) -> Endpoint:
    ep = d.pick(r).primary
    d.on_dispatched(r, ep)
    return ep


def test_in_flight_per_flow_and_the_fair_share() -> None:
    ctl = FlowController(FlowControlConfig())
    for _ in range(3):
        ctl.started("a")
    assert not ctl.over_share("a")  # one flow alone never is over its share
    ctl.started("b")
    assert ctl.over_share("a") and not ctl.over_share("b")  # 3 vs a mean of 2
    assert not ctl.over_share("c")  # nothing in flight
    ctl.enqueue(req("q1", "c"), 0.0)  # a queued flow is active too: a mean of 4/3
    assert ctl.over_share("a") and not ctl.over_share("b")
    ctl.ended("a")
    ctl.ended("a")
    assert (ctl.inflight, ctl.inflight_total) == ({"a": 1, "b": 1}, 2)
    ctl.ended("zzz")  # unknown: ignored, the total stays right
    ctl.ended("a")
    assert (ctl.inflight, ctl.inflight_total) == ({"b": 1}, 1)


def test_a_backlog_counts_in_the_share() -> None:
    """At the start of a burst the pool is full of the other flows' requests: the flood's excess is in
    the queue, not in flight, and it is over its share all the same."""
    ctl = FlowController(FlowControlConfig())
    ctl.started("a")
    for _ in range(2):
        ctl.started("b")
    for i in range(5):
        ctl.enqueue(req(f"a{i}", "a"), 0.0)
    assert ctl.queued == {"a": 5}
    assert ctl.over_share("a") and not ctl.over_share("b")  # 6 wanted against 2 (a mean of 4)
    assert not ctl._under_share()("a") and ctl._under_share()("b")
    head = ctl.head()
    assert head is not None
    ctl.take(head, 0.0)
    ctl.cancel(ctl.head(), 0.0)  # type: ignore[arg-type]
    assert ctl.queued == {"a": 3}
    held = ctl.head()
    assert held is not None
    ctl.take(held, 0.0)
    assert ctl.queued == {"a": 2}
    ctl.hold(held, 0.0, until=1.0)  # turned back by its pick: queued again, out of the selection
    assert ctl.queued == {"a": 3}
    ctl.unhold(1.0)
    assert ctl.queued == {"a": 3}
    for item in ctl.expire(100.0):  # TTL: all gone, held one included
        assert item.done
    assert ctl.queued == {} and ctl.count == 0


def _recount(ctl: FlowController) -> int:
    """The active flows counted from scratch: in flight, or queued in any band."""
    active = set(ctl.inflight)
    for band in ctl.bands.values():
        active.update(band.flows)
    return len(active)


def test_the_active_flow_count_follows_enqueue_dispatch_hold_cancel_expire_and_finish() -> None:
    """``over_share`` reads a running count of the active flows (O(1)): it must match a recount
    through every way a request enters and leaves."""
    ctl = FlowController(FlowControlConfig(ttl=10.0))
    steps: list[int] = []

    def check() -> None:
        assert ctl.active_flows == _recount(ctl)
        steps.append(ctl.active_flows)

    a1 = ctl.enqueue(req("a1", "a"), 0.0)
    a2 = ctl.enqueue(req("a2", "a", priority=1), 0.0)  # the same flow in a second band
    b1 = ctl.enqueue(req("b1", "b"), 0.0)
    check()  # a, b
    ctl.take(a2, 0.0)
    ctl.started("a")  # dispatched: in flight, still queued in band 0
    check()
    ctl.take(a1, 0.0)
    ctl.started("a")
    check()  # a only in flight now
    ctl.hold(a1, 0.0, until=1.0)  # held: queued, in no flow queue; a still in flight
    ctl.ended("a")
    check()
    ctl.unhold(1.0)  # back in its band
    check()
    ctl.cancel(a1, 1.0)
    check()
    ctl.ended("a")
    check()  # b only
    c1 = ctl.enqueue(req("c1", "c"), 2.0)
    check()
    assert ctl.expire(20.0) == [b1, c1]
    check()
    ctl.ended("a")  # finished twice: ignored
    check()
    assert steps == [2, 2, 2, 2, 2, 2, 1, 2, 0, 0]
    assert not ctl.inflight and ctl.active_flows == 0


@pytest.mark.parametrize("fairness", ["least-attained-service", "round-robin", "global-strict"])
def test_flows_under_their_share_are_chosen_first_only_with_a_headroom(fairness: str) -> None:
    for headroom, first in ((0.0, "a"), (0.25, "b")):
        ctl = FlowController(FlowControlConfig(fairness=fairness, fair_share_headroom=headroom))
        ctl.started("a")
        ctl.started("a")
        ctl.enqueue(req("a1", "a"), 0.0)  # older, and its flow's turn (round robin)
        ctl.enqueue(req("b1", "b"), 1.0)
        head = next(ctl.heads())
        assert head.flow == first, (fairness, headroom)
    # With only the over-share flow queued, it is still its band's choice (it waits on the gate).
    ctl = FlowController(FlowControlConfig(fairness=fairness, fair_share_headroom=0.25))
    ctl.started("a")
    ctl.started("b")
    ctl.started("a")
    ctl.enqueue(req("a1", "a"), 0.0)
    assert next(ctl.heads()).flow == "a"


def test_concurrency_detector_reserves_from_the_pending_bound_only_when_asked() -> None:
    d = ConcurrencyDetector("c", PluginHandle(), max_requests=4, max_pending=2)
    ep = Endpoint("a:1")
    ep.inflight.requests = 1  # one request sent, no first token yet
    assert not d.saturated([ep], 0.0)
    for pending_only in (False, True):
        assert d.saturated_reserving([ep], 0.0, 0.5, pending_only)  # the last pending slot is kept
        assert not d.saturated_reserving([ep], 0.0, 0.25, pending_only)  # 1 of 1.5
    ep.inflight.requests, ep.inflight.decoding = 3, 3  # 3 of 4 running slots, none pending
    assert not d.saturated([ep], 0.0)
    assert d.saturated_reserving([ep], 0.0, 0.25)  # the whole score: running slots are kept too
    # Off the pending bound, the slots it reserves (0.5 x 2 = 1) are kept in the running bound too:
    # a request that finds a pending slot but no running one waits in the server's queue all the same.
    assert d.saturated_reserving([ep], 0.0, 0.5, pending_only=True)
    ep.inflight.requests, ep.inflight.decoding = 2, 2
    assert not d.saturated_reserving([ep], 0.0, 0.5, pending_only=True)  # 2 of the 3 left
    ep.inflight.requests, ep.inflight.decoding = 4, 4
    assert d.saturated([ep], 0.0) and d.saturated_reserving([ep], 0.0, 0.5, pending_only=True)
    # Without a pending bound, pending_only falls back to the whole score.
    d2 = ConcurrencyDetector("c2", PluginHandle(), max_requests=4)
    ep.inflight.requests, ep.inflight.decoding = 3, 3
    assert not d2.saturated([ep], 0.0)
    assert d2.saturated_reserving([ep], 0.0, 0.25, pending_only=True)
    assert not d2.saturated_reserving([ep], 0.0, 0.2, pending_only=True)


def test_utilization_detector_reserves_from_the_whole_saturation() -> None:
    from kvgate.datalayer.endpoint import EndpointMetrics

    u = UtilizationDetector("u", PluginHandle())
    ep = Endpoint("a:1", metrics=EndpointMetrics(waiting_queue_size=4, kv_cache_usage=0.1, updated_at=0.0))
    assert not u.saturated([ep], 0.0)
    assert u.saturated_reserving([ep], 0.0, 0.2) and not u.saturated_reserving([ep], 0.0, 0.1)


def test_the_director_gates_a_flow_over_its_share_earlier() -> None:
    d = director(headroom=0.5)
    a1 = req("a1", "a")
    send(d, a1)
    ctl = d.flow.ctl  # type: ignore[union-attr]
    assert ctl.inflight == {"a": 1}
    assert not d.saturated(req("a2", "a"))  # alone: no share to exceed, 1 of 2 pending slots
    a2 = req("a2", "a")
    ctl.enqueue(a2, 0.0)  # (the request the gate is asked about is the queued head)
    ctl.enqueue(req("b1", "b"), 0.0)  # flow b waits: a now wants more than its share (2 vs 1)
    assert d.saturated(a2)  # the last pending slot is b's
    assert not d.saturated(req("b2", "b"))
    # Once b has as many in flight as a, both are at their share: the whole bound again.
    b0 = req("b0", "b")
    ep = send(d, b0)
    assert ctl.inflight == {"a": 1, "b": 1}
    assert d.saturated(req("a3", "a"))  # 2 of 2 pending: saturated for everyone
    d.on_first_token(a1, ep)
    assert not d.saturated(req("a3", "a"))
    d.on_finished(a1, ep, Usage(10, 4, 0), True)
    d.on_finished(b0, ep, Usage(10, 4, 0), True)
    assert (ctl.inflight, ctl.inflight_total) == ({}, 0)


def test_the_director_keeps_running_slots_with_the_default_bound() -> None:
    d = director(headroom=0.5, on="saturation", max_pending=0, max_concurrency=2)
    ctl = d.flow.ctl  # type: ignore[union-attr]
    ep = send(d, req("a1", "a"))
    d.on_first_token(req("a1", "a"), ep)  # running, not pending
    assert not d.saturated(req("a2", "a"))  # a alone: 1 of 2 running slots
    a2, b1 = req("a2", "a"), req("b1", "b")
    ctl.enqueue(a2, 0.0)
    ctl.enqueue(b1, 0.0)
    assert d.saturated(a2) and not d.saturated(b1)
    # ``pending`` without a pending bound would silently be the whole score: refused at load.
    with pytest.raises(ConfigError, match=r"^flowControl\.fairShareHeadroomOn: .*maxPendingRequests"):
        director(headroom=0.5, on="pending", max_pending=0, max_concurrency=2)


def test_the_pending_headroom_keeps_running_slots_too() -> None:
    """With small batches the running slots bind: a pending-only reservation would leave a flow under
    its share a pending slot but no running one (it would wait in the server's queue)."""
    d = director(headroom=0.5, on="pending", max_pending=2, max_concurrency=2)
    ctl = d.flow.ctl  # type: ignore[union-attr]
    a1 = req("a1", "a")
    ep = send(d, a1)
    d.on_first_token(a1, ep)  # running: 1 of 2 running slots, no pending one
    assert not d.saturated(req("a2", "a"))  # a alone: the whole gate
    a2, b1 = req("a2", "a"), req("b1", "b")
    ctl.enqueue(a2, 0.0)
    ctl.enqueue(b1, 0.0)  # b waits: a is over its share (2 vs 1)
    assert d.saturated(a2)  # the last running slot (0.5 x 2 pending slots = 1) is b's
    assert not d.saturated(b1)


def test_without_a_headroom_the_gate_is_unchanged() -> None:
    d = director(headroom=0.0)
    send(d, req("a1", "a"))
    d.flow.ctl.enqueue(req("b1", "b"), 0.0)  # type: ignore[union-attr]
    assert not d.saturated(req("a2", "a"))
    assert d.flow.ctl.inflight == {"a": 1}  # type: ignore[union-attr]  (counted all the same)


async def test_through_the_dispatcher_the_last_slot_waits_for_a_flow_under_its_share() -> None:
    import asyncio

    d = director(headroom=0.5)
    a0 = req("a0", "a")
    ep = send(d, a0)  # first of the endpoint's two pending slots
    flood = [asyncio.create_task(d.admit(req(f"a{i}", "a"))) for i in range(1, 4)]
    await asyncio.sleep(0.05)
    # a1 took the second slot (a alone is at its share); a2, a3 wait.
    assert [t.done() for t in flood] == [True, False, False]
    quiet = asyncio.create_task(d.admit(req("b1", "b")))
    await asyncio.sleep(0.05)
    assert not quiet.done()  # no slot free
    d.on_first_token(a0, ep)  # a slot frees: b (under its share) goes before a's backlog
    await asyncio.wait_for(quiet, 5.0)
    assert [t.done() for t in flood] == [True, False, False]
    d.on_first_token(req("a1", "a"), ep)  # 1 pending (b1), 1 slot free
    await asyncio.sleep(0.05)
    # a holds 2 in flight against b's 1: the last pending slot stays free for b (or another flow).
    assert [t.done() for t in flood] == [True, False, False]
    d.on_finished(a0, ep, Usage(10, 4, 0), True)  # 1 each in flight, but a's backlog is its demand
    await asyncio.sleep(0.05)
    assert [t.done() for t in flood] == [True, False, False]  # a wants 3 against b's 1: still over
    d.on_first_token(req("b1", "b"), ep)  # no request pending: a may fill the unreserved slot
    await asyncio.wait_for(flood[1], 5.0)
    d.flow.step()  # type: ignore[union-attr]  (a dispatch pass now: the next check is not vacuous)
    await asyncio.sleep(0)
    assert not flood[2].done()  # a2 pending: the last slot is kept again
    assert d.flow.ctl.queued == {"a": 1}  # type: ignore[union-attr]  (a3 still waits)
    for t in flood:
        t.cancel()
    await asyncio.gather(*flood, return_exceptions=True)


def test_config_defaults_and_values() -> None:
    from kvgate.flowcontrol.config import parse_flow_control

    off = parse_flow_control({})
    assert (off.fair_share_headroom, off.fair_share_headroom_on) == (0.0, "saturation")
    on = parse_flow_control({"fairShareHeadroom": 0.25, "fairShareHeadroomOn": "pending"})
    assert (on.fair_share_headroom, on.fair_share_headroom_on) == (0.25, "pending")


def _slo_req(rid: str, flow: str, arrival: float, slo_ms: int = 1000) -> InferenceRequest:
    return InferenceRequest(rid, "m", prompt_tokens=10, max_tokens=4, fairness_id=flow,
                            headers={"x-slo-ttft-ms": str(slo_ms)}, arrival_time=arrival)  # fmt: skip


def test_slo_first_lets_a_held_back_request_through_near_its_deadline() -> None:
    from kvgate.flowcontrol.controller import SLO_FIRST_MARGIN

    ctl = FlowController(FlowControlConfig(fair_share_headroom=0.5, fair_share_slo_first=True))
    ctl.started("a")
    ctl.started("a")
    ctl.started("b")
    r = _slo_req("a1", "a", arrival=10.0)  # deadline 11.0
    assert ctl.held_back(r, 10.1)  # no dispatch -> first token time seen yet: nothing is due
    for _ in range(40):
        ctl.observe_service_ttft(0.1)
    assert ctl.service_ttft == pytest.approx(0.1)
    assert ctl.held_back(r, 10.2)  # 0.8 s left: more than 5 x 0.1 s, it can wait
    assert ctl.held_back(r)  # (without a time: as before)
    assert not ctl.held_back(r, 11.0 - SLO_FIRST_MARGIN * 0.1 + 0.01)  # due: the whole gate
    assert not ctl.held_back(r, 10.85)
    assert ctl.held_back(r, 10.95)  # nearer than one p90: it misses anyway, held back as before
    assert not ctl.held_back(_slo_req("b1", "b", arrival=10.0), 10.2)  # under its share: never held
    off = FlowController(FlowControlConfig(fair_share_headroom=0.5))
    off.started("a")
    off.started("a")
    off.started("b")
    for _ in range(40):
        off.observe_service_ttft(0.1)
    assert off.held_back(r, 10.85)  # off by default


def test_slo_first_through_the_director_and_its_config() -> None:
    from kvgate.flowcontrol.config import parse_flow_control

    assert parse_flow_control({}).fair_share_slo_first is False
    on = parse_flow_control({"fairShareHeadroom": 0.5, "fairShareSLOFirst": True})
    assert on.fair_share_slo_first is True
    with pytest.raises(
        ConfigError, match=r"^flowControl\.fairShareSLOFirst: needs flowControl\.fairShareHeadroom"
    ):
        parse_flow_control({"fairShareSLOFirst": True})
    now = [10.0]
    cfg: dict[str, Any] = {
        "featureGates": ["flowControl"],
        "flowControl": {
            "fairShareHeadroom": 0.5,
            "fairShareHeadroomOn": "pending",
            "fairShareSLOFirst": True,
        },
        "saturationDetector": {
            "type": "concurrency-detector",
            "parameters": {"maxConcurrency": 100, "maxPendingRequests": 2},
        },
        "plugins": [{"type": "queue-scorer"}],
        "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": "queue-scorer"}]}],
    }
    d = build_director(
        cfg, EndpointStore.from_addresses(["10.0.0.1:8000"]), clock=lambda: now[0], flow_metrics=False
    )
    ctl = d.flow.ctl  # type: ignore[union-attr]
    for _ in range(40):
        ctl.observe_service_ttft(0.1)
    send(d, _slo_req("a0", "a", arrival=10.0))  # 1 of 2 pending slots
    a1 = _slo_req("a1", "a", arrival=10.0)
    ctl.enqueue(a1, 10.0)
    ctl.enqueue(_slo_req("b1", "b", arrival=10.0), 10.0)
    assert d.saturated(a1)  # over its share: the last pending slot is b's
    now[0] = 10.6  # 0.4 s to its deadline: due
    assert not d.saturated(a1)
