"""Review s18-gw L4: ``HealthTracker.timed_out``, the charge for deadline timeouts an endpoint did not
own (it got each request with less than half its bound left): a failure per ``unit`` of the time it held
such requests since its last answer, their spans' union (requests held at once count once)."""

from __future__ import annotations

from kvgate.config.gateway import HealthConfig
from kvgate.datalayer.endpoint import Endpoint
from kvgate.gateway.health import HealthTracker


def tracker() -> HealthTracker:
    return HealthTracker(HealthConfig(eject_after_failures=3), clock=lambda: 0.0)


def failures(h: HealthTracker, ep: Endpoint) -> int:
    st = h._state.get(ep.address)
    return 0 if st is None else st.failures


def test_back_to_back_short_spans_add_up_to_a_failure_per_unit() -> None:
    h, ep, peer = tracker(), Endpoint("a:1"), Endpoint("b:1")
    charged = [h.timed_out(ep, 10.0 + 0.25 * i, 10.25 + 0.25 * i, 0.5, (ep, peer)) for i in range(12)]
    assert failures(h, ep) == 6 and not ep.healthy  # 3 s of it: 6 units, ejected at the third
    assert charged.count(True) == 1 and charged.index(True) == 5


def test_spans_that_do_not_divide_the_unit_lose_nothing_at_a_charge() -> None:
    """Ten back-to-back 0.4 s spans (4 s: 8 units of 0.5 s) are 8 failures (review s18-fixes-c L1: each
    charge threw the time past the unit away: 5)."""
    h, ep = HealthTracker(HealthConfig(eject_after_failures=100), clock=lambda: 0.0), Endpoint("a:1")
    for i in range(10):
        h.timed_out(ep, 10.0 + 0.4 * i, 10.4 + 0.4 * i, 0.5)
    assert failures(h, ep) == 8


def test_spans_held_at_once_count_once() -> None:
    h, ep = tracker(), Endpoint("a:1")
    for i in range(8):  # eight requests held together from 10 s, cut at 10.4 s (+ a little each)
        h.timed_out(ep, 10.0, 10.4 + 0.001 * i, 0.5)
    assert failures(h, ep) == 0  # 0.407 s of holding, not 3.2 s
    h.timed_out(ep, 10.3, 10.6, 0.5)
    assert failures(h, ep) == 1


def test_an_answer_starts_the_count_over() -> None:
    h, ep = tracker(), Endpoint("a:1")
    h.timed_out(ep, 10.0, 10.4, 0.5)
    h.success(ep)
    h.timed_out(ep, 10.5, 10.9, 0.5)
    assert failures(h, ep) == 0
    h.timed_out(ep, 10.9, 11.0, 0.5)
    assert failures(h, ep) == 1


def test_a_probe_that_lets_it_back_in_starts_the_count_over() -> None:
    h, ep = tracker(), Endpoint("a:1")
    h.timed_out(ep, 10.0, 10.4, 0.5)
    h.probe_result(ep, True)
    h.timed_out(ep, 10.5, 10.9, 0.5)
    assert failures(h, ep) == 0
