"""``FleetShares._steer``'s join, exact (review s22-late F3, s22-final F1): a worker that moved its adaptive
headroom before it found another worker's fresh row (their rows stale past ``MARK_TTL_S``: a stall, a
restart) stayed apart from the fleet until a clamp; the fix tried (join at the others' mean plus its own
moves) counted the moves twice when the other had already joined at this worker's level. Each share row
now records whom its level joined and that worker's moves it holds, so the first fold that finds a row
adds exactly the moves the two levels do not share. Two workers on one buffer, time injected, as
tests/flowcontrol/test_fleet_headroom.py; only misses (the headroom rises, far below its top: no clamp),
so one process's level is the sum of every worker's own moves."""

from __future__ import annotations

import random

import pytest

from kvgate.flowcontrol import fleet as fleet_mod
from kvgate.flowcontrol.config import FlowControlConfig
from kvgate.flowcontrol.controller import FlowController
from kvgate.flowcontrol.fleet import FleetMarks, PoolMark, segment_size
from kvgate.scheduling.types import InferenceRequest

ON = FlowControlConfig(ttl=60.0, fair_share_headroom=0.75, fair_share_ttft_target=0.05)


class Two:
    def __init__(self) -> None:
        self.buf = bytearray(segment_size(2))
        self.ctls = [FlowController(ON), FlowController(ON)]
        self.marks = [self._mark(0), self._mark(1)]
        self.own = [0.0, 0.0]  # each worker's own moves (what one process would add up)
        self.now = 100.0
        self.seq = 0

    def _mark(self, w: int) -> PoolMark:
        m = FleetMarks(memoryview(self.buf), 2, w).pool("default")
        assert m is not None
        return m

    def sync(self, w: int) -> None:
        self.marks[w].shares.sync(self.ctls[w], self.now)

    def miss(self, w: int) -> None:
        self.seq += 1
        r = InferenceRequest(
            f"q{self.seq}", "m", prompt_tokens=10, max_tokens=4, fairness_id=f"q{self.seq % 4}"
        )
        r.arrival_time = self.now - 0.2
        ctl = self.ctls[w]
        before = ctl.headroom
        ctl.observe_first_token(r, 0.2, service=0.1, held=False)
        self.own[w] += ctl.headroom - before

    def settle(self) -> None:
        for _ in range(3):
            self.now += 0.005
            self.sync(0)
            self.sync(1)

    def replace(self, w: int, restart: bool) -> None:
        """Worker ``w``'s controller replaced: a reload (a new picker, a new mark on the same row,
        workers.py) or a restart (its row cleared first); its moves so far stay in what it published."""
        if restart:
            FleetMarks(memoryview(self.buf), 2, w).clear_row(w)
        self.ctls[w], self.marks[w] = FlowController(ON), self._mark(w)

    def levels(self) -> tuple[float, float]:
        return self.ctls[0].headroom, self.ctls[1].headroom


def test_a_worker_that_moved_before_it_found_the_fleet_joins_it() -> None:
    """Review s22-late F3: worker 1 has moved; worker 0 first syncs while worker 1's row is stale, then
    sees a miss of its own, then finds worker 1's row. One process: worker 1's level plus worker 0's move
    (FAILS on main 51c4190c: worker 0 stays at its one move, worker 1 does not take it)."""
    f = Two()
    f.sync(1)
    for _ in range(6):
        f.miss(1)
    f.sync(1)
    fleet = f.ctls[1].headroom
    f.now += 1.0  # (worker 1's row is stale now)
    f.sync(0)  # (finds no fresh row)
    f.miss(0)
    assert 0.0 < f.ctls[0].headroom < fleet
    f.settle()
    a, b = f.levels()
    assert a == pytest.approx(b, abs=1e-9), (a, b)
    assert a == pytest.approx(fleet + f.own[0], abs=1e-9)


def test_the_other_order_counts_the_moves_once() -> None:
    """Review s22-final F1 (the order the reverted fix double counted): worker 0 moved alone; worker 1
    starts and joins at worker 0's level while worker 0's loop is busy; worker 0 then finds worker 1's row,
    which holds its moves already."""
    f = Two()
    f.sync(0)
    for _ in range(6):
        f.miss(0)
    f.now += 0.005
    f.sync(0)
    level = f.ctls[0].headroom
    for _ in range(2):
        f.now += 0.005
        f.sync(1)
    f.settle()
    a, b = f.levels()
    assert a == pytest.approx(b, abs=1e-9) and a == pytest.approx(level, abs=1e-9), (a, b, level)


def test_two_workers_that_moved_apart_meet_at_the_sum_of_their_moves() -> None:
    """Both moved before either found the other (FAILS on main 51c4190c: each keeps its own moves only)."""
    f = Two()
    f.sync(0)
    f.miss(0)
    f.miss(0)
    f.now += 1.0
    f.sync(1)
    for _ in range(3):
        f.miss(1)
    f.settle()
    a, b = f.levels()
    assert a == pytest.approx(b, abs=1e-9), (a, b)
    assert a == pytest.approx(f.own[0] + f.own[1], abs=1e-9)


@pytest.mark.parametrize("seed", range(40))
def test_any_order_of_syncs_stalls_and_misses_ends_at_one_process_level(seed: int) -> None:
    """Random interleavings: syncs of either worker (in either order within a 5 ms tick), stalls past
    ``MARK_TTL_S`` of either, misses at either, a worker's first sync late; once both sync on fresh rows,
    both levels are one process's: the sum of every worker's own moves (FAILS on main 51c4190c for most
    seeds)."""
    rnd = random.Random(seed)
    f = Two()
    started = [False, False]
    misses = 0
    for _ in range(rnd.randrange(4, 30)):
        step = rnd.random()
        w = rnd.randrange(2)
        if step < 0.45:
            started[w] = True
            f.sync(w)
        elif step < 0.6 and misses < 8:
            misses += 1
            f.miss(w)
        elif step < 0.7:
            f.now += 0.3  # a stall: every row older than MARK_TTL_S
        else:
            f.now += 0.005
    f.settle()
    a, b = f.levels()
    assert a == pytest.approx(b, abs=1e-9), (seed, a, b)
    assert a == pytest.approx(f.own[0] + f.own[1], abs=1e-9), (seed, a, f.own)


def test_the_row_holds_its_join_vector_and_its_layout_version() -> None:
    """The vector a worker's row shows (session 24: per worker slot, the newest controller's moves it
    holds; bounded: ``workers`` entries per row), and a row of another layout is not folded."""
    f = Two()
    f.sync(0)
    f.miss(0)
    f.now += 0.005
    f.sync(0)
    f.now += 0.005
    f.sync(1)  # joins worker 0's level
    m = memoryview(f.buf)[fleet_mod._LAYOUT_BYTES :].cast("d")  # (the rows: after the layout mark)
    v = f.marks[1].shares._vec_at(f.marks[1].base)
    e = fleet_mod._VENTRY
    slot0, slot1 = m[v : v + e].tolist(), m[v + e : v + 2 * e].tolist()
    epoch0 = f.marks[0].shares._epoch
    own0 = pytest.approx(f.own[0])
    # (2nd write: version 2; no base, so its oldest incarnation held is itself: session 25)
    assert slot0[: fleet_mod._VCUR] == [epoch0, 2.0, own0, 0, 0, 0, epoch0]
    epoch1 = f.marks[1].shares._epoch
    assert slot1[: fleet_mod._VCUR] == [epoch1, 1.0, 0.0, 0.0, 0, 0, epoch1]
    assert f.ctls[1].headroom == pytest.approx(f.own[0])
    row = f.marks[1].shares._row(f.marks[1].base)
    assert m[row + fleet_mod._SVERSION] == fleet_mod.SHARE_VERSION == 5.0
    assert fleet_mod.SHARE_FIELDS == 11 + fleet_mod.SHARE_FLOWS * 3
    assert (
        fleet_mod.segment_size(2)
        == fleet_mod._LAYOUT_BYTES  # (the layout mark: review s25-rev-wk25 F1)
        + 2
        * fleet_mod.POOLS
        * (fleet_mod.FIELDS + fleet_mod.SHARE_FIELDS + fleet_mod.LIMIT_FIELDS + 2 * e)
        * 8
    )
    # a row of another layout version: worker 0 folds nothing from it (its counts alone)
    m[row + fleet_mod._SVERSION] = fleet_mod.SHARE_VERSION + 1
    assert f.marks[0].shares._fold(f.ctls[0], f.now, {}) is False


@pytest.mark.parametrize("seed", range(40))
def test_any_order_with_reloads_and_restarts_ends_at_one_level(seed: int) -> None:
    """As above, with reloads and restarts of either worker (review s23-rev-flow23 F2: a row's level was
    written before that sync's fold, so a new controller joining within one interval took a level
    without the moves just folded and the two stayed apart; FAILS on main 83f8785f at seeds 9, 33, 34).
    Both end at one level, never above the sum of all moves made (a replaced
    controller's moves not yet folded by the other are lost, as one process's restart loses them)."""
    rnd = random.Random(seed)
    f = Two()
    misses = 0
    for _ in range(rnd.randrange(4, 40)):
        step = rnd.random()
        w = rnd.randrange(2)
        if step < 0.45:
            f.sync(w)
        elif step < 0.6 and misses < 8:
            misses += 1
            f.miss(w)
        elif step < 0.67:
            f.now += 0.3
        elif step < 0.77:
            f.replace(w, restart=step < 0.72)
        else:
            f.now += 0.005
    f.settle()
    a, b = f.levels()
    assert a == pytest.approx(b, abs=1e-9), (seed, a, b)
    assert a <= f.own[0] + f.own[1] + 1e-9, (seed, a, f.own)
