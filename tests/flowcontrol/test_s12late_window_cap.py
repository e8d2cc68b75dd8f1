"""Review s12-late (moved here from /work/team/reviews/s12-late-tests/).
Of e32e367 (fcfix12): ``window_sample``'s cap, ``seen + recent * (AIM_WINDOW_S - T)``.
``recent`` is ``_steer_recent / AIM_RECENT_S`` read right after the token being counted was added with
weight 1, so the rate "now" is at least 1/s whatever the real rate (the fencepost F2 fixed for the
first token, back in the cap for the last one). Below 1/s the cap over-reads by up to (1 - r) x (60 - T).
Fails on main 86d8563: n ~106 (aim 6.39 %) at T = 5 s where the window holds at most 62."""

from __future__ import annotations

from kvgate.flowcontrol.controller import AIM_Z, aim_miss

from .test_ttft_margin_s11 import controller, req


def test_a_burst_then_a_slow_rate_is_capped_at_the_slow_rate() -> None:
    """50 first tokens in 50 ms (a restart's backlog), then one every 5 s (0.2/s). A 60 s window that
    holds the burst holds at most 50 + 12 = 62. Allow 1.5x (93). main: the cap reads the rate as
    ~1.0/s (the token just added), n = 51 + 1.0 x 55 ~ 106 at T = 5 s, ~100 at T = 10 s."""
    ctl = controller()
    for i in range(50):
        ctl.observe_first_token(req(f"b{i}", "quiet", 1.0 + i * 0.001), 0.01)
    t = 1.05
    for k in range(2):  # T = 5 s, 10 s after the first first token
        t += 5.0
        ctl.observe_first_token(req(f"q{k}", "quiet", t), 0.01)
        assert ctl.aim <= aim_miss(0.1, 1.5 * (50 + 12), AIM_Z), (k, ctl.aim)
