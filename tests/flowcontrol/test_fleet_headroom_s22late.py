"""Review s22-late (wk22b, ``FleetShares._steer``): a worker without ``fairShareTTFTTarget`` publishes its
fixed headroom as if it were the adaptive level, and a worker with the target that joins (a reload that
turns the target on reaches the workers one at a time) starts at that fixed level, the top, instead of at
its own start (0, where one process's new controller starts). Two workers on one buffer, time injected,
as tests/flowcontrol/test_fleet_headroom.py."""

from __future__ import annotations

from kvgate.flowcontrol.config import FlowControlConfig
from kvgate.flowcontrol.controller import FlowController
from kvgate.flowcontrol.fleet import FleetMarks, segment_size

ON = FlowControlConfig(ttl=60.0, fair_share_headroom=0.75, fair_share_ttft_target=0.05)
OFF = FlowControlConfig(ttl=60.0, fair_share_headroom=0.75)


def test_a_joining_worker_does_not_take_a_fixed_headroom_as_the_fleets_level() -> None:
    buf = bytearray(segment_size(2))
    marks = [FleetMarks(memoryview(buf), 2, w).pool("default") for w in range(2)]
    off = FlowController(OFF)  # worker 1: not reloaded yet (fixed headroom 0.75)
    on = FlowController(ON)  # worker 0: reloaded with the target on (starts at 0.0)
    assert on.headroom == 0.0 and off.headroom == 0.75
    now = 100.0
    for _ in range(3):
        now += 0.005
        for m, ctl in zip(marks, (on, off), strict=True):
            assert m is not None
            m.shares.sync(ctl, now)
    assert off.headroom == 0.75
    # FAILS on aa45247f: 0.75 (joined at the "mean level" of a worker that adapts nothing)
    assert on.headroom == 0.0, on.headroom
