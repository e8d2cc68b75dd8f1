"""``flowcontrol.fleet.FleetShares._steer``: under ``kvgate serve --workers N`` the adaptive fair-share
headroom (``fairShareTTFTTarget``) steers on the fleet's first tokens, as one process's: a quiet request's
miss at one worker raises the headroom that holds the flood back at every worker (before session 22 each
worker steered on its own first tokens only, and one whose quiet requests met no miss kept dispatching the
flood into the slots the other worker's quiet requests needed).

Two workers are two ``FlowController``s with a pool mark each on one buffer (a ``bytearray``, as the shared
segment); a third controller told every first token of both is what one process would do. Time injected."""

from __future__ import annotations

import random

import pytest

from kvgate.flowcontrol.config import FlowControlConfig
from kvgate.flowcontrol.controller import FlowController
from kvgate.flowcontrol.fleet import FleetMarks, PoolMark, segment_size
from kvgate.scheduling.types import InferenceRequest

# the live bench's flow control (kvgate-reserve-feasible: fair share, TTFT target 50 ms, running reserve)
LIVE = FlowControlConfig(
    ttl=60.0, fair_share_headroom=0.75, fair_share_ttft_target=0.05, fair_share_running_reserve=True
)


class Workers:
    def __init__(self, n: int = 2) -> None:
        self.buf = bytearray(segment_size(n))
        self.n = n
        self.ctls = [FlowController(LIVE) for _ in range(n)]
        self.marks: list[PoolMark] = [self._mark(w) for w in range(n)]
        self.one = FlowController(LIVE)
        self.now = 100.0
        self.seq = 0

    def _mark(self, w: int) -> PoolMark:
        m = FleetMarks(memoryview(self.buf), self.n, w).pool("default")
        assert m is not None
        return m

    def sync(self) -> None:
        for m, ctl in zip(self.marks, self.ctls, strict=True):
            m.shares.sync(ctl, self.now)

    def first_token(self, w: int, ttft: float) -> None:
        """A quiet request answered at worker ``w`` (told ``one`` too) ``ttft`` after its arrival."""
        self.seq += 1
        flow = f"q{self.seq % 4}"
        r = InferenceRequest(f"q{self.seq}", "m", prompt_tokens=10, max_tokens=4, fairness_id=flow)
        r.arrival_time = self.now - ttft
        for ctl in (self.ctls[w], self.one):
            ctl.observe_first_token(r, ttft, service=ttft / 2, held=False)


def test_a_miss_at_one_worker_raises_the_headroom_at_both() -> None:
    f = Workers()
    f.sync()
    f.sync()
    for _ in range(3):
        f.first_token(1, 0.2)  # three quiet misses, all at worker 1
    f.sync()
    f.sync()
    assert f.one.headroom > 0.0
    assert f.ctls[0].headroom == pytest.approx(f.one.headroom)  # (main: 0.0, worker 0 saw no miss)
    assert f.ctls[1].headroom == pytest.approx(f.one.headroom)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_fleets_headroom_is_one_process_headroom(seed: int) -> None:
    """Misses and hits spread over the workers as connections spread requests, a sync every few tokens:
    the workers hold one headroom, moved by every first token of the fleet as one process's is. (Not
    equal to one process's: each worker's ``aim`` is computed on its own half of the window's sample, a
    little lower, so a miss moves it a little more: the per-worker bound is kept, it is the stricter.)"""
    rnd = random.Random(seed)
    f = Workers()
    f.sync()
    for step in range(400):
        f.now += 0.01
        f.first_token(rnd.randrange(2), 0.2 if rnd.random() < (0.5 if step < 150 else 0.05) else 0.02)
        if rnd.random() < 0.3:
            f.sync()
    f.sync()
    f.sync()
    assert 0.0 < f.one.headroom < LIVE.fair_share_headroom  # (moved, not at a clamp at the end)
    a, b = (ctl.headroom for ctl in f.ctls)
    assert a == pytest.approx(b, abs=0.01), (a, b)  # (main: each worker on its own tokens)
    assert f.one.headroom - 0.01 <= a <= f.one.headroom + 0.15, (a, f.one.headroom)


def test_a_restarted_worker_starts_at_the_fleets_headroom_and_its_reset_is_no_move() -> None:
    f = Workers()
    f.sync()
    f.sync()
    for _ in range(4):
        f.first_token(0, 0.2)
    f.sync()
    f.sync()
    level = f.ctls[0].headroom
    assert level > 0.0 and f.ctls[1].headroom == pytest.approx(level)
    # worker 1 dies: the supervisor zeroes its rows; its successor has a fresh controller (headroom 0)
    FleetMarks(memoryview(f.buf), 2, -1).clear_row(1)
    f.now += 0.5
    f.ctls[1] = FlowController(LIVE)
    f.marks[1] = f._mark(1)
    f.sync()
    f.sync()
    assert f.ctls[0].headroom == pytest.approx(level)  # (its restart did not pull worker 0 down)
    assert f.ctls[1].headroom == pytest.approx(level)  # (it joined at the fleet's level)


def test_without_a_ttft_target_the_headroom_is_the_configured_one() -> None:
    cfg = FlowControlConfig(ttl=60.0, fair_share_headroom=0.5)
    buf = bytearray(segment_size(2))
    marks = [FleetMarks(memoryview(buf), 2, w).pool("default") for w in range(2)]
    ctls = [FlowController(cfg) for _ in range(2)]
    for _ in range(2):
        for m, ctl in zip(marks, ctls, strict=True):
            assert m is not None
            m.shares.sync(ctl, 100.0)
    assert [c.headroom for c in ctls] == [0.5, 0.5]
