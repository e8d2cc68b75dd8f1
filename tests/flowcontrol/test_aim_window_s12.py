"""Session 12: ``aim`` (``fairShareTTFTTarget``'s share of misses, under one in ten by a window's binomial
margin) is sized on the requests a window of ``AIM_WINDOW_S`` holds. The count of first tokens decayed
over that window holds only 1 - exp(-T / window) of it T seconds after the first (63 % after a whole
window), so in the 60 s flood benchmark it never filled: the 2 x 16 fleet's ``aim`` sat near 6 % where
its ~300 requests a minute give 7.5 %, a margin up to twice the principle's, paid by the held-back
flows. ``window_sample`` divides that start-up share out."""

from __future__ import annotations

import math

import pytest

from kvgate.flowcontrol.controller import (
    AIM_FILL_S,
    AIM_MIN_SAMPLE,
    AIM_WINDOW_S,
    AIM_Z,
    aim_miss,
    window_sample,
)

from .test_ttft_margin_s11 import controller, feed


def test_half_a_window_in_the_aim_is_sized_on_a_whole_windows_requests() -> None:
    """30 s of five first tokens a second: a minute holds 300, so ``aim`` is 300's (7.5 %), not the
    decayed count's 118 (6.8 %)."""
    ctl = controller()
    feed(ctl, 150, 5.0)
    assert ctl.aim == pytest.approx(aim_miss(0.1, 5.0 * AIM_WINDOW_S, AIM_Z), rel=0.01)
    assert ctl.aim > aim_miss(0.1, 130.0, AIM_Z)


def test_window_sample() -> None:
    rate = 5.0
    for elapsed in (AIM_FILL_S, 20.0, 60.0, 600.0):
        # the first (its weight decayed since) and the rate after it
        first = math.exp(-elapsed / AIM_WINDOW_S)
        decayed = first + rate * AIM_WINDOW_S * -math.expm1(-elapsed / AIM_WINDOW_S)
        assert window_sample(decayed, elapsed) == pytest.approx(rate * AIM_WINDOW_S)
        # capped by what the first minute can hold: those seen, the rest at the rate now
        seen = 1 + rate * elapsed
        assert window_sample(decayed, elapsed, seen, rate) == pytest.approx(
            min(rate * AIM_WINDOW_S, seen + rate * max(0.0, AIM_WINDOW_S - elapsed))
        )
        assert window_sample(decayed, elapsed, seen, 0.0) == pytest.approx(min(seen, rate * AIM_WINDOW_S))
    # before AIM_FILL_S the count as it is (a rate from a few seconds is not extrapolated)
    assert window_sample(7.0, AIM_FILL_S / 2) == 7.0
    assert window_sample(7.0, 0.0) == 7.0
    # a fresh controller: the widest margin until there is a sample
    assert controller().aim == pytest.approx(aim_miss(0.1, AIM_MIN_SAMPLE, AIM_Z))


def test_a_few_first_tokens_in_a_few_seconds_keep_the_widest_margin() -> None:
    ctl = controller()
    feed(ctl, 10, 5.0)  # 2 s
    assert ctl.aim == pytest.approx(aim_miss(0.1, AIM_MIN_SAMPLE, AIM_Z))
