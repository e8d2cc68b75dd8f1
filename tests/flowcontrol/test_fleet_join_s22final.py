"""s22-final F1 (lead22 a90d1956, FleetShares._steer): a worker that moved before it found another's fresh
row joins at the others' mean plus its own moves; when the other worker had already joined at this
worker's level (which holds those moves), they are counted twice. Two workers on one buffer, time injected,
as tests/flowcontrol/test_fleet_headroom_s22late.py."""

from __future__ import annotations

from kvgate.flowcontrol.config import FlowControlConfig
from kvgate.flowcontrol.controller import FlowController
from kvgate.flowcontrol.fleet import FleetMarks, segment_size
from kvgate.scheduling.types import InferenceRequest

ON = FlowControlConfig(ttl=60.0, fair_share_headroom=0.75, fair_share_ttft_target=0.05)


def _miss(ctl: FlowController, now: float, i: int) -> None:
    r = InferenceRequest(f"q{i}", "m", prompt_tokens=10, max_tokens=4, fairness_id=f"q{i % 4}")
    r.arrival_time = now - 0.2
    ctl.observe_first_token(r, 0.2, service=0.1, held=False)


def test_a_worker_whose_level_the_other_joined_at_does_not_add_its_moves_again() -> None:
    buf = bytearray(segment_size(2))
    m0, m1 = (FleetMarks(memoryview(buf), 2, w).pool("default") for w in range(2))
    assert m0 is not None and m1 is not None
    a, b = FlowController(ON), FlowController(ON)
    now = 100.0
    m0.shares.sync(a, now)  # worker 0 alone (worker 1 not started yet)
    for i in range(6):
        _miss(a, now, i)
    now += 0.005
    m0.shares.sync(a, now)  # its moves published: its level holds them
    level = a.headroom
    assert level > 0.0
    # worker 1 starts and syncs twice while worker 0's loop is busy (its row still fresh): it joins at
    # worker 0's level, and its second row says so
    for _ in range(2):
        now += 0.005
        m1.shares.sync(b, now)
    assert abs(b.headroom - level) < 1e-9
    for _ in range(3):
        now += 0.005
        m0.shares.sync(a, now)
        m1.shares.sync(b, now)
    # one process: one miss streak, the level worker 0 reached; the two workers agree
    assert abs(a.headroom - b.headroom) < 1e-9, (a.headroom, b.headroom)
    assert abs(a.headroom - level) < 1e-9, (a.headroom, level)
