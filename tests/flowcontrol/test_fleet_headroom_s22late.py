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


def _miss(ctl: FlowController, now: float, i: int) -> None:
    from kvgate.scheduling.types import InferenceRequest

    r = InferenceRequest(f"q{i}", "m", prompt_tokens=10, max_tokens=4, fairness_id=f"q{i % 4}")
    r.arrival_time = now - 0.2
    ctl.observe_first_token(r, 0.2, service=0.1, held=False)


def test_a_worker_whose_own_move_came_before_it_found_the_fleet_still_joins() -> None:
    """Worker 1 has moved the headroom up; worker 0 (restarted) first syncs while worker 1's row is stale
    (its loop stalled past MARK_TTL_S), then sees a miss of its own, then finds worker 1's row: it never
    joins (``_steer``: ``not self._moved``) and stays at its own level, apart from the fleet's until a
    clamp (FAILS on aa45247f: worker 0 at its one move, worker 1 well above)."""
    buf = bytearray(segment_size(2))
    m0, m1 = (FleetMarks(memoryview(buf), 2, w).pool("default") for w in range(2))
    assert m0 is not None and m1 is not None
    w0, w1 = FlowController(ON), FlowController(ON)
    now = 100.0
    m1.shares.sync(w1, now)
    for i in range(6):
        _miss(w1, now, i)
    m1.shares.sync(w1, now)
    fleet = w1.headroom
    assert fleet > 0.0
    now += 1.0  # (worker 1's row is stale now)
    m0.shares.sync(w0, now)  # (finds no fresh row)
    _miss(w0, now, 99)
    own = w0.headroom
    assert 0.0 < own < fleet
    for _ in range(3):
        now += 0.005
        m1.shares.sync(w1, now)
        m0.shares.sync(w0, now)
    # one process: the fleet's level plus worker 0's move (worker 1 has it added already)
    assert w1.headroom > fleet
    assert abs(w0.headroom - w1.headroom) < 1e-9, (w0.headroom, w1.headroom)
