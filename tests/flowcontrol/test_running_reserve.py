"""Running slots in a small-batch fleet (2 x 16 in the flood benchmark):

- ``flowControl.freeSlotPick`` (off; on with the reserve): flow control's late pick goes to an
  endpoint with a free running slot when one has (the gate is the
  pool's mean, so without this a request could leave the EPP for a full server and wait in its queue
  for a whole request to finish while another server could start it now);
- ``flowControl.fairShareRunningReserve``: the requests the fair-share headroom holds back leave only
  while more than F running slots are free, F sized on the measured rates at which the others take
  free slots and every request's finish gives one back (session 10; until then at most ``slots - R``
  slots, R sized by Erlang B, later C, on the others' load).
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from kvgate.config.director import build_director
from kvgate.datalayer.endpoint import Endpoint, EndpointMetrics
from kvgate.datalayer.store import EndpointStore
from kvgate.flowcontrol.config import FlowControlConfig, parse_flow_control
from kvgate.flowcontrol.controller import LOAD_WINDOW_S, FlowController, free_slots
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


# -- the controller -----------------------------------------------------------------------------------


def controller(**kw: Any) -> FlowController:
    base: dict[str, Any] = {
        "fair_share_headroom": 0.75,
        "fair_share_ttft_target": 0.05,
        "fair_share_running_reserve": True,
    }
    return FlowController(FlowControlConfig(**{**base, **kw}))


def test_the_rates_are_the_others_dispatches_and_every_finish() -> None:
    ctl = controller()
    t = 0.0
    for i in range(400):  # 10 a second for 40 s, each finishing at once
        t = i * 0.1
        r = req(f"q{i}", f"q{i % 4}")
        assert ctl.started(r.fairness_id, r, t) is False  # (not held back: it takes a free slot)
        ctl.ended(r.fairness_id, t)
    take, give = ctl.rates(t)
    assert take == pytest.approx(10.0, rel=0.05) and give == pytest.approx(10.0, rel=0.05)
    # A request held back at dispatch does not count as taking one; its finish gives one back.
    b = req("b", "batch", priority=-1)  # sheddable: held back by the target's headroom
    assert ctl.started("batch", b, t) is True
    ctl.ended("batch", t)
    take2, give2 = ctl.rates(t)
    assert take2 == pytest.approx(take) and give2 == pytest.approx(give + 1 / LOAD_WINDOW_S)
    # Both decay with no event: over LOAD_WINDOW_S, by e. A finish of an unknown flow is not counted.
    ctl.ended("nobody", t)
    assert ctl.rates(t + LOAD_WINDOW_S)[0] == pytest.approx(take / math.e)
    assert ctl.rates(t + LOAD_WINDOW_S)[1] == pytest.approx(give2 / math.e)
    assert ctl.free_reserve(t, 24) == free_slots(take, give2, ctl.reserve_miss, 24)
    assert ctl.reserve_miss == pytest.approx(ctl.aim / 2)


def test_reserve_full_holds_back_only_the_held_back_requests_at_the_free_slots_kept() -> None:
    ctl = controller()
    t = 0.0
    for i in range(100):  # the others take 2 free slots a second, every request finishes at 10 a second
        t = i * 0.1
        r = req(f"q{i}", f"q{i % 2}") if i % 5 == 0 else req(f"b{i}", "batch", priority=-1)
        ctl.started(r.fairness_id, r, t)
        ctl.ended(r.fairness_id, t)
    for f in ("q1", "q2"):  # two of theirs in flight
        ctl.started(f, req(f, f), t)
    keep = ctl.free_reserve(t, 6)
    assert keep == free_slots(*ctl.rates(t), ctl.reserve_miss, 6) and 1 <= keep < 6
    batch = [req(f"b{i}", "batch", priority=-1) for i in range(8)]
    n = 0
    while not ctl.reserve_full(batch[n], t, 8):
        assert ctl.started("batch", batch[n], t) is True
        n += 1
    # Held-back work fills all but the free slots kept (before session 10: all but R, the others'
    # two in flight counted inside R).
    assert n == 8 - 2 - keep
    assert not ctl.reserve_full(req("q9", "q9"), t, 8)  # not held back: never by the reserve
    off = FlowController(FlowControlConfig(fair_share_headroom=0.75, fair_share_ttft_target=0.05))
    assert not off.reserve_full(batch[0], t, 0)  # the key off: never


def test_the_reserve_is_at_most_the_headroom_share_of_the_slots() -> None:
    ctl = controller(fair_share_headroom=0.25)
    for i in range(100):
        r = req(f"q{i}", "q")
        ctl.started("q", r, 0.0)  # they take slots, none comes back: the model asks for every one
    assert ctl.free_reserve(0.0, 4) == 4
    assert ctl.reserve_full(req("b", "batch", priority=-1), 0.0, 16)  # 16 - 4 = 12 of 16 in flight
    ctl2 = controller(fair_share_headroom=0.25)
    ctl2.started("q", req("q", "q"), 0.0)
    assert not ctl2.reserve_full(req("b", "batch", priority=-1), 0.0, 16)  # 1 of 16: 12 may go


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
    for i in range(10):  # a quiet request a second, and 10 batch requests a second finishing
        q = req(f"q{i}", "q")
        d.on_dispatched(q, ep)
        for k in range(10):
            b = req(f"old{i}-{k}", "batch", priority=-1)
            d.on_dispatched(b, ep)
            d.on_finished(b, ep, Usage(10, 4, 0), True)
        clock.now += 1.0
        d.on_first_token(q, ep)
        d.on_finished(q, ep, Usage(10, 4, 0), True)
    d.on_dispatched(req("q-live", "q"), ep)  # one quiet request running
    keep = ctl.free_reserve(clock.now, 12)
    assert 1 <= keep <= 3  # (11 finishes a second for 1 taken: a few free slots do)
    sent = 0
    while not d.saturated(b := req(f"b{sent}", "batch", priority=-1)):
        d.on_dispatched(b, ep)
        d.on_first_token(b, ep)  # running: neither the pending nor the adapted headroom binds
        sent += 1
        assert sent <= 16
    assert sent == 16 - 1 - keep  # (before session 10: 16 - R, R from the quiet flow's load)
    assert not d.saturated(req("q2", "q"))  # the quiet flow has the free slots


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
