"""rev-flow23 F1 (moved from the review, fixflow23): a take + hold of the only active flow's request
left the band's clock (``Band._floor``) raised by the charge ``undo`` took back. Each such cycle lifted
the clock by one request's cost, so a departed flow's kept excess (fc23) was measured against an inflated
clock and forgiven (all three fail on main 83f8785f)."""

from __future__ import annotations

from flowcontrol.test_sequences_overflow import request
from kvgate.flowcontrol.config import parse_flow_control
from kvgate.flowcontrol.controller import FlowController


def _ctl() -> FlowController:
    return FlowController(
        parse_flow_control({"fairnessPolicy": "least-attained-service", "maxRequests": 100_000})
    )


def _drain(ctl: FlowController, k: int) -> list[str]:
    out = []
    for _ in range(k):
        item = ctl.head(0.0)
        assert item is not None
        ctl.take(item, 0.0)
        out.append(item.req.request_id)
    return out


def _big_back_behind(holds: int) -> float:
    """big leaves 480 tokens above small (810 vs 330); the band empties; a lone flow 'h' is taken and
    held ``holds`` times (its pick says "not now"); big returns beside a newcomer: big's service less
    the newcomer's."""
    ctl = _ctl()
    for i in range(3):
        ctl.enqueue(request(f"s{i}", "small"), 0.0)
    ctl.enqueue(request("b0", "big", n=8), 0.0)
    _drain(ctl, 4)  # all four: big leaves at 810, small at 330 (the band's clock)
    assert not ctl.bands[0].flows and "big" in ctl.bands[0]._gone
    ctl.enqueue(request("h0", "h", n=8), 0.0)
    t = 0.0
    for _ in range(holds):
        item = ctl.head(t)
        assert item is not None and item.flow == "h"
        ctl.take(item, t, record=False)
        ctl.hold(item, t, t + 1.0)
        t += 1.0
        ctl.unhold(t)
    ctl.enqueue(request("b1", "big", n=8), t)
    ctl.enqueue(request("n0", "new"), t)
    band = ctl.bands[0]
    return band.flows["big"].service - band.flows["new"].service


def test_holds_of_a_lone_flow_do_not_erase_a_departed_flows_excess() -> None:
    without = _big_back_behind(0)
    assert without > 0  # (fc23: big comes back behind by its kept excess)
    held = _big_back_behind(3)
    assert held >= without - 1.0, (without, held)  # (3 more dispatches of decay: < 0.1 token)


def test_an_undone_take_leaves_the_band_clock_where_it_was() -> None:
    ctl = _ctl()
    ctl.enqueue(request("h0", "h", n=8), 0.0)
    floor = ctl.bands[0]._floor
    item = ctl.head(0.0)
    assert item is not None
    ctl.take(item, 0.0, record=False)
    ctl.record(item, "RejectedOther", 0.0)  # its pick failed: the charge undone
    assert ctl.bands[0]._floor == floor


def test_an_undone_take_leaves_the_clock_at_the_flows_uncharged_service() -> None:
    # (the flow served before: the clock the band would have had, had the undone request left uncharged)
    ctl = _ctl()
    ctl.enqueue(request("h0", "h", n=8), 0.0)
    ctl.enqueue(request("h1", "h", n=8), 0.0)
    assert _drain(ctl, 1) == ["h0"]
    served = ctl.bands[0].flows["h"].service
    item = ctl.head(0.0)
    assert item is not None
    ctl.take(item, 0.0, record=False)
    assert ctl.bands[0]._floor > served
    ctl.record(item, "RejectedOther", 0.0)
    assert ctl.bands[0]._floor == served
