"""``slo-feasible`` across bands (fc24) under ``--workers``: the fleet's marks (``flowcontrol.fleet``) name
a worker's highest band's head, but one process now sends a band's overdue head (it misses its TTFT SLO
wherever it goes) after the lower bands' heads that can still make theirs (``FlowController.heads``).
The mark says which band, not whether its head is overdue, so across workers the order is strict priority
again: a worker's feasible batch request waits behind another worker's overdue flood request (the cost
fc24 removed in one process: the batch band waited out its TTL), and an overdue flood request goes ahead
of another worker's feasible batch request. Both tests fail on main 5df0a97d and 0cfe18cf (strict xfails
until session 25: wk25's fix, the mark names its head's deadline and ``defers`` compares (can still make its
SLO, band) as one process's ``heads``). No process is started; time is injected."""

from __future__ import annotations

from typing import Any

from flowcontrol.test_fleet import Waiter
from kvgate.flowcontrol.config import parse_flow_control
from kvgate.flowcontrol.controller import FlowController
from kvgate.flowcontrol.dispatcher import FlowDispatcher
from kvgate.flowcontrol.fleet import FleetMarks, segment_size
from kvgate.scheduling.types import InferenceRequest, PickResult


def _req(rid: str, flow: str, priority: int, slo_s: float, at: float) -> InferenceRequest:
    return InferenceRequest(
        rid, "m", prompt_tokens=10, max_tokens=100, fairness_id=flow, priority=priority,
        headers={"x-slo-ttft-ms": str(int(slo_s * 1000))}, arrival_time=at,
    )  # fmt: skip


class FeasibleFleet:
    """Two workers ordered ``slo-feasible`` on one pool of ``free`` running slots (``test_fleet.Fleet``)."""

    def __init__(self, ordering: str = "slo-feasible") -> None:
        self.free = 0
        self.now = 100.0
        self.sent: list[tuple[int, str]] = []
        self.buf = bytearray(segment_size(2))
        cfg = {
            "fairnessPolicy": "least-attained-service",
            "orderingPolicy": ordering,
            "maxRequests": 1000,
        }
        self.ds: list[FlowDispatcher] = []
        for w in range(2):
            d = FlowDispatcher(
                FlowController(parse_flow_control(cfg)),
                pick=self._pick(w),
                saturated=lambda _r: self.free <= 0,
                clock=lambda: self.now,
            )
            d.fleet = FleetMarks(memoryview(self.buf), 2, w).pool("default")
            self.ds.append(d)

    def _pick(self, w: int) -> Any:
        def pick(r: InferenceRequest, _explain: bool) -> PickResult:
            self.free -= 1
            self.sent.append((w, r.request_id))
            self.ds[w].ctl.started(r.fairness_id)
            return PickResult([object()])

        return pick

    def arrive(self, w: int, r: InferenceRequest) -> None:
        self.ds[w].arrive(r, self.now, Waiter())

    def step(self, w: int) -> None:
        d = self.ds[w]
        d.step()
        assert d.fleet is not None
        d.fleet.publish(d.ctl, self.now)


def _queued(late_at: int, batch_at: int) -> FeasibleFleet:
    """The pool full; worker ``late_at`` holds a flood request (1 s SLO) queued since 100 s, worker
    ``batch_at`` a batch request (10 s SLO) since 104 s; at 105 s both have published and one slot frees."""
    f = FeasibleFleet()
    f.arrive(late_at, _req("late", "flood", 0, 1.0, 100.0))
    f.now = 104.0
    f.arrive(batch_at, _req("batch", "batch", -1, 10.0, 104.0))
    f.now = 105.0
    f.step(0)
    f.step(1)
    assert f.sent == []
    f.free = 1
    return f


def test_a_feasible_lower_band_does_not_wait_behind_another_workers_overdue_head() -> None:
    """One process would send ``batch`` first (``test_feasible_across_bands_fc24``); worker 0's mark
    says "band 0 waits", so worker 1's batch request defers and the slot goes to the certain miss."""
    f = _queued(late_at=0, batch_at=1)
    f.step(1)
    f.step(0)
    assert f.sent[0] == (1, "batch")


def test_an_overdue_head_waits_for_another_workers_feasible_lower_band() -> None:
    """Worker 1's overdue flood request: worker 0's mark names band -1, below it, so it does not defer
    and takes the slot that one process would give to the batch request still able to make its SLO."""
    f = _queued(late_at=1, batch_at=0)
    f.step(1)
    f.step(0)
    assert f.sent[0] == (0, "batch")
