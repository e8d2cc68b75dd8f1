"""Review s7-fc's findings on the fair-share headroom (8471673, ff2d3e1): each test failed on main at
156020a (before the fixes) at the assertion its finding names."""

from __future__ import annotations

from typing import Any

import pytest

from kvgate.config.director import build_director
from kvgate.datalayer.endpoint import Endpoint
from kvgate.datalayer.store import EndpointStore
from kvgate.flowcontrol.config import FlowControlConfig, parse_flow_control
from kvgate.flowcontrol.controller import FlowController
from kvgate.flowcontrol.dispatcher import dispatch_ready
from kvgate.requestcontrol.director import Director
from kvgate.scheduling.framework import ConfigError, Params
from kvgate.scheduling.types import InferenceRequest


def req(rid: str, flow: str, arrival: float = 0.0, slo_ms: int | None = None) -> InferenceRequest:
    headers = {"x-slo-ttft-ms": str(slo_ms)} if slo_ms else {}
    return InferenceRequest(rid, "m", prompt_tokens=10, max_tokens=4, fairness_id=flow,
                            headers=headers, arrival_time=arrival)  # fmt: skip


def director(
    flow_control: dict[str, Any], detector: dict[str, Any], now: list[float], n: int = 1
) -> Director:
    cfg: dict[str, Any] = {
        "featureGates": ["flowControl"],
        "flowControl": flow_control,
        "saturationDetector": {"type": "concurrency-detector", "parameters": detector},
        "plugins": [{"type": "queue-scorer"}],
        "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": "queue-scorer"}]}],
    }
    store = EndpointStore.from_addresses([f"10.0.0.{i}:8000" for i in range(1, n + 1)])
    return build_director(cfg, store, clock=lambda: now[0], flow_metrics=False)


def send(d: Director, r: InferenceRequest, first_token: bool = True) -> Endpoint:
    ep = d.pick(r).primary
    d.on_dispatched(r, ep)
    if first_token:
        d.on_first_token(r, ep)
    return ep


# -- F1 (8471673): a pending bound looser than the running bound closes the pool to an over-share flow


def test_a_loose_pending_bound_does_not_close_the_running_slots() -> None:
    """maxPendingRequests 16 > maxConcurrency 4 (a pending bound that does not bind), headroom 0.25:
    the reservation is 0.25 x 16 = 4 running slots, all of them (the denominator is clamped to 1e-9),
    so an over-share flow is 'saturated' as soon as ONE request runs anywhere in a 4-endpoint pool.
    With maxPendingRequests 4 the same state is not saturated: loosening a bound tightens the gate."""
    now = [0.0]
    fc = {"fairShareHeadroom": 0.25, "fairShareHeadroomOn": "pending"}
    loose = director(fc, {"maxConcurrency": 4, "maxPendingRequests": 16}, now, n=4)
    tight = director(fc, {"maxConcurrency": 4, "maxPendingRequests": 4}, now, n=4)
    for d in (tight, loose):
        send(d, req("b0", "b"))  # one quiet request decoding: 1 of 16 running slots in the pool
        ctl = d.flow.ctl  # type: ignore[union-attr]
        a1 = req("a1", "a")
        for r in (a1, req("a2", "a"), req("a3", "a")):
            ctl.enqueue(r, 0.0)  # a's backlog: a is over its share (3 vs b's 1)
        assert ctl.over_share("a")
        # 1 of 16 running slots, 0 pending: far below 1 - 0.25 of anything
        assert not d.saturated(a1), d.detector.max_pending  # type: ignore[union-attr]


# -- F2 (ff2d3e1): fairShareSLOFirst looks at one head per band only


def test_slo_first_a_due_request_is_not_blocked_by_another_flows_head() -> None:
    """Two flows over their share (a, c), round-robin: a's turn, a's head is not due; c's head is due
    (its deadline within 5 x the service p90). dispatch_ready stops at a's head (`break`), so c's
    request is held back although the whole gate has room: it then misses its SLO, the thing
    fairShareSLOFirst says never happens ('the headroom never costs a request its SLO')."""
    now = [10.0]
    fc = {"fairShareHeadroom": 0.5, "fairShareHeadroomOn": "pending", "fairShareSLOFirst": True,
          "fairnessPolicy": "round-robin"}  # fmt: skip
    d = director(fc, {"maxConcurrency": 100, "maxPendingRequests": 2}, now)
    ctl = d.flow.ctl  # type: ignore[union-attr]
    for _ in range(40):
        ctl.observe_service_ttft(0.1)  # service p90 0.1 s: due within 0.5 s of the deadline
    send(d, req("b0", "b", 10.0), first_token=False)  # 1 of 2 pending slots: over-share gate closed
    for i in range(3):  # a first in round-robin order, but arrived later (deadline 11.5)
        ctl.enqueue(req(f"a{i}", "a", 10.5, slo_ms=1000), 10.0)
    for i in range(3):  # c arrived earlier (deadline 11.0)
        ctl.enqueue(req(f"c{i}", "c", 10.0, slo_ms=1000), 10.0)
    assert ctl.over_share("a") and ctl.over_share("c")
    now[0] = 10.55
    assert ctl.slo_due(req("c0", "c", 10.0, slo_ms=1000), now[0])  # c0 is due
    assert not d.saturated(req("c0", "c", 10.0, slo_ms=1000))  # ... and the whole gate has room
    taken = list(dispatch_ready(ctl, now[0], d.saturated))
    assert [it.flow for it in taken][:1] == ["c"], [it.req.request_id for it in taken]


# -- F3 (ff2d3e1): a flow whose only demand is a held request counts in the total, not in the flows


def test_a_held_request_counts_its_flow_as_active() -> None:
    """``queued`` counts held requests (the docstring: 'held ones included') and so does ``count``,
    but ``hold`` does not make the flow active (``_places``): b with 2 of 3 requests against a's
    1 (held: sloAdmission / holdPredictedMisses) is not over its share (2 x 1 flow > 3 is false)."""
    ctl = FlowController(FlowControlConfig(fair_share_headroom=0.5))
    ctl.started("b")
    ctl.started("b")
    item = ctl.enqueue(req("a1", "a"), 0.0)
    assert ctl.over_share("b")  # 2 vs a mean of 1.5, while a1 is queued
    ctl.take(item, 0.0, record=False)
    ctl.hold(item, 0.0, 1.0)  # its pick said "not now": still queued (count, queued), held
    assert ctl.queued == {"a": 1} and ctl.count == 1
    assert ctl.active_flows == 2  # a still wants a request
    assert ctl.over_share("b")


# -- F4: NaN passes the [0, 1) check of fairShareHeadroom (and every get_float range)


@pytest.mark.parametrize("key", ["fairShareHeadroom", "sloAdmissionConfidence"])
def test_nan_is_refused(key: str) -> None:
    raw: dict[str, Any] = {key: float("nan")}  # YAML `.nan`
    with pytest.raises(ConfigError, match=rf"^flowControl\.{key}: "):
        parse_flow_control(raw)


def test_a_nan_headroom_is_refused_at_load() -> None:
    """`fairShareHeadroom: .nan` (YAML) passed the [0, 1) checks; once loaded it was truthy and
    `s >= 1 - nan` is False, so an over-share flow went past even a saturated pool. Refused now,
    the error naming the key, as any other bad value."""
    import yaml

    fc = yaml.safe_load("fairShareHeadroom: .nan")
    with pytest.raises(ConfigError, match=r"flowControl\.fairShareHeadroom: must be a finite number"):
        director(fc, {"maxConcurrency": 2}, [0.0])


@pytest.mark.parametrize("value", [float("inf"), float("-inf")])
def test_an_infinite_float_is_refused(value: float) -> None:
    with pytest.raises(ConfigError, match=r"^flowControl\.fairShareHeadroom: must be a finite number"):
        parse_flow_control({"fairShareHeadroom": value})
    with pytest.raises(ConfigError, match=r"^p\.x: must be a finite number"):
        Params({"x": value}, "p").get_float("x", 0.0, min=0.0)


def test_slo_first_a_head_not_yet_due_stays_held_back() -> None:
    """The other side of the F2 fix: before c's deadline is within 5 service p90s, c waits as a does
    (the headroom holds both back); at 10.55 it goes first."""
    now = [10.0]
    fc = {"fairShareHeadroom": 0.5, "fairShareHeadroomOn": "pending", "fairShareSLOFirst": True,
          "fairnessPolicy": "least-attained-service"}  # fmt: skip
    d = director(fc, {"maxConcurrency": 100, "maxPendingRequests": 2}, now)
    ctl = d.flow.ctl  # type: ignore[union-attr]
    for _ in range(40):
        ctl.observe_service_ttft(0.1)
    send(d, req("b0", "b", 10.0), first_token=False)
    for i in range(3):
        ctl.enqueue(req(f"a{i}", "a", 10.5, slo_ms=1000), 10.0)
    for i in range(3):
        ctl.enqueue(req(f"c{i}", "c", 10.0, slo_ms=1000), 10.0)
    now[0] = 10.45  # c's deadline (11.0) is 0.55 s away: not due yet
    assert list(dispatch_ready(ctl, now[0], d.saturated)) == []
    now[0] = 10.55
    taken = list(dispatch_ready(ctl, now[0], d.saturated))
    assert [it.req.request_id for it in taken][:1] == ["c0"]


@pytest.mark.parametrize("seed", range(40))
def test_the_active_flows_are_the_flows_with_demand(seed: int) -> None:
    """Random enqueue / take / hold / record / cancel / expire / give-up / unhold / start / end (the
    reviewer's accounting fuzz): the per-flow counts match the live requests, and the active flows
    are exactly those in flight or queued, held ones included (F3: held-only flows were missing)."""
    import contextlib
    import random
    from collections import Counter

    from kvgate.flowcontrol.controller import DISPATCHED, REJECTED_OTHER
    from kvgate.scheduling.types import ShedError

    rng = random.Random(seed)
    cfg = FlowControlConfig(fair_share_headroom=0.5, ttl=rng.choice([0.5, 5.0]),
                            max_requests=rng.choice([0, 8, 50]), slo_admission=True,
                            ordering=rng.choice(["fcfs", "slo-feasible", "edf"]))  # fmt: skip
    ctl = FlowController(cfg)
    items = []
    now = 0.0
    inflight: Counter[str] = Counter()
    for step in range(300):
        now += rng.random() * 0.05
        op = rng.random()
        if op < 0.35:
            r = InferenceRequest(f"r{step}", "m", prompt_tokens=5, fairness_id=rng.choice("abc"),
                                 priority=rng.choice([0, 1, -1]), arrival_time=now)  # fmt: skip
            with contextlib.suppress(ShedError):
                items.append(ctl.enqueue(r, now))
        elif op < 0.55:
            it = ctl.head(now)
            if it:
                ctl.take(it, now, record=False)
                k = rng.random()
                if k < 0.3:
                    ctl.hold(it, now, now + rng.random() * 0.2)
                elif k < 0.4:
                    ctl.record(it, REJECTED_OTHER, now)
                else:
                    ctl.record(it, DISPATCHED, now)
                    ctl.started(it.flow)
                    inflight[it.flow] += 1
        elif op < 0.65 and items:
            ctl.cancel(rng.choice(items), now)
        elif op < 0.75:
            ctl.expire(now)
            ctl.give_ups(now)
            ctl.unhold(now)
        elif op < 0.85:
            ctl.unhold(now)
        elif inflight:
            f = rng.choice(list(inflight))
            ctl.ended(f)
            inflight[f] -= 1
            if not inflight[f]:
                del inflight[f]
        live = [i for i in items if not i.done]
        assert dict(Counter(i.flow for i in live)) == ctl.queued
        assert len(live) == ctl.count
        assert dict(inflight) == ctl.inflight
        assert set(inflight) | {i.flow for i in live} == set(ctl._places), (step, ctl._places)


@pytest.mark.parametrize("weight", [".nan", ".inf", "-1"])
def test_a_scorer_weight_must_be_finite(weight: str) -> None:
    """The profile's scorer weight (read outside ``Params``) had the same gap: `.nan` passed `>= 0`."""
    import yaml

    cfg = yaml.safe_load(
        "plugins: [{type: queue-scorer}]\n"
        f"schedulingProfiles: [{{name: default, plugins: [{{pluginRef: queue-scorer, weight: {weight}}}]}}]"
    )
    store = EndpointStore.from_addresses(["10.0.0.1:8000"])
    where = r"^schedulingProfiles\[0\]\.plugins\[0\]\.weight: "
    with pytest.raises(ConfigError, match=where + "must be a finite"):
        build_director(cfg, store, flow_metrics=False)


# -- N2 (review s7-final-a): due_head parsed every flow head's SLO header on every blocked pass


def test_slo_first_a_blocked_pass_does_not_parse_every_flows_slo_header(monkeypatch) -> None:
    """The TTFT deadline is computed once, at enqueue; a dispatch pass blocked by a saturated pool
    (the state a many-tenant flood keeps the dispatcher in) reads it instead of parsing each flow
    head's SLO header again (2,400 flows: ~10x the pass's CPU)."""
    import kvgate.flowcontrol.controller as controller

    calls = [0]
    parse = controller.header_ms

    def counting(headers: Any, names: tuple[str, ...]) -> float | None:
        calls[0] += 1
        return parse(headers, names)

    monkeypatch.setattr(controller, "header_ms", counting)
    now = [10.0]
    d = director({"fairShareHeadroom": 0.5, "fairShareSLOFirst": True}, {"maxConcurrency": 1}, now)
    ctl = d.flow.ctl  # type: ignore[union-attr]
    for _ in range(40):
        ctl.observe_service_ttft(0.1)
    send(d, req("b0", "b", 10.0), first_token=False)  # the pool is saturated for everyone
    flows, passes = 200, 5
    calls[0] = 0
    for f in range(flows):
        for i in range(2):
            ctl.enqueue(req(f"f{f}-{i}", f"f{f}", 10.0, slo_ms=60000), 10.0)
    assert calls[0] == 2 * flows  # once per request
    calls[0] = 0
    for _ in range(passes):
        assert list(dispatch_ready(ctl, now[0], d.saturated)) == []
    assert calls[0] <= 2 * passes, calls[0]  # the gate's own look at the chosen head, not one per flow
