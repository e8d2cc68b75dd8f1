"""The aging bound per band (review s25-rev-fc25 F4): under ``slo-feasible`` a request past its TTFT deadline
gives way to the requests of its band and the lower ones that can still make theirs, until its aging time
(``controller.aging_time``). Halfway from the deadline to the TTL for every band, a critical request 10 ms
late waited 14.5 s behind sustained batch. Now a band above the default (priority > 0) ages one of its own
SLO past its deadline (when that is sooner); the default band and the sheddable ones keep halfway. The
tests that a higher band ages sooner fail on main's src at 6c4d40fa. No process is started; time injected."""

from __future__ import annotations

import math

import pytest

from kvgate.flowcontrol.config import parse_flow_control
from kvgate.flowcontrol.controller import FlowController, aging_time
from kvgate.flowcontrol.dispatcher import dispatch_ready
from kvgate.scheduling.types import InferenceRequest


def _ctl(ttl: float = 30.0) -> FlowController:
    cfg = {
        "fairnessPolicy": "least-attained-service", "orderingPolicy": "slo-feasible", "maxRequests": 1000,
        "defaultRequestTTL": f"{ttl:g}s",
    }  # fmt: skip
    return FlowController(parse_flow_control(cfg))


def _req(rid: str, flow: str, priority: int, slo_s: float, at: float) -> InferenceRequest:
    return InferenceRequest(
        rid, "m", prompt_tokens=10, max_tokens=100, fairness_id=flow, priority=priority,
        headers={"x-slo-ttft-ms": str(round(slo_s * 1000))}, arrival_time=at,
    )  # fmt: skip


def _one(ctl: FlowController, now: float) -> str | None:
    sent: list[str] = []
    for item in dispatch_ready(ctl, now, lambda _r: len(sent) >= 1):
        sent.append(item.req.request_id)
    return sent[0] if sent else None


def _sent_at(priority: int, slo: float, ttl: float = 30.0) -> float | None:
    """A request of ``priority`` (flow "late", SLO ``slo``) queued at 0 behind five batch requests, then one
    one-slot pass every 0.5 s from just past its deadline, a fresh batch request (SLO 100 s) after each pass
    (sustained lower-band load): when it is sent."""
    ctl = _ctl(ttl)
    ctl.enqueue(_req("late", "late", priority, slo, 0.0), 0.0)
    for i in range(5):
        ctl.enqueue(_req(f"b{i}", "batch", -1, 100.0, 0.0), 0.0)
    for i in range(2 * int(ttl)):
        now = slo + 0.01 + 0.5 * i
        if now >= ttl:
            return None
        if _one(ctl, now) == "late":
            return now
        ctl.enqueue(_req(f"n{i}", "batch", -1, 100.0, now), now)
    return None


@pytest.mark.parametrize("priority", [1, 10])
def test_a_higher_bands_late_request_gives_way_one_slo_not_halfway_to_its_ttl(priority: int) -> None:
    """F4: 1 s SLO, 10 ms late, sustained batch. Main sent it at 15.51 s (halfway from 1 s to 30 s); now at
    the first pass from its deadline + its SLO (2 s): 2.01 s. Before that it still gives way (1.01, 1.51)."""
    assert _sent_at(priority, 1.0) == pytest.approx(2.01)


def test_the_default_band_keeps_halfway() -> None:
    """A default-band (0) request past its deadline still gives way to batch until halfway to its TTL (15.5
    s): where a flood lands, a one-SLO bound hands its certain misses strict priority over the band below."""
    assert _sent_at(0, 1.0) == pytest.approx(15.51)


def test_halfway_when_it_is_sooner_than_one_slo() -> None:
    """A critical request whose SLO is longer than half what is left to its TTL ages halfway, as before:
    SLO 4 s, TTL 10 s -> 4 + 3 = 7 s (one SLO would be 8 s)."""
    assert aging_time(4.0, 10.0, 4.0, 10) == 7.0
    assert _sent_at(10, 4.0, ttl=10.0) == pytest.approx(7.01)


def test_aging_time_per_band() -> None:
    assert aging_time(1.0, 30.0, 1.0, 10) == 2.0
    assert aging_time(1.0, 30.0, 1.0, 0) == 15.5
    assert aging_time(1.0, 30.0, 1.0, -1) == 15.5
    assert aging_time(1.0, 30.0) == 15.5  # (no SLO given: halfway, whatever the band)
    assert aging_time(31.0, 30.0, 31.0, 10) == 30.5  # (deadline past its expiry: cannot miss while queued)
    assert math.isinf(aging_time(1.0, math.inf, 1.0, 0))
