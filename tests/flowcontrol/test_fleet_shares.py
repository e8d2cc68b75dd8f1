"""``flowcontrol.fleet.FleetShares``: the held-back test and the running reserve on the fleet's counts
under ``kvgate serve --workers N`` (each worker's row in the shared segment, folded every sync).

Two workers are two ``FlowController``s with a pool mark each on one buffer (a ``bytearray``, as the
shared segment); a third controller fed every request of both is what one process would decide. Time
injected. Each test fails on main a5159b5 (no ``FleetShares``: each worker's test on its own counts)."""

from __future__ import annotations

import random

import pytest

from kvgate.flowcontrol.config import FlowControlConfig
from kvgate.flowcontrol.controller import FlowController, free_slots
from kvgate.flowcontrol.fleet import MARK_TTL_S, FleetMarks, PoolMark, segment_size
from kvgate.scheduling.types import InferenceRequest

# the live bench's flow control (kvgate-reserve-feasible: fair share, TTFT target, running reserve)
LIVE = FlowControlConfig(
    ttl=60.0, fair_share_headroom=0.75, fair_share_ttft_target=0.05, fair_share_running_reserve=True
)
PLAIN = FlowControlConfig(ttl=60.0, fair_share_headroom=0.75)  # over its share: more than the mean


def req(rid: str, flow: str) -> InferenceRequest:
    return InferenceRequest(rid, "m", prompt_tokens=10, max_tokens=4, fairness_id=flow)


class Workers:
    """``n`` workers' controllers on one pool's marks, and ``one``: the same requests in one process."""

    def __init__(self, cfg: FlowControlConfig, n: int = 2) -> None:
        self.buf = bytearray(segment_size(n))
        self.ctls = [FlowController(cfg) for _ in range(n)]
        self.marks: list[PoolMark] = []
        for w in range(n):
            m = FleetMarks(memoryview(self.buf), n, w).pool("default")
            assert m is not None
            self.marks.append(m)
        self.one = FlowController(cfg)
        self.now = 100.0

    def start(self, w: int, flow: str, k: int = 1) -> None:
        """``k`` requests of ``flow`` arrive at worker ``w`` and go out (in flight)."""
        for i in range(k):
            r = req(f"{flow}-{w}-{i}", flow)
            for ctl in (self.ctls[w], self.one):
                ctl.arrived(r, self.now)
                ctl.started(flow, r, self.now)

    def end(self, w: int, flow: str) -> None:
        for ctl in (self.ctls[w], self.one):
            ctl.ended(flow, self.now)

    def sync(self) -> None:
        for m, ctl in zip(self.marks, self.ctls, strict=True):
            m.shares.sync(ctl, self.now)
        for m, ctl in zip(self.marks, self.ctls, strict=True):  # (each has seen the others' rows now)
            m.shares.sync(ctl, self.now)


def test_a_flood_under_its_share_in_its_worker_is_held_back_on_the_fleets_counts() -> None:
    """Session 18's trace: the flood's requests came to a worker where few quiet flows were active,
    so that worker's counts did not hold it back. On the fleet's counts it is over its share."""
    f = Workers(LIVE)
    for q in ("q1", "q2", "q3", "q4"):
        f.start(0, q)
    f.start(1, "flood", 6)
    f.start(1, "q1")
    flood = req("next", "flood")
    assert not f.ctls[1].held_back(flood, f.now)  # its worker's half: flood and q1 active, 6 of 7
    assert f.one.held_back(flood, f.now)
    f.sync()
    assert f.ctls[1].fleet is not None and f.ctls[0].fleet is not None
    assert f.ctls[1].held_back(flood, f.now)
    assert f.ctls[0].held_back(flood, f.now)  # (none of it in flight at worker 0)
    assert not f.ctls[0].held_back(req("q", "q2"), f.now)


def _bunched(q1: int) -> Workers:
    """Two workers: worker 0 has ``q1`` requests of the quiet flow q1 and one of the flood in flight,
    worker 1 eight of the flood and one each of q2, q3, q4."""
    f = Workers(PLAIN)
    f.start(0, "q1", q1)
    f.start(0, "flood", 1)
    f.start(1, "flood", 8)
    for q in ("q2", "q3", "q4"):
        f.start(1, q)
    return f


def test_a_quiet_flow_bunched_in_one_worker_is_not_held_back_on_the_fleets_counts() -> None:
    """The other side of the trace: a quiet tenant whose requests came to one worker in a bunch was
    over its share there (3 of 4 in flight), under it in the fleet."""
    f = _bunched(2)
    assert f.ctls[0].over_share("q1")
    assert not f.one.over_share("q1")
    # the fairness choice among a band's flows (``heads``: those under their share first) too
    ctl = f.ctls[0]
    ctl.enqueue(req("f", "flood"), f.now)
    ctl.enqueue(req("q", "q1"), f.now)
    head = ctl.head(f.now)
    assert head is not None and head.flow == "flood"  # (its worker's counts: the flood is under)
    f.sync()
    assert not ctl.over_share("q1")
    assert ctl.over_share("flood") and f.ctls[1].over_share("flood")
    head = ctl.head(f.now)
    assert head is not None and head.flow == "q1"


@pytest.mark.parametrize("seed", range(5))
def test_the_fleets_test_is_one_process_test(seed: int) -> None:
    """Requests of 7 flows spread at random over two workers, starting and ending, a sync before each:
    each worker's share test and reserve are what one process holding all of them decides."""
    rng = random.Random(seed)
    cfg = FlowControlConfig(ttl=60.0, fair_share_headroom=0.75, fair_share_running_reserve=True)
    f = Workers(cfg)
    flows = ["flood", "q1", "q2", "q3", "q4", "critical", "batch"]
    live: list[tuple[int, str]] = []
    for _ in range(60):
        f.now += rng.uniform(0.0, 0.2)
        f.sync()  # (each dispatch asks the held-back test: the reserve's rates count those not held back)
        if live and rng.random() < 0.4:
            w, flow = live.pop(rng.randrange(len(live)))
            f.end(w, flow)
        else:
            flow = "flood" if rng.random() < 0.5 else rng.choice(flows)
            w = rng.randrange(2)
            f.start(w, flow)
            live.append((w, flow))
    f.sync()
    for flow in flows:
        for ctl in f.ctls:
            assert ctl.over_share(flow) == f.one.over_share(flow), flow
    # the reserve's rates are the sums of the workers' (which requests each held back at dispatch is its
    # own decision: one process may have decided another way in between, its counts recounted at other
    # times, so its rates are not compared)
    rates = [ctl.rates(f.now) for ctl in f.ctls]
    for ctl in f.ctls:
        assert ctl.fleet is not None
        take, give = ctl.fleet.rates(ctl, f.now)
        assert take == pytest.approx(rates[0][0] + rates[1][0])
        assert give == pytest.approx(rates[0][1] + rates[1][1])
        assert ctl.free_reserve(f.now, 24) == free_slots(take, give, ctl.reserve_miss, 24)


def test_the_reserve_counts_the_fleets_finishes() -> None:
    """A worker that has seen no finish of its own kept its whole cap free (``free_slots``: no finish
    measured); with the other worker's finishes it keeps what the fleet's rates say."""
    cfg = FlowControlConfig(ttl=60.0, fair_share_headroom=0.75, fair_share_running_reserve=True)
    f = Workers(cfg)
    for i in range(8):
        f.now += 0.1
        f.start(0, f"q{i % 4}")
        f.start(1, f"q{i % 4}")
        f.end(1, f"q{i % 4}")
    assert f.ctls[0].free_reserve(f.now, 24) == 24
    f.sync()
    (t0, g0), (t1, g1) = f.ctls[0].rates(f.now), f.ctls[1].rates(f.now)
    assert g0 == 0.0 < g1
    want = free_slots(t0 + t1, g1, f.ctls[0].reserve_miss, 24)
    assert f.ctls[0].free_reserve(f.now, 24) == want < 24


def test_the_fleets_arrivals_say_who_floods() -> None:
    """``rate_over`` on the fleet's arrivals: a flood spread over two workers whose quiet tenants came
    to one worker each is over its rate in both, as in one process."""
    f = Workers(LIVE)
    for i in range(12):
        f.now += 0.11  # (the flows sending are recounted at most every 0.1 s)
        f.start(i % 2, "flood")
        if i % 3 == 0:
            f.start(0, "q1")
            f.start(1, "q2")
            f.start(0, "q3")
            f.start(1, "q4")
    assert f.one.rate_over("flood")
    f.sync()
    assert f.ctls[0].rate_over("flood") and f.ctls[1].rate_over("flood")
    assert not f.ctls[0].rate_over("q1") and not f.ctls[1].rate_over("q2")


def test_a_stale_or_torn_row_is_not_counted() -> None:
    f = _bunched(3)
    f.sync()
    assert not f.ctls[0].over_share("q1")
    # worker 1 stops syncing (died, or its loop stalled): past MARK_TTL_S worker 0 is on its own counts
    f.now += MARK_TTL_S + 0.01
    f.marks[0].shares.sync(f.ctls[0], f.now)
    assert f.ctls[0].fleet is None and f.ctls[0].over_share("q1")
    # a row caught mid-write (its sequence number odd) is skipped for that sync
    f.marks[1].shares.sync(f.ctls[1], f.now)
    fleet = f.marks[1].fleet
    b = f.marks[1].shares._row(f.marks[1].base)
    seq = fleet._m[b]
    fleet._m[b] = seq + 1.0
    f.marks[0].shares.sync(f.ctls[0], f.now)
    assert f.ctls[0].fleet is None
    fleet._m[b] = seq
    f.marks[0].shares.sync(f.ctls[0], f.now)
    assert f.ctls[0].fleet is not None and not f.ctls[0].over_share("q1")


def test_the_supervisor_clears_a_restarted_workers_shares_and_one_worker_has_none() -> None:
    f = Workers(PLAIN)
    f.start(1, "flood", 8)
    f.start(0, "q1", 1)
    f.sync()
    assert f.ctls[0].over_share("flood")
    FleetMarks(memoryview(f.buf), 2, -1).clear_row(1)
    f.marks[0].shares.sync(f.ctls[0], f.now)
    assert f.ctls[0].fleet is None and not f.ctls[0].over_share("flood")
    alone = FleetMarks(memoryview(bytearray(segment_size(1))), 1, 0).pool("default")
    assert alone is not None
    ctl = FlowController(PLAIN)
    alone.shares.sync(ctl, f.now)
    assert ctl.fleet is None


async def test_the_workers_sync_carries_the_shares_between_processes_views() -> None:
    """``gateway.workers._share_inflight`` (every worker's 5 ms sync) writes and folds the shares
    through the supervisor's segment."""
    import asyncio
    import contextlib
    import multiprocessing
    import time
    from types import SimpleNamespace

    from kvgate.flowcontrol import fleet
    from kvgate.gateway.shared_inflight import SharedInFlight
    from kvgate.gateway.workers import _share_inflight

    lock = multiprocessing.get_context("spawn").Lock()
    owner = SharedInFlight.create(2, lock, extra=fleet.segment_size(2))
    other = SharedInFlight.attach(owner.name, lock, 2, 1, extra=fleet.segment_size(2))
    theirs = fleet.FleetMarks(other.extra, 2, 1).pool("p")
    assert theirs is not None
    octl = FlowController(PLAIN)
    for i in range(8):
        octl.started("flood", req(f"f{i}", "flood"), time.monotonic())
    mine = FlowController(PLAIN)
    mine.started("q1")
    flow = SimpleNamespace(fleet=None, ctl=mine, clock=time.monotonic)
    pool = SimpleNamespace(name="p", endpoints=lambda: [], director=SimpleNamespace(flow=flow))
    task = asyncio.create_task(_share_inflight([pool], 0, (owner.name, lock, 2)))
    try:
        for _ in range(6000):  # (30 s: 1 s before)
            theirs.shares.sync(octl, time.monotonic())
            await asyncio.sleep(0.005)
            if mine.fleet is not None:
                break
        assert mine.fleet is not None
        assert mine.over_share("flood") and not mine.over_share("q1")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        theirs.fleet.close()
        other.close()
        owner.close()
