"""Session 11: ``fairShareTTFTTarget`` is a bound on a p90, judged over a window of requests, so both
of its controllers (the adaptive headroom and the running reserve's miss budget) aim at a share of
misses below one in ten (``FlowController.aim``): the share that keeps a window's p90 under the target
19 times in 20, on the number of requests a window of ``AIM_WINDOW_S`` holds (measured). Aiming at one
in ten exactly put the window's p90 on either side of the target (session 10: the quiet tenants at
1.54-1.62x calm on some seeds, with the target at 1.47x)."""

from __future__ import annotations

import math

import pytest

from kvgate.flowcontrol.config import FlowControlConfig, parse_flow_control
from kvgate.flowcontrol.controller import AIM_MIN_SAMPLE, AIM_WINDOW_S, AIM_Z, FlowController, aim_miss
from kvgate.scheduling.framework import ConfigError
from kvgate.scheduling.types import InferenceRequest


def req(rid: str, flow: str, arrival: float) -> InferenceRequest:
    return InferenceRequest(rid, "m", prompt_tokens=10, max_tokens=4, fairness_id=flow, arrival_time=arrival)


def controller(reserve: bool = False) -> FlowController:
    cfg = FlowControlConfig(
        fair_share_headroom=1.0 - 1e-9, fair_share_ttft_target=0.05, fair_share_running_reserve=reserve
    )
    ctl = FlowController(cfg)
    ctl.started("quiet")
    return ctl


def feed(
    ctl: FlowController, n: int, rate: float, missed: list[bool] | None = None, t0: float = 1.0
) -> float:
    """``n`` first tokens of the quiet flow at ``rate`` a second, the i-th missing the 50 ms target when
    ``missed[i % len(missed)]``; returns the time after the last."""
    t = t0
    for i in range(n):
        miss = bool(missed and missed[i % len(missed)])
        ctl.observe_first_token(req(f"q{i}", "quiet", t), 0.2 if miss else 0.01)
        t += 1.0 / rate
    return t


def test_nine_misses_in_a_hundred_raise_the_headroom() -> None:
    """9 % over the target is a p90 under it on average, but a minute of five requests a second (300)
    has its p90 over it about a third of the time: the headroom keeps rising there. Aiming at 10 %,
    it fell to 0."""
    ctl = controller()
    ctl.headroom = 0.3
    pattern = [i % 11 == 0 and i < 99 for i in range(100)]  # 9 misses in 100
    feed(ctl, 3000, 5.0, pattern)
    assert ctl.headroom > 0.3


def test_the_aim_follows_the_requests_a_window_holds() -> None:
    few, many = controller(), controller()
    feed(few, 2000, 5.0)  # 300 a minute
    feed(many, 20000, 50.0)  # 3,000 a minute
    assert few.aim == pytest.approx(aim_miss(0.1, 5.0 * AIM_WINDOW_S, AIM_Z), rel=0.02)
    assert many.aim == pytest.approx(aim_miss(0.1, 50.0 * AIM_WINDOW_S, AIM_Z), rel=0.02)
    assert 0.07 < few.aim < 0.08 < 0.09 < many.aim < 0.1
    # a window's share of misses, at the aim, is under 10 % by z of its binomial spread
    n = 5.0 * AIM_WINDOW_S
    assert few.aim + AIM_Z * math.sqrt(few.aim * (1 - few.aim) / n) == pytest.approx(0.1, rel=0.02)
    # before any first token: the widest margin (AIM_MIN_SAMPLE)
    assert controller().aim == pytest.approx(aim_miss(0.1, AIM_MIN_SAMPLE, AIM_Z))
    assert aim_miss(0.1, 100, 0.0) == pytest.approx(0.1)


def test_it_settles_at_the_aimed_share() -> None:
    """Misses spread evenly at ``aim``: the headroom neither climbs nor falls (a step away at most)."""
    ctl = controller()
    t = feed(ctl, 2000, 5.0)
    ctl.headroom = 0.4
    acc = 0.0
    for i in range(10_000):
        miss = math.floor(acc + ctl.aim) > math.floor(acc)
        acc += ctl.aim
        ctl.observe_first_token(req(f"s{i}", "quiet", t), 0.2 if miss else 0.01)
        t += 0.2
        assert ctl.headroom == pytest.approx(0.4, abs=0.05)


def test_the_reserve_budget_is_what_the_engine_leaves_of_the_aimed_share() -> None:
    ctl = controller(reserve=True)
    assert ctl.reserve_miss == pytest.approx(ctl.aim / 2)  # before any is measured: half each
    t = 1.0
    for i in range(2000):  # the engine misses none: the waits get the whole aimed share, not 10 %
        ctl.observe_first_token(req(f"q{i}", "quiet", t), 0.01, 0.01)
        t += 0.2
    assert ctl.reserve_miss == pytest.approx(ctl.aim, abs=1e-3)
    assert ctl.reserve_miss < 0.08


def test_the_confidence_is_a_key_and_0_aims_at_one_in_ten() -> None:
    assert parse_flow_control({}).fair_share_ttft_confidence == AIM_Z
    cfg = parse_flow_control(
        {"fairShareHeadroom": 0.75, "fairShareTTFTTarget": "50ms", "fairShareTTFTConfidence": 0}
    )
    assert cfg.fair_share_ttft_confidence == 0.0
    with pytest.raises(ConfigError, match=r"^flowControl\.fairShareTTFTConfidence: "):
        parse_flow_control({"fairShareTTFTConfidence": -1})
    ctl = FlowController(cfg)
    ctl.started("quiet")
    assert ctl.aim == pytest.approx(0.1)
    ctl.headroom = 0.3
    feed(ctl, 3000, 5.0, [i % 11 == 0 and i < 99 for i in range(100)])  # 9 %: under one in ten
    assert ctl.aim == pytest.approx(0.1) and ctl.headroom == 0.0  # the old setpoint: it falls
