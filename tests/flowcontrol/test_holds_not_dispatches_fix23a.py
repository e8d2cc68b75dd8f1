"""rev-fix23a F1: a take + hold (or a failed pick: ``record``) still counts as one of the band's dispatches
(``Band.dispatched`` bumps ``_dispatches``; ``undo`` leaves it), so held requests' rechecks forgive what
departed flows keep: round-robin's turns owed (s22-fc F4, ``_returned``: one turn off per dispatch since)
and least-attained-service's excess (``LAS_DECAY`` per dispatch since). fixflow23 put the clock back on
undo, not the dispatch count. Both fail at 0a15ef69; the undo now takes its dispatch back (lead, s23)."""

from __future__ import annotations

from flowcontrol.test_sequences_overflow import request
from kvgate.flowcontrol.config import parse_flow_control
from kvgate.flowcontrol.controller import FlowController


def _ctl(fairness: str) -> FlowController:
    return FlowController(parse_flow_control({"fairnessPolicy": fairness, "maxRequests": 100_000}))


def _hold_cycles(ctl: FlowController, k: int) -> None:
    """``k`` takes whose pick says "not now" (sloAdmission / holdPredictedMisses under overload), each of a
    queued request of the backlogged flow ``small``: no request leaves, no flow is served."""
    for _ in range(k):
        item = ctl.head(0.0)
        assert item is not None and item.flow == "small"
        ctl.take(item, 0.0, record=False)
        ctl.hold(item, 0.0, 1e9)


def _big_debt_back(holds: int) -> int:
    ctl = _ctl("round-robin")
    ctl.enqueue(request("b0", "big", n=8), 0.0)
    for i in range(holds + 10):
        ctl.enqueue(request(f"s{i}", "small"), 0.0)
    item = ctl.head(0.0)
    assert item is not None and item.flow == "big"
    ctl.take(item, 0.0)  # big leaves the band owing 7 turns (its n=8's other sequences)
    _hold_cycles(ctl, holds)
    ctl.enqueue(request("b1", "big", n=8), 0.0)
    return ctl.bands[0].flows["big"].debt


def test_round_robin_holds_do_not_forgive_a_departed_flows_turns() -> None:
    assert _big_debt_back(0) == 7  # (guard)
    assert _big_debt_back(7) == 7  # 7 held rechecks, no turn given to anyone: 0 at 0a15ef69


def _big_excess_back(holds: int) -> float:
    ctl = _ctl("least-attained-service")
    ctl.enqueue(request("b0", "big", n=8), 0.0)
    for i in range(holds + 10):
        ctl.enqueue(request(f"s{i}", "small"), 0.0)
    item = ctl.head(0.0)
    assert item is not None and item.flow == "big"
    ctl.take(item, 0.0)  # big leaves 810 tokens above small's 0
    _hold_cycles(ctl, holds)
    ctl.enqueue(request("b1", "big", n=8), 0.0)
    band = ctl.bands[0]
    return band.flows["big"].service - band.flows["small"].service


def test_las_holds_do_not_decay_a_departed_flows_excess() -> None:
    without = _big_excess_back(0)
    assert without > 800
    held = _big_excess_back(23_100)  # (~77 s of rechecks of 100 held requests at the 320 ms back-off)
    assert held >= 0.99 * without, (without, held)  # half of it at 0a15ef69
