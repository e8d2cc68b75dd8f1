"""Review s21-wk (fixwk21): ``flowcontrol.fleet.FleetLimits`` under ``kvgate serve --workers N``.

Two or three workers are ``FlowController``s on one ``bytearray`` segment, as
``tests/flowcontrol/test_fleet_limits.py``. L2: ``hold`` counts a request again without a check (kept: a
check could only refuse a request that has already waited), so the fleet may go over a limit by at most
``workers - 1`` and admits nothing until it is below again: the bound is tested. L3: a raise after
admission gives the place back. L4: the limited bands past ``LIMIT_BANDS`` (and the pools past ``POOLS``)
are the same in every worker and said in the log. M1 (the supervisor clears a dead worker's row when it
sees the death): ``tests/gateway/test_workers_max_requests.py``."""

from __future__ import annotations

import contextlib
import random

import pytest

from kvgate.flowcontrol.config import BandConfig, FlowControlConfig
from kvgate.flowcontrol.controller import FlowController, QueuedRequest
from kvgate.flowcontrol.fleet import (
    _LBBYTES,
    _LBCOUNT,
    _LBYTES,
    _LCOUNT,
    LIMIT_BANDS,
    POOLS,
    FleetMarks,
    segment_size,
)
from kvgate.scheduling.types import InferenceRequest, ShedError

NOW = 100.0


def req(rid: str, priority: int = 0, prompt: str = "x" * 10) -> InferenceRequest:
    return InferenceRequest(rid, "m", prompt_text=prompt, max_tokens=4, priority=priority, fairness_id="f")


class Lock:
    def acquire(self) -> bool:
        return True

    def release(self) -> None:
        pass


class Fleet:
    def __init__(self, cfg: FlowControlConfig, workers: int = 2) -> None:
        self.buf = bytearray(segment_size(workers))
        lock = Lock()
        self.marks = [FleetMarks(memoryview(self.buf), workers, w, lock=lock) for w in range(workers)]
        self.ctls = [FlowController(cfg) for _ in range(workers)]
        self.limits = []
        for w, ctl in enumerate(self.ctls):
            mark = self.marks[w].pool("p")
            assert mark is not None
            mark.limits.attach(ctl)
            self.limits.append(mark.limits)
        self.seq = 0

    def put(self, w: int, priority: int = 0) -> QueuedRequest:
        self.seq += 1
        return self.ctls[w].enqueue(req(f"r{self.seq}", priority), NOW)

    def row_count(self, w: int) -> float:
        lim = self.limits[w]
        return lim.fleet._m[lim.own + _LCOUNT]

    def fleet_count(self) -> float:
        return sum(self.row_count(w) for w in range(len(self.ctls)))


def test_hold_after_another_workers_admission_goes_over_by_one_and_admits_nothing_until_below():
    """L2, kept and bounded: in one process take -> pick -> hold is one synchronous step; across workers
    another may admit into the place meanwhile, and the hold counts it again unchecked. The fleet then holds
    maxRequests + 1 (2 workers), and no arrival anywhere is admitted until it is below the limit again."""
    f = Fleet(FlowControlConfig(max_requests=2))
    f.put(0)
    f.put(0)
    head = f.ctls[0].head(NOW)
    assert head is not None
    f.ctls[0].take(head, NOW, record=False)  # worker 0's dispatcher: taken, its pick runs
    f.put(1)  # worker 1 (another process) admits into the freed place meanwhile
    f.ctls[0].hold(head, NOW, NOW + 0.02)  # worker 0's pick said "not now": queued again, unchecked
    assert f.fleet_count() == 3 == len(f.ctls[0]) + len(f.ctls[1])
    for w in (0, 1, 1):
        with pytest.raises(ShedError):
            f.put(w)
    other = next(it for it in f.ctls[0]._expiry if not it[2].done and it[2] is not head)[2]
    f.ctls[0].take(other, NOW)  # 2 queued: still full
    with pytest.raises(ShedError):
        f.put(1)
    f.ctls[1].cancel(next(it[2] for it in f.ctls[1]._expiry if not it[2].done), NOW)  # 1 queued: room
    f.put(1)
    assert f.fleet_count() == 2


@pytest.mark.parametrize("seed", range(6))
def test_holds_across_workers_never_put_the_fleet_more_than_workers_minus_one_over(seed):
    """L2's bound, as a random interleaving of three workers: each in turn admits an arrival, cancels one,
    takes its head (its pick then runs: the others act meanwhile) or ends its pick (dispatched, or held:
    counted again unchecked). The fleet's queue never holds more than maxRequests + workers - 1, and each
    row stays its controller's own count."""
    workers, limit = 3, 4
    f = Fleet(FlowControlConfig(max_requests=limit), workers)
    rnd = random.Random(seed)
    picking: list[QueuedRequest | None] = [None] * workers
    now = NOW
    for _ in range(3000):
        w = rnd.randrange(workers)
        ctl = f.ctls[w]
        item = picking[w]
        if item is not None:  # its pick ends (one step: nothing else runs in this worker meanwhile)
            if rnd.random() < 0.6:
                ctl.hold(item, now, now + 0.01)
            picking[w] = None
        else:
            op = rnd.random()
            if op < 0.5:
                with contextlib.suppress(ShedError):
                    f.put(w)
            elif op < 0.65:
                live = [e[2] for e in ctl._expiry if not e[2].done]
                if live:
                    ctl.cancel(rnd.choice(live), now)
            else:
                head = ctl.head(now)
                if head is not None:
                    ctl.take(head, now, record=False)
                    picking[w] = head
        now += 0.001
        ctl.unhold(now)
        assert f.fleet_count() <= limit + workers - 1, f.fleet_count()
        assert f.row_count(w) == ctl.count


def test_an_exception_after_admission_gives_the_place_back():
    """L3: ``enqueue`` gave the fleet's place back only for an exception in ``slo_deadline`` /
    ``prompt_tokens``; one after (``slo_known``, the Director's callback, ``band.push``) left the row one
    request above the controller's own count for the process's life: the fleet's bound shrank by one."""
    f = Fleet(FlowControlConfig(max_requests=2, slo_admission=True))

    def broken(_: InferenceRequest) -> bool:
        raise RuntimeError("latency model bug")

    f.ctls[0].slo_known = broken
    with pytest.raises(RuntimeError):
        f.put(0, priority=-1)  # sheddable: slo_known is asked
    assert f.row_count(0) == f.ctls[0].count == 0, (f.row_count(0), f.ctls[0].count)
    assert f.ctls[0].bands[-1].count == 0  # (and nothing half-queued: the callback runs before the push)
    f.ctls[0].slo_known = None
    f.put(0, priority=-1)
    f.put(1, priority=-1)  # the fleet's two places, both free again


def test_random_walk_row_equals_the_controllers_own_counts_with_holds_and_give_ups():
    """(Review s21-wk's property, kept.) After any sequence of ways in and out on one worker (take, hold,
    unhold, cancel, TTL, give-up), its row equals the controller's count / bytes and each band's."""
    bands = {2: BandConfig(2, max_requests=50), -1: BandConfig(-1, max_bytes=10_000)}
    cfg = FlowControlConfig(max_requests=200, max_bytes=100_000, ttl=3.0, bands=bands, slo_admission=True)
    f = Fleet(cfg)
    ctl, lim = f.ctls[0], f.limits[0]
    m = lim.fleet._m
    rnd = random.Random(2121)
    now = NOW
    live: list[QueuedRequest] = []
    for step in range(5000):
        op = rnd.random()
        if op < 0.45:
            f.seq += 1
            r = req(f"q{f.seq}", rnd.choice((2, 0, -1)), "y" * rnd.randrange(1, 40))
            with contextlib.suppress(ShedError):
                live.append(ctl.enqueue(r, now))
        elif op < 0.6 and live:
            ctl.cancel(rnd.choice(live), now)
        elif op < 0.8:
            head = ctl.head(now)
            if head is not None:
                ctl.take(head, now, record=False)
                if rnd.random() < 0.5:
                    ctl.hold(head, now, now + 0.3)
                    if rnd.random() < 0.5:
                        ctl.give_up(head, now + 0.1)
        else:
            now += 0.2
            ctl.unhold(now)
            ctl.expire(now)
            ctl.give_ups(now)
        live = [it for it in live if not it.done]
        assert m[lim.own + _LCOUNT] == ctl.count and m[lim.own + _LBYTES] == ctl.bytes, step
        for prio, band in ctl.bands.items():
            e = lim._mine.get(prio)
            if e is not None and e >= 0:
                assert (m[e + _LBCOUNT], m[e + _LBBYTES]) == (band.count, band.bytes), (step, prio)
        assert ctl.count >= 0


def test_a_band_limit_left_per_worker_past_the_entries_is_said_in_the_log(caplog):
    """L4: past ``LIMIT_BANDS`` limited bands a configured fleet-wide limit holds per worker (the fleet may
    queue N x it): said once in the log, naming the pool and the band."""
    bands = {p: BandConfig(p, max_requests=1) for p in range(LIMIT_BANDS + 1)}
    with caplog.at_level("WARNING", logger="kvgate.flowcontrol"):
        f = Fleet(FlowControlConfig(bands=bands))
        for p in range(LIMIT_BANDS + 1):
            f.put(0, p)
    said = [r.getMessage() for r in caplog.records if "per worker" in r.getMessage()]
    assert len(said) == 2, said  # (once in each worker)
    assert all("pool 'p'" in m and "priority band 0's" in m for m in said), said


def test_the_bands_past_the_entries_are_the_same_in_every_worker_whatever_the_arrival_order():
    """L4: each worker claimed its entries in its own arrival order, so the band left per worker could differ
    between workers (one counted fleet-wide at one worker without the other's queue in it). The configured
    limited bands claim theirs at attach, highest priority first: the lowest is the one left, everywhere."""
    bands = {p: BandConfig(p, max_requests=2) for p in range(LIMIT_BANDS + 1)}
    f = Fleet(FlowControlConfig(bands=bands))
    for p in range(LIMIT_BANDS + 1):  # worker 0's arrivals lowest band first, worker 1's highest first
        f.put(0, p)
        f.put(1, LIMIT_BANDS - p)
    for lim in f.limits:
        assert lim._mine[0] == -1, lim._mine
        assert all(lim._mine[p] >= 0 for p in range(1, LIMIT_BANDS + 1)), lim._mine
    for p in range(1, LIMIT_BANDS + 1):  # each of those is full for the whole fleet: 2 queued
        with pytest.raises(ShedError):
            f.put(p % 2, p)
    f.put(0, 0)  # band 0 holds per worker: each may queue 2 (said in the log)
    f.put(1, 0)


def test_a_pool_past_the_marks_is_said_in_the_log_once(caplog):
    """L4: past ``POOLS`` pools a pool has no mark, share or limit row (its limits hold per worker): said
    once, naming the pool, however often the sync asks."""
    marks = FleetMarks(memoryview(bytearray(segment_size(2))), 2, 0)
    for i in range(POOLS):
        assert marks.pool(f"p{i}") is not None
    with caplog.at_level("WARNING", logger="kvgate.flowcontrol"):
        assert marks.pool("late") is None
        assert marks.pool("late") is None
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "pool 'late'" in said[0] and "per worker" in said[0], said
