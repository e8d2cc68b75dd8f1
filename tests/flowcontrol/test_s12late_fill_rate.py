"""Review s12-late (moved here from /work/team/reviews/s12-late-tests/).
Of 7f45f42 (fcfix12): the cap's rate "now" became max(last second's rate, the rate
since AIM_FILL_S). The second is an average that lags, and ``max`` only ever raises the cap. So a backlog
that drains for longer than AIM_FILL_S (a restart under load: 10/s for 8 s) and then falls to 1/s is
extrapolated again, as in review s12-fc F1: n ~ 400 at T = 10 s, where the window holds at most 133.
Fails on main 9e20a37. Passed on 86d8563 (the 1 s rate alone: aim 7.16 % at T = 10, 6.77 % at T = 13)."""

from __future__ import annotations

from kvgate.flowcontrol.controller import AIM_WINDOW_S, AIM_Z, aim_miss

from .test_ttft_margin_s11 import controller, req


def test_a_backlog_longer_than_aim_fill_s_then_a_slower_rate_is_not_extrapolated() -> None:
    ctl = controller()
    t, i = 1.0, 0
    while t < 9.0:  # 10 first tokens a second for 8 s
        ctl.observe_first_token(req(f"b{i}", "quiet", t), 0.01)
        t += 0.1
        i += 1
    first = 1.01
    for k in range(25):  # then one a second
        ctl.observe_first_token(req(f"s{k}", "quiet", t), 0.01)
        T = t + 0.01 - first
        if T >= 11.0:  # 2 s after the backlog (the 1 s rate's own transient is over)
            can_hold = ctl._steer_seen + max(0.0, AIM_WINDOW_S - T)
            assert ctl.aim <= aim_miss(0.1, 2 * can_hold, AIM_Z), (round(T, 1), ctl.aim, can_hold)
        t += 1.0
