"""rev-flow23 F2: a share row's headroom level is published before that sync's fold (``FleetShares.sync``:
``_publish`` then ``_fold``), so the level a joiner reads lacks the moves the row's worker folded in its
last sync. A worker whose controller is new (a reload's, a restart's) and that syncs within one interval
of that fold joins the stale level; the other worker, earlier, keeps its own: the two stay apart by those
moves (until a clamp). Two workers on one buffer, time injected, as
tests/flowcontrol/test_fleet_join_exact.py (moved from the review, fixflow23)."""

from __future__ import annotations

import pytest

from kvgate.flowcontrol.config import FlowControlConfig
from kvgate.flowcontrol.controller import FlowController
from kvgate.flowcontrol.fleet import FleetMarks, PoolMark, segment_size
from kvgate.scheduling.types import InferenceRequest

ON = FlowControlConfig(ttl=60.0, fair_share_headroom=0.75, fair_share_ttft_target=0.05)


def _mark(buf: bytearray, w: int) -> PoolMark:
    m = FleetMarks(memoryview(buf), 2, w).pool("default")
    assert m is not None
    return m


def _miss(ctl: FlowController, now: float) -> None:
    r = InferenceRequest("q1", "m", prompt_tokens=10, max_tokens=4, fairness_id="q1")
    r.arrival_time = now - 0.2
    ctl.observe_first_token(r, 0.2, service=0.1, held=False)


@pytest.mark.parametrize("restart", [False, True])
def test_a_new_controller_joins_the_level_the_other_worker_holds(restart: bool) -> None:
    buf = bytearray(segment_size(2))
    ctls = [FlowController(ON), FlowController(ON)]
    marks = [_mark(buf, 0), _mark(buf, 1)]
    now = 100.0
    for w in (0, 1):
        marks[w].shares.sync(ctls[w], now)
    now += 0.005
    _miss(ctls[0], now)  # worker 0 moves
    marks[0].shares.sync(ctls[0], now)
    now += 0.005
    marks[1].shares.sync(ctls[1], now)  # worker 1 folds it (its row still says the level before)
    fleet = ctls[1].headroom
    assert fleet > 0 and fleet == ctls[0].headroom
    # worker 0's controller is replaced (a reload: a new picker gets a new mark, workers.py; or a restart)
    if restart:
        FleetMarks(memoryview(buf), 2, 0).clear_row(0)
    ctls[0], marks[0] = FlowController(ON), _mark(buf, 0)
    for _ in range(4):
        now += 0.005
        for w in (0, 1):
            marks[w].shares.sync(ctls[w], now)
    a, b = ctls[0].headroom, ctls[1].headroom
    assert a == pytest.approx(b, abs=1e-9), (a, b, fleet)  # FAILS at 83f8785f: (0.0, 0.0356)
