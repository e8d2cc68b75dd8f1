"""Review s24-rev-fix24c F1/F2 (fixfc24's per-head rule for ``slo-feasible`` across bands), moved here from
``/work/team/reviews/s24-rev-fix24c-tests/test_rev_fix24c_fc.py`` (F1 as the review wrote it; F2 adapted to
the bound the fix sets, see its docstring) with tests of the fix's edges. Each ``test_review_*`` and
``test_fix_*`` test fails on main's src at 0cfe18cf. No process is started; time is injected."""

from __future__ import annotations

from kvgate.flowcontrol.config import parse_flow_control
from kvgate.flowcontrol.controller import FlowController
from kvgate.flowcontrol.dispatcher import dispatch_ready
from kvgate.scheduling.types import InferenceRequest

H = "10.0.0.1:8000"


def _ctl(ttl: float | None = None) -> FlowController:
    cfg = {"fairnessPolicy": "least-attained-service", "orderingPolicy": "slo-feasible", "maxRequests": 1000}
    if ttl is not None:
        cfg["defaultRequestTTL"] = f"{ttl:g}s"
    return FlowController(parse_flow_control(cfg))


def _req(
    rid: str, flow: str, priority: int, slo_s: float, at: float, home: str | None = None
) -> InferenceRequest:
    return InferenceRequest(
        rid, "m", prompt_tokens=10, max_tokens=100, fairness_id=flow, priority=priority,
        headers={"x-slo-ttft-ms": str(round(slo_s * 1000))}, arrival_time=at,
        subset=None if home is None else frozenset({home}),
    )  # fmt: skip


def _one(ctl: FlowController, now: float) -> str | None:
    sent: list[str] = []
    for item in dispatch_ready(ctl, now, lambda _r: len(sent) >= 1):
        sent.append(item.req.request_id)
    return sent[0] if sent else None


def test_review_a_critical_request_not_past_its_deadline_behind_its_own_flows_dead_head_beats_batch() -> None:
    """F1 (the review's test). Critical flow c: x (deadline 0.3 s) and y (deadline 0.5 s); the service p90
    is 0.5 s, so both sit in the flow's ``late`` heap. At 0.4 x is past its deadline, y is not. The flow's
    head was x (earliest deadline first), so the band counted as "all heads past their deadline" and was
    asked after batch: y, which can still make its SLO, waited behind batch work. Now the flow's requests
    past their deadline go after its others (``FlowQueue.dead``): y at 0.4, x (a certain miss) after batch."""
    ctl = _ctl()
    for _ in range(20):
        ctl.observe_service_ttft(0.5)
    ctl.enqueue(_req("x", "c", 10, 0.3, 0.0), 0.0)
    ctl.enqueue(_req("y", "c", 10, 0.3, 0.2), 0.2)
    for i in range(20):
        ctl.enqueue(_req(f"b{i}", "batch", -1, 10.0, 0.0), 0.0)
    order = [(_one(ctl, t), t) for t in (0.4, 0.45)]
    assert ("y", 0.4) in order or ("y", 0.45) in order, order


def test_fix_a_flows_request_not_past_its_deadline_goes_before_its_certain_miss_at_a_parked_home() -> None:
    """F1 where heads wait aside for a full home (``park``, ``wake``): a home keeps each flow's overdue heads
    apart (``Home.late``), and woke the most overdue first, a certain miss, while a head of the same flow
    that could still make its SLO waited there. Now the one that can still make it is woken first."""
    ctl = _ctl()
    for _ in range(20):
        ctl.observe_service_ttft(0.5)
    x = ctl.enqueue(_req("x", "c", 10, 0.3, 0.0, H), 0.0)
    y = ctl.enqueue(_req("y", "c", 10, 0.3, 0.2, H), 0.2)
    assert list(dispatch_ready(ctl, 0.4, lambda _r: True)) == []  # (its home full: both parked)
    assert x.parked is not None and y.parked is not None
    key = x.parked
    assert ctl.wake(key, 0.45)
    assert y.parked is None and x.parked is not None  # (y back in its band; x still aside)


def test_review_a_critical_request_past_its_deadline_is_not_held_behind_sustained_batch_to_its_ttl() -> None:
    """F2 (the review's test, adapted to the fix's bound). No aging across bands: a critical request that
    missed its 1 s SLO by 10 ms went after every batch request that could still make its (100 s) SLO; with
    batch arrivals kept up (one per slot) it was never sent, and at the 30 s TTL it became a 503. Now a
    request past its deadline gives way until halfway from its deadline to its TTL (``aging_time``: 15.5 s
    here), then goes at its band's priority. Since fc26 (review s25-rev-fc25 F4) a band above the default
    ages one of its own SLO past its deadline (2 s here): sent at the first pass from 2 s, 2.01 s. The
    review asked for the first two passes (by 1.51 s, as strict priority); the default band keeps halfway
    (``test_feasible_aging_bands_fc26.py``)."""
    ctl = _ctl()
    ctl.enqueue(_req("crit", "c", 10, 1.0, 0.0), 0.0)
    for i in range(5):
        ctl.enqueue(_req(f"b{i}", "batch", -1, 100.0, 0.0), 0.0)
    sent: list[tuple[str | None, float]] = []
    for i in range(60):
        now = 1.01 + 0.5 * i
        got = _one(ctl, now)
        sent.append((got, now))
        if got == "crit":
            break
        ctl.enqueue(_req(f"n{i}", "batch", -1, 100.0, now), now)  # (sustained batch load)
    assert sent[-1] == ("crit", 1.01 + 0.5 * 2), sent[-3:]  # (2.01 s: the first pass past 2 s)
    assert all(g != "crit" for g, _ in sent[:-1])  # (before its bound it still gives way)


def test_fix_a_flows_head_past_its_deadline_is_not_held_behind_its_bands_other_flows_until_its_ttl() -> None:
    """The same bound inside a band: a flow whose head is past its deadline was chosen only when no other
    flow's head was not, so one other flow's sustained arrivals held it until its TTL. A 5 s TTL, a 1 s
    SLO: its bound is 3 s."""
    ctl = _ctl(ttl=5.0)
    ctl.enqueue(_req("late", "a", 0, 1.0, 0.0), 0.0)
    sent = []
    for i in range(8):
        now = 1.5 + 0.5 * i
        ctl.enqueue(_req(f"f{i}", "b", 0, 1.0, now), now)
        sent.append(_one(ctl, now))
    assert sent[:4] == ["f0", "f1", "f2", "late"], sent  # (1.5, 2.0 and 2.5 give way; 3.0 is the bound)
