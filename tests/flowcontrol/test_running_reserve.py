"""Running slots in a small-batch fleet (2 x 16 in the flood benchmark):

- ``flowControl.freeSlotPick`` (off; on with the reserve): flow control's late pick goes to an
  endpoint with a free running slot when one has (the gate is the
  pool's mean, so without this a request could leave the EPP for a full server and wait in its queue
  for a whole request to finish while another server could start it now);
- ``flowControl.fairShareRunningReserve``: the requests the fair-share headroom holds back may hold at
  most ``slots - R`` running slots, R sized by Erlang B on the measured load of the others.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from kvgate.config.director import build_director
from kvgate.datalayer.endpoint import Endpoint, EndpointMetrics
from kvgate.datalayer.store import EndpointStore
from kvgate.flowcontrol.config import FlowControlConfig, parse_flow_control
from kvgate.flowcontrol.controller import (
    LOAD_WINDOW_S,
    RESERVE_MISS,
    FlowController,
    erlang_b_servers,
    erlang_c_servers,
)
from kvgate.requestcontrol.director import Director
from kvgate.scheduling.framework import ConfigError
from kvgate.scheduling.types import InferenceRequest, PickResult, Usage


def req(rid: str, flow: str, priority: int = 0) -> InferenceRequest:
    return InferenceRequest(rid, "m", prompt_tokens=10, max_tokens=4, priority=priority, fairness_id=flow)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def director(
    addresses: list[str],
    *,
    max_concurrency: int = 2,
    max_pending: int = 2,
    flow_control: dict[str, Any] | None = None,
    clock: Clock | None = None,
) -> Director:
    cfg: dict[str, Any] = {
        "featureGates": ["flowControl"],
        "flowControl": flow_control or {},
        "saturationDetector": {
            "type": "concurrency-detector",
            "parameters": {"maxConcurrency": max_concurrency, "maxPendingRequests": max_pending},
        },
        "plugins": [{"type": "queue-scorer"}],
        "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": "queue-scorer"}]}],
    }
    kw: dict[str, Any] = {"clock": clock} if clock is not None else {}
    return build_director(cfg, EndpointStore.from_addresses(addresses), flow_metrics=False, **kw)


def fill(ep: Endpoint, running: int, pending: int = 0) -> None:
    ep.inflight.requests = running + pending
    ep.inflight.decoding = running


# -- the late pick ----------------------------------------------------------------------------------


def _two_servers(max_pending: int = 2, pick: bool = True) -> tuple[Director, Endpoint, Endpoint]:
    fc = {"freeSlotPick": True} if pick else {}
    d = director(
        ["10.0.0.1:8000", "10.0.0.2:8000"], max_concurrency=2, max_pending=max_pending, clock=Clock(),
        flow_control=fc,
    )  # fmt: skip
    full, free = d.store.all()
    # The scorer prefers the full server (its scraped queue is empty, the other's is not) ...
    full.metrics = EndpointMetrics(waiting_queue_size=0, updated_at=0.0)
    free.metrics = EndpointMetrics(waiting_queue_size=8, updated_at=0.0)
    fill(full, running=2)  # ... but its running batch is full (2 of 2)
    fill(free, running=1)
    return d, full, free


def test_the_late_pick_goes_to_an_endpoint_with_a_free_running_slot() -> None:
    d, full, free = _two_servers()
    assert d.pick(req("x", "a")).primary is full  # the profile alone: the full server
    assert not d.saturated(req("r", "a"))  # the pool's mean: 3 of 4 running slots
    got = d.flow.arrive(req("r", "a"), 0.0, None)  # type: ignore[union-attr]
    assert isinstance(got, PickResult)
    assert got.primary is free


def test_every_server_full_or_none_full_the_profile_chooses_among_all() -> None:
    d, full, free = _two_servers()
    fill(free, running=2)
    got = d._pick_late(req("r", "a"), False)
    assert got.primary is full  # no restriction: the profile's choice
    fill(full, running=0)
    fill(free, running=0)
    assert d._pick_late(req("r2", "a"), False).primary is full


def test_the_free_slot_pick_is_off_by_default() -> None:
    d, full, _free = _two_servers(pick=False)
    assert d._pick_late(req("r", "a"), False).primary is full  # the profile's choice, as before


def test_the_running_reserve_brings_the_free_slot_pick_and_a_pending_bound_is_needed() -> None:
    fc = {"fairShareHeadroom": 0.5, "fairShareRunningReserve": True}
    d = director(["10.0.0.1:8000"], flow_control=fc)
    assert d.flow is not None and d.flow.ctl.cfg.picks_free_slot
    with pytest.raises(ConfigError, match=r"^flowControl\.freeSlotPick: needs a saturation detector"):
        director(["10.0.0.1:8000"], max_pending=0, flow_control={"freeSlotPick": True})


# -- Erlang B ---------------------------------------------------------------------------------------


def _erlang_b(n: int, a: float) -> float:
    """The closed form: (a^n / n!) / sum_k (a^k / k!)."""
    terms = [a**k / math.factorial(k) for k in range(n + 1)]
    return terms[-1] / sum(terms)


@pytest.mark.parametrize("load", [0.5, 3.0, 7.0, 7.5, 30.0])
def test_erlang_b_servers_is_the_fewest_with_blocking_at_most_the_miss(load: float) -> None:
    n = erlang_b_servers(load, 0.05, 10_000)
    assert _erlang_b(n, load) <= 0.05 < _erlang_b(n - 1, load)
    assert erlang_b_servers(load, 0.05, 3) == min(n, 3)
    assert erlang_b_servers(0.0, 0.05, 10) == 1  # (one slot: an arrival finds it free)


# -- the controller -----------------------------------------------------------------------------------


def controller(**kw: Any) -> FlowController:
    base: dict[str, Any] = {
        "fair_share_headroom": 0.75,
        "fair_share_ttft_target": 0.05,
        "fair_share_running_reserve": True,
    }
    return FlowController(FlowControlConfig(**{**base, **kw}))


def test_the_offered_load_is_rate_times_residence_of_the_requests_not_held_back() -> None:
    ctl = controller()
    t = 0.0
    for i in range(400):  # 10 a second for 40 s, each finishing 2 s after dispatch
        t = i * 0.1
        r = req(f"q{i}", f"q{i % 4}")
        assert ctl.started(r.fairness_id, r, t) is False  # (not held back: counted)
        ctl.ended(r.fairness_id, 2.0, False)
    assert ctl.offered_load(t) == pytest.approx(20.0, rel=0.05)
    # Requests held back at dispatch count neither in the rate nor in the residence.
    b = req("b", "batch", priority=-1)  # sheddable: held back by the target's headroom
    assert ctl.started("batch", b, t) is True
    ctl.ended("batch", 60.0, True)
    assert ctl.offered_load(t) == pytest.approx(20.0, rel=0.05)
    # The rate decays with no dispatch: over LOAD_WINDOW_S, by e.
    assert ctl.offered_load(t + LOAD_WINDOW_S) == pytest.approx(20.0 / math.e, rel=0.05)
    # (session 9: sized by Erlang C, the probability of waiting, on what the engine's misses leave)
    assert ctl.running_reserve(t, 32) == erlang_c_servers(ctl.offered_load(t), ctl.reserve_miss, 24)
    assert ctl.reserve_miss == pytest.approx(0.1 - RESERVE_MISS)


def test_a_flood_counts_as_held_back_once_over_its_share_and_a_held_dispatch_until_it_ends() -> None:
    ctl = controller()
    for f in ("q1", "q2", "q3", "q4"):
        ctl.started(f, req(f, f), 0.0)
    for i in range(2):  # its first requests: not over twice the mean when each is sent
        assert ctl.started("flood", req(f"f{i}", "flood"), 0.0) is False
    assert ctl.held_inflight() == 0  # 2 of 6 over 5 flows: not over twice the mean (2.4)
    backlog = [ctl.enqueue(req(f"f{i}", "flood"), 0.0) for i in range(2, 6)]
    assert ctl.held_inflight() == 2  # 6 of 10: over; all of its requests in flight count now
    assert ctl.started("flood", req("f9", "flood"), 0.0) is True
    assert ctl.held_inflight() == 3
    for item in backlog:  # its backlog gone (cancelled, say) ...
        ctl.cancel(item, 0.0)
    ctl.ended("flood", 1.0, False)  # ... and one of its first requests done: under its share again
    assert not ctl.over_share("flood")
    assert ctl.held_inflight() == 1  # the one held back at its dispatch still counts
    ctl.ended("flood", 1.0, True)
    assert ctl.held_inflight() == 0


def test_reserve_full_holds_back_only_the_held_back_requests_at_slots_minus_the_reserve() -> None:
    ctl = controller()
    quiet = req("q", "q")
    ctl.started("q", quiet, 0.0)
    ctl.ended("q", 1.0, False)  # residence 1 s
    for f in ("q1", "q2"):
        ctl.started(f, req(f, f), 0.0)
    reserve = ctl.running_reserve(0.0, 8)
    assert 1 <= reserve <= 6
    batch = [req(f"b{i}", "batch", priority=-1) for i in range(8)]
    n = 0
    while not ctl.reserve_full(batch[n], 0.0, 8):
        assert ctl.started("batch", batch[n], 0.0) is True
        n += 1
    assert n == 8 - ctl.running_reserve(0.0, 8)
    assert not ctl.reserve_full(req("q9", "q9"), 0.0, 8)  # not held back: never by the reserve
    off = FlowController(FlowControlConfig(fair_share_headroom=0.75, fair_share_ttft_target=0.05))
    assert not off.reserve_full(batch[0], 0.0, 0)  # the key off: never


def test_the_reserve_is_at_most_the_headroom_share_of_the_slots() -> None:
    ctl = controller(fair_share_headroom=0.25)
    for i in range(100):
        r = req(f"q{i}", "q")
        ctl.started("q", r, 0.0)
        ctl.ended("q", 10.0, False)  # a load far above the slots
    assert ctl.running_reserve(0.0, 16) == 4


# -- the director and the config ----------------------------------------------------------------------


def test_the_director_gates_held_back_work_on_the_reserve() -> None:
    clock = Clock()
    fc = {
        "fairShareHeadroom": 0.75,
        "fairShareHeadroomOn": "pending",
        "fairShareTTFTTarget": "50ms",
        "fairShareRunningReserve": True,
    }
    d = director(["10.0.0.1:8000"], max_concurrency=16, max_pending=16, flow_control=fc, clock=clock)
    ctl = d.flow.ctl  # type: ignore[union-attr]
    ep = d.store.all()[0]
    q = req("q", "q")
    d.on_dispatched(q, ep)
    clock.now = 1.0
    d.on_first_token(q, ep)
    d.on_finished(q, ep, Usage(10, 4, 0), True)  # one quiet request a second, 1 s each: load ~ 0.2
    reserve = ctl.running_reserve(clock.now, 16)
    assert reserve >= 1
    sent = 0
    while not d.saturated(b := req(f"b{sent}", "batch", priority=-1)):
        d.on_dispatched(b, ep)
        d.on_first_token(b, ep)  # running: neither the pending nor the adapted headroom binds
        sent += 1
        assert sent <= 16
    assert sent == 16 - reserve
    assert not d.saturated(req("q2", "q"))  # the quiet flow has the reserve


def test_config_key_and_its_errors() -> None:
    assert parse_flow_control({}).fair_share_running_reserve is False
    cfg = parse_flow_control({"fairShareHeadroom": 0.5, "fairShareRunningReserve": True})
    assert cfg.fair_share_running_reserve is True
    with pytest.raises(ConfigError, match=r"^flowControl\.fairShareRunningReserve: needs flowControl\.fair"):
        parse_flow_control({"fairShareRunningReserve": True})
    with pytest.raises(ConfigError, match=r"^flowControl\.fairShareRunningReserve: needs a saturation det"):
        director(
            ["10.0.0.1:8000"],
            max_pending=0,
            flow_control={"fairShareHeadroom": 0.5, "fairShareRunningReserve": True},
        )
