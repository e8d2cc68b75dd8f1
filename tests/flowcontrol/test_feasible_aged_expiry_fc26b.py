"""fc26b (issue #15 goal 3 at the shipped 30 s TTL): between heads past their aging time, a band at or
below the default gives its slot to a lower band's aged request that expires sooner (earliest TTL expiry
first among certain misses); requests that can still make their SLO stay ahead of both, a band above the
default keeps strict priority, and a lower aged request takes only the slot of the higher aged one, never
one of its own flow's fresh requests'. One process and two workers (the gate between workers agrees).
Time injected; no process is started. The swap tests fail on main 5da2e02d's src (the flooder's aged
request went first and the batch request expired at its TTL)."""

from __future__ import annotations

from flowcontrol.test_fleet_feasible_bands_fc24b import FeasibleFleet
from flowcontrol.test_fleet_feasible_bands_fc24b import _req as _freq
from kvgate.flowcontrol.config import parse_flow_control
from kvgate.flowcontrol.controller import FlowController
from kvgate.flowcontrol.dispatcher import dispatch_ready
from kvgate.scheduling.types import InferenceRequest


def _req(rid: str, flow: str, prio: int, slo_s: float, at: float) -> InferenceRequest:
    return InferenceRequest(
        rid, "m", prompt_tokens=10, max_tokens=100, fairness_id=flow, priority=prio,
        headers={"x-slo-ttft-ms": str(int(slo_s * 1000))}, arrival_time=at,
    )  # fmt: skip


def _ctl(fairness: str = "least-attained-service") -> FlowController:
    cfg = {"fairnessPolicy": fairness, "orderingPolicy": "slo-feasible", "maxRequests": 100}
    return FlowController(parse_flow_control(cfg))  # (TTL 30 s, the shipped default)


def _send(ctl: FlowController, now: float, slots: int, refuse: set[str] | None = None) -> list[str]:
    """One dispatch pass at ``now`` with room for ``slots`` requests (``refuse``: flows the gate refuses)."""
    out: list[str] = []

    def saturated(r: InferenceRequest) -> bool:
        return len(out) >= slots or (refuse is not None and r.fairness_id in refuse)

    for item in dispatch_ready(ctl, now, saturated):
        ctl.record(item, "Dispatched", now)
        out.append(item.req.request_id)
    return out


def _two_aged(ctl: FlowController) -> None:
    # batch: arrived 0, deadline 10, ages at 20, expires 30; flood: arrived 2, deadline 3, ages at 16.5,
    # expires 32. At 21 both are past their aging time, and the batch request expires first.
    ctl.enqueue(_req("batch", "batch", -1, 10.0, 0.0), 0.0)
    ctl.enqueue(_req("flood", "flood", 0, 1.0, 2.0), 2.0)


def test_the_lower_band_aged_request_that_expires_first_goes_first() -> None:
    ctl = _ctl()
    _two_aged(ctl)
    assert _send(ctl, 21.0, 1) == ["batch"]  # (main: "flood")


def test_nothing_lost_to_the_ttl_where_expiry_order_saves_both() -> None:
    ctl = _ctl()
    _two_aged(ctl)
    sent = _send(ctl, 21.0, 1)
    lost = [i.req.request_id for i in ctl.expire(30.0)]
    sent += _send(ctl, 31.0, 1)
    assert (sent, lost) == (["batch", "flood"], [])  # (main: ["flood"], ["batch"]: a TTL 503)


def test_a_request_that_can_still_make_its_slo_stays_ahead() -> None:
    # (global-strict: an aged head ranks after its band's fresh ones; with least-attained-service the
    # fairness policy orders a flow with an aged head and one with a fresh head, as before)
    ctl = _ctl("global-strict")
    _two_aged(ctl)
    ctl.enqueue(_req("quiet", "quiet", 0, 1.0, 20.9), 20.9)  # (deadline 21.9: can still make it)
    assert _send(ctl, 21.0, 3) == ["quiet", "batch", "flood"]


def test_the_slot_is_given_back_to_the_lower_bands_fresh_request() -> None:
    ctl = _ctl()
    _two_aged(ctl)
    ctl.enqueue(_req("fresh", "batch", -1, 10.0, 20.5), 20.5)  # (deadline 30.5: fresh, its flow's head)
    # The aged batch request takes the flood's slot (it expires first); the next slot the flood's aged
    # request would take goes back to the batch band's request that can still make its SLO (an exchange:
    # as many certain misses ahead of it as before), then the flood's.
    assert _send(ctl, 21.0, 3) == ["batch", "fresh", "flood"]  # (main: flood, fresh, batch)


def test_nothing_is_owed_without_a_swap() -> None:
    ctl = _ctl()
    ctl.enqueue(_req("flood", "flood", 0, 1.0, 2.0), 2.0)  # (aged at 21; no lower aged request)
    ctl.enqueue(_req("fresh", "batch", -1, 10.0, 20.5), 20.5)
    assert _send(ctl, 21.0, 1) == ["flood"]  # (aging: the aged head before lower-band fresh work)


def test_a_band_above_the_default_keeps_strict_priority() -> None:
    ctl = _ctl()
    ctl.enqueue(_req("batch", "batch", -1, 10.0, 0.0), 0.0)  # (ages at 20, expires 30)
    ctl.enqueue(_req("crit", "crit", 10, 1.0, 18.0), 18.0)  # (deadline 19, ages at 20: one SLO; expires 48)
    assert _send(ctl, 21.0, 1) == ["crit"]


def test_a_not_yet_aged_higher_head_still_gives_way_as_before() -> None:
    ctl = _ctl()
    ctl.enqueue(_req("batch", "batch", -1, 10.0, 0.0), 0.0)  # (aged at 21)
    ctl.enqueue(_req("flood", "flood", 0, 1.0, 10.0), 10.0)  # (deadline 11, ages at 25.5: not yet)
    assert _send(ctl, 21.0, 1) == ["batch"]  # (as on main: a certain miss not aged gives way)


def test_when_the_gate_refuses_the_swapped_in_request_the_slot_is_not_lost() -> None:
    ctl = _ctl()
    _two_aged(ctl)
    assert _send(ctl, 21.0, 1, refuse={"batch"}) == ["flood"]  # (its own pool full: the aged head goes)


def test_within_the_band_the_fairness_choice_still_decides() -> None:
    # Two band-0 aged requests and a batch one that expires between them: the band's choice (least
    # attained service: equal, the OrderedDict's first) is swapped only for a sooner expiry.
    ctl = _ctl()
    ctl.enqueue(_req("f1", "f1", 0, 1.0, 0.5), 0.5)  # (expires 30.5)
    ctl.enqueue(_req("batch", "batch", -1, 10.0, 1.0), 1.0)  # (ages at 21, expires 31)
    ctl.enqueue(_req("f2", "f2", 0, 1.0, 2.0), 2.0)  # (expires 32)
    assert _send(ctl, 22.0, 3) == ["f1", "batch", "f2"]


def _fleet(flood_at: int, batch_at: int) -> FeasibleFleet:
    f = FeasibleFleet()  # (TTL 30 s)
    f.now = 95.0
    f.arrive(batch_at, _freq("batch", "batch", -1, 10.0, 95.0))  # deadline 105, ages 115, expires 125
    f.now = 100.0
    f.arrive(flood_at, _freq("flood", "flood", 0, 1.0, 100.0))  # deadline 101, ages 115.5, expires 130
    f.now = 120.0
    f.step(0)
    f.step(1)
    assert f.sent == []
    f.free = 1
    return f


def test_two_workers_the_remote_sooner_aged_request_goes_first() -> None:
    f = _fleet(0, 1)
    f.step(0)  # (worker 0's aged flood request waits for worker 1's sooner-expiring batch one)
    f.step(1)
    assert f.sent[0] == (1, "batch")  # (main: (0, "flood"))


def test_two_workers_the_local_sooner_aged_request_goes_first() -> None:
    f = _fleet(1, 0)
    f.step(1)
    f.step(0)
    assert f.sent[0] == (0, "batch")  # (main: (1, "flood"))


def test_two_workers_a_later_expiring_lower_aged_request_still_waits() -> None:
    f = FeasibleFleet()
    f.now = 100.0
    f.arrive(0, _freq("flood", "flood", 0, 1.0, 100.0))  # expires 130, ages 115.5
    f.now = 100.5
    f.arrive(1, _freq("batch", "batch", -1, 10.0, 100.5))  # deadline 110.5, ages 120.5, expires 130.5
    f.now = 121.0
    f.step(0)
    f.step(1)
    f.free = 1
    f.step(1)
    f.step(0)
    assert f.sent[0] == (0, "flood")
