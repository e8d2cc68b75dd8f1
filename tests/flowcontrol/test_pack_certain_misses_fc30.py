"""``flowControl.packCertainMisses`` (issue #15, fc30): flow control's late pick sends a request the
fair-share headroom holds back that can no longer meet its TTFT SLO (a certain miss) to an endpoint whose
pending requests are all such, and the others to an endpoint with nothing pending. Synthetic endpoints,
no simulation, no clock: the held-back test is set on the flow controller, the counts by hand.

Fails on main 6d96a979 (the key is unknown there: ConfigError; ``Director._pack_misses`` is missing)."""

from __future__ import annotations

from typing import Any

import pytest

from kvgate.bench.flowcontrol_bench import arm_config
from kvgate.config.director import build_director
from kvgate.datalayer.endpoint import Endpoint
from kvgate.datalayer.store import EndpointStore
from kvgate.flowcontrol.config import parse_flow_control
from kvgate.flowcontrol.saturation import ConcurrencyDetector
from kvgate.requestcontrol.director import Director
from kvgate.scheduling.framework import ConfigError
from kvgate.scheduling.types import InferenceRequest

ADDRS = ["10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000"]


def _director(pack: bool = True) -> Director:
    cfg: dict[str, Any] = {
        "featureGates": ["flowControl"],
        "flowControl": {
            "fairShareHeadroom": 0.5,
            "fairShareHeadroomOn": "pending",
            "orderingPolicy": "slo-feasible",
            "packCertainMisses": pack,
        },
        "saturationDetector": {
            "type": "concurrency-detector",
            "parameters": {"maxConcurrency": 8, "maxPendingRequests": 2},
        },
        "plugins": [{"type": "active-request-scorer"}],
        "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": "active-request-scorer"}]}],
    }
    return build_director(cfg, EndpointStore.from_addresses(ADDRS), flow_metrics=False)


def _req(rid: str, arrival: float) -> InferenceRequest:
    # default TTFT SLO 2 s: deadline arrival + 2
    return InferenceRequest(rid, "m", prompt_tokens=10, max_tokens=4, arrival_time=arrival)


def _set(ep: Endpoint, requests: int, decoding: int) -> None:
    ep.inflight.requests, ep.inflight.decoding = requests, decoding


def _marks(d: Director) -> dict[str, int]:
    """The certain misses pending per endpoint (``InFlight.certain_misses``; the Director's own dict
    before wk33)."""
    return {ep.address: ep.inflight.certain_misses for ep in d.store.all() if ep.inflight.certain_misses}


def _held(d: Director, monkeypatch: pytest.MonkeyPatch, back: bool) -> None:
    assert d.flow is not None
    monkeypatch.setattr(d.flow.ctl, "held_back", lambda req, now=None, slo_deadline=None: back)
    d.flow.ctl.service_ttft = 1.0  # now (0) + 1 s past a deadline before 1 s: a certain miss


def test_the_key_needs_the_headroom_and_is_off_by_default() -> None:
    assert parse_flow_control({}).pack_certain_misses is False
    assert parse_flow_control({"fairShareHeadroom": 0.5, "packCertainMisses": True}).pack_certain_misses
    with pytest.raises(
        ConfigError, match=r"flowControl\.packCertainMisses: needs flowControl\.fairShareHeadroom"
    ):
        parse_flow_control({"packCertainMisses": True})
    doc = arm_config("kvgate-reserve-feasible", 30.0, headroom=0.75, pack_misses=True)
    assert doc["flowControl"]["packCertainMisses"] is True
    assert (
        "packCertainMisses" not in arm_config("kvgate-reserve-feasible", 30.0, headroom=0.75)["flowControl"]
    )


def test_a_certain_miss_joins_the_endpoint_whose_pending_are_all_certain_misses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    d = _director()
    _held(d, monkeypatch, True)
    first = d._pick_late(_req("m1", -5.0), False).primary  # nothing pending anywhere: the profile's pick
    assert _marks(d) == {first.address: 1}
    # the others are idle: the active-request scorer alone would send the next one elsewhere (fewer in flight)
    second = d._pick_late(_req("m2", -5.0), False).primary
    assert second is first
    assert _marks(d) == {first.address: 2}
    # at the pending bound (2) it is no longer open: a third goes where the pick puts it
    third = d._pick_late(_req("m3", -5.0), False).primary
    assert third is not first
    # first tokens and ends before one take the marks off
    d.on_first_token(_req("m1", -5.0), first, learn=False)
    d.on_finished(_req("m2", -5.0), first, None, False)  # ended before its first token
    d.on_finished(_req("m3", -5.0), third, None, False)
    assert _marks(d) == {}


def test_a_request_still_in_time_goes_to_an_endpoint_with_nothing_pending(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    d = _director()
    det = d.detector
    assert isinstance(det, ConcurrencyDetector)
    a, b, c = d.store.all()
    _set(a, 1, 0)
    a.inflight.certain_misses = 1  # a: one certain miss pending
    _set(b, 6, 6)  # b: nothing pending, a free running slot
    _set(c, 2, 1)  # c: one request pending that can still make it
    _held(d, monkeypatch, False)
    miss, only = d._pack_misses(_req("q", 0.0), det, None)
    assert not miss and only == [b]
    _set(b, 8, 8)  # b's running batch full: no such endpoint, the pick's own candidates
    assert d._pack_misses(_req("q", 0.0), det, None) == (False, None)
    # a request in time is no certain miss even when held back
    _held(d, monkeypatch, True)
    assert d._pack_misses(_req("q", 0.0), det, None)[0] is False


def test_without_the_key_the_late_pick_marks_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    d = _director(pack=False)
    _held(d, monkeypatch, True)
    d._pick_late(_req("m1", -5.0), False)
    d._pick_late(_req("m2", -5.0), False)
    assert _marks(d) == {}


def test_prefill_alone_pick_is_the_second_half_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_flow_control({}).prefill_alone_pick is False
    assert parse_flow_control({"prefillAlonePick": True}).prefill_alone_pick is True
    doc = arm_config("kvgate-reserve-feasible", 30.0, headroom=0.75, prefill_alone=True)
    assert doc["flowControl"]["prefillAlonePick"] is True
    d = _director(pack=False)
    assert d.flow is not None
    d.flow.ctl.cfg.prefill_alone_pick = True
    det = d.detector
    assert isinstance(det, ConcurrencyDetector)
    a, b, c = d.store.all()
    _set(a, 1, 0)  # a: one pending
    _set(b, 6, 6)  # b: nothing pending, a free running slot
    _set(c, 8, 8)  # c: nothing pending, its running batch full
    _held(d, monkeypatch, True)  # a certain miss by the clock: not marked without packCertainMisses
    assert d._pack_misses(_req("m", -5.0), det, None) == (False, [b])
    assert d._pick_late(_req("m", -5.0), False).primary is b
    assert _marks(d) == {}
