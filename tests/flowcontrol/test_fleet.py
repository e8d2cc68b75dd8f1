"""``flowcontrol.fleet``: the queue order across ``kvgate serve --workers N`` (marks in shared memory).

Two workers are two ``FlowDispatcher``s on one marks buffer (a ``bytearray``, as the shared segment),
one pool whose free running slots both gates read (the shared in-flight counts), time injected."""

from __future__ import annotations

from typing import Any

import pytest

from kvgate.flowcontrol.config import FlowControlConfig
from kvgate.flowcontrol.controller import FlowController
from kvgate.flowcontrol.dispatcher import FlowDispatcher
from kvgate.flowcontrol.fleet import MARK_TTL_S, POOLS, FleetMarks, pool_key, segment_size
from kvgate.scheduling.types import InferenceRequest, PickResult


def req(rid: str, flow: str, priority: int = 0) -> InferenceRequest:
    return InferenceRequest(rid, "m", prompt_tokens=10, max_tokens=4, priority=priority, fairness_id=flow)


class Waiter:
    """A queued request's waiter (as the door's future)."""

    def __init__(self) -> None:
        self.result: Any = None

    def done(self) -> bool:
        return self.result is not None

    def set_result(self, r: Any) -> None:
        self.result = r

    def set_exception(self, e: BaseException) -> None:
        self.result = e


class Fleet:
    """``workers`` dispatchers on one pool of ``free`` running slots; ``sent`` in dispatch order."""

    def __init__(
        self, workers: int = 2, marks: bool = True, headroom: float = 0.0, preemption: bool = False
    ) -> None:
        self.free = 0
        self.now = 100.0
        self.sent: list[tuple[int, str]] = []
        self.stopped: list[str] = []  # the requests ``preempt`` was asked for (``flowControl.preemption``)
        self.buf = bytearray(segment_size(workers))
        self.marks = [FleetMarks(memoryview(self.buf), workers, w) for w in range(workers)]
        self.ds: list[FlowDispatcher] = []
        for w in range(workers):
            ctl = FlowController(FlowControlConfig(ttl=60.0, fair_share_headroom=headroom))
            d = FlowDispatcher(
                ctl,
                pick=self._pick(w),
                saturated=lambda _r: self.free <= 0,
                clock=lambda: self.now,
                preempt=self._preempt if preemption else None,
            )
            if marks:
                d.fleet = self.marks[w].pool("default")
            self.ds.append(d)

    def _pick(self, w: int) -> Any:
        def pick(r: InferenceRequest, _explain: bool) -> PickResult:
            self.free -= 1
            self.sent.append((w, r.request_id))
            self.ds[w].ctl.started(r.fairness_id)
            return PickResult([object()])

        return pick

    def _preempt(self, r: InferenceRequest) -> bool:
        """As the Director's: stops a running sheddable request (frees its slot) for ``r``."""
        self.stopped.append(r.request_id)
        self.free += 1
        return True

    def arrive(self, w: int, r: InferenceRequest) -> Any:
        return self.ds[w].arrive(r, self.now, Waiter())

    def step(self, w: int) -> None:
        """Worker ``w``'s dispatch pass (``_run``'s: expire, dispatch, publish its mark)."""
        d = self.ds[w]
        d.step()
        if d.fleet is not None:
            d.fleet.publish(d.ctl, self.now)


def test_a_lower_band_waits_while_another_worker_holds_a_higher_one() -> None:
    f = Fleet()
    f.arrive(0, req("low", "t0", priority=0))  # pool full: both queue
    f.arrive(1, req("crit", "critical", priority=10))
    f.free = 1  # a slot frees; worker 0 (its own request finished) passes first
    f.step(0)
    assert f.sent == []  # (per-worker order: worker 0 sent "low" into it)
    f.step(1)
    assert f.sent == [(1, "crit")]
    f.free = 1
    f.step(0)  # worker 1's mark now says nothing waits: the lower band goes
    assert f.sent == [(1, "crit"), (0, "low")]


def test_without_marks_each_worker_keeps_its_own_order() -> None:
    """What the marks fix (the old behaviour): worker 0 fills the freed slot with its lower band."""
    f = Fleet(marks=False)
    f.arrive(0, req("low", "t0", priority=0))
    f.arrive(1, req("crit", "critical", priority=10))
    f.free = 1
    f.step(0)
    f.step(1)
    assert f.sent == [(0, "low")]


def _flooded(marks: bool) -> Fleet:
    """Each worker with the flood (t0) over its share in flight; worker 0 has a flood request queued,
    worker 1 a quiet tenant's (t1); the pool full."""
    f = Fleet(marks=marks, headroom=0.25)
    for w in (0, 1):
        for _ in range(5):
            f.ds[w].ctl.started("t0")
        f.ds[w].ctl.started("t2")
    f.arrive(0, req("flood", "t0"))
    f.arrive(1, req("quiet", "t1"))
    assert f.ds[0].ctl.held_back(req("x", "t0"), f.now) and not f.ds[1].ctl.held_back(req("y", "t1"), f.now)
    return f


@pytest.mark.parametrize("marks", [True, False])
def test_a_held_back_flood_waits_while_another_worker_holds_a_quiet_request(marks: bool) -> None:
    f = _flooded(marks)
    f.free = 1
    f.step(0)
    f.step(1)
    assert f.sent == ([(1, "quiet")] if marks else [(0, "flood")])


def test_a_request_not_held_back_does_not_defer_to_its_own_band() -> None:
    f = _flooded(True)
    f.arrive(0, req("q2", "t2"))  # worker 0's t2: under its share, queued behind nothing that goes first
    f.free = 1
    f.step(0)
    assert f.sent == [(0, "q2")]  # (its band's quiet head in worker 1 does not hold back a quiet one)


def test_the_head_of_the_whole_fleet_never_defers() -> None:
    """Both workers hold a critical request: neither defers to the other (no cycle, no stall)."""
    f = Fleet()
    f.arrive(0, req("c0", "critical", priority=10))
    f.arrive(1, req("c1", "critical", priority=10))
    f.free = 1
    f.step(0)
    assert f.sent == [(0, "c0")]


def test_arrival_into_free_capacity_queues_behind_another_workers_higher_band() -> None:
    f = Fleet()
    f.arrive(1, req("crit", "critical", priority=10))
    f.free = 1  # before worker 1's next pass, a request arrives at worker 0 with its queue empty
    got = f.arrive(0, req("low", "t0"))
    assert not isinstance(got, PickResult) and f.sent == []  # queued, not picked at once
    f.step(1)
    assert f.sent == [(1, "crit")]


def test_a_dead_workers_mark_expires() -> None:
    f = Fleet()
    f.arrive(1, req("crit", "critical", priority=10))  # worker 1 then dies: its mark is never refreshed
    f.arrive(0, req("low", "t0"))
    f.free = 1
    f.now += MARK_TTL_S  # (at the bound: still honoured)
    f.step(0)
    assert f.sent == []
    f.now += 0.001  # past it: ignored
    f.step(0)
    assert f.sent == [(0, "low")]


def test_a_mark_from_the_future_or_a_cleared_row_is_ignored() -> None:
    f = Fleet()
    f.arrive(1, req("crit", "critical", priority=10))
    f.arrive(0, req("low", "t0"))
    f.free = 1
    f.marks[0].clear_row(1)  # the supervisor, before it restarts worker 1
    f.step(0)
    assert f.sent == [(0, "low")]
    f.arrive(1, req("crit2", "critical", priority=10))
    f.arrive(0, req("low2", "t0"))
    f.now -= 1.0  # (a stamp ahead of the reader's clock: not a fresh mark)
    f.free = 1
    f.step(0)
    assert f.sent == [(0, "low"), (0, "low2")]


def test_a_deferred_head_waits_and_never_preempts() -> None:
    """(review s15-fcw F1) With ``flowControl.preemption``: a head that waits for another worker's
    request is not one whose pool is full: it stops nothing (capacity is free) and does not go first."""
    f = Fleet(preemption=True)
    f.arrive(0, req("std", "t0"))
    f.arrive(1, req("crit", "critical", priority=10))
    f.free = 1  # a slot frees; worker 0 passes first
    f.step(0)
    assert f.stopped == [] and f.sent == []
    f.step(1)
    assert f.sent == [(1, "crit")] and f.stopped == []
    # the pool really full (and no other worker ahead of it): preemption as in one process
    f.step(0)
    assert f.stopped == ["std"] and f.sent == [(1, "crit"), (0, "std")]


def test_a_mark_written_just_after_the_readers_clock_read_is_honoured() -> None:
    """(review s15-fcw F2) ``now`` is read once per pass (and per arrival): another process that
    publishes after that read stamps its mark a little later; that is a fresh mark, not garbage (up to
    ``MARK_TTL_S`` ahead; further is, as a zeroed row's stamp 0)."""
    buf = bytearray(segment_size(2))
    a, b = FleetMarks(memoryview(buf), 2, 0), FleetMarks(memoryview(buf), 2, 1)
    theirs = FlowController(FlowControlConfig(ttl=60.0))
    theirs.enqueue(req("crit", "critical", priority=10), 100.001)
    b.pool("default").publish(theirs, 100.001)  # type: ignore[union-attr]
    mine = a.pool("default")
    ctl = FlowController(FlowControlConfig(ttl=60.0))
    assert mine is not None and mine.defers(req("low", "t0"), ctl, 100.0)
    assert mine.defers(req("low", "t0"), ctl, 100.001 - MARK_TTL_S)
    assert not mine.defers(req("low", "t0"), ctl, 100.0 - MARK_TTL_S)


class CountingReads:
    """A marks buffer that counts the floats read from it."""

    def __init__(self, m: Any) -> None:
        self.m, self.reads = m, 0

    def __getitem__(self, i: int) -> float:
        self.reads += 1
        return float(self.m[i])

    def __setitem__(self, i: int, v: float) -> None:
        self.m[i] = v


def test_a_check_reads_one_key_per_worker_without_a_mark_for_the_pool() -> None:
    """(review s15-fcw F3) The common case: no other worker ever queued in this pool. A gate check
    must not scan each of their rows (``POOLS`` keys each: every request's fast path under
    ``--workers 8`` read 7 x 16 keys); a miss is remembered until that worker claims another pool (found
    at once) or ``MARK_TTL_S`` passes."""
    workers = 8
    buf = bytearray(segment_size(workers))
    fleet = [FleetMarks(memoryview(buf), workers, w) for w in range(workers)]
    for w in range(1, workers):
        fleet[w].pool("other")  # (they serve another pool; ours they never claimed)
    counting = CountingReads(fleet[0]._m)
    fleet[0]._m = counting  # type: ignore[assignment]
    mine = fleet[0].pool("default")
    ctl = FlowController(FlowControlConfig(ttl=60.0))
    low = req("low", "t0")
    assert mine is not None and not mine.defers(low, ctl, 100.0)  # (the first check scans)
    counting.reads = 0
    for _ in range(10):
        assert not mine.defers(low, ctl, 100.0 + MARK_TTL_S)
    assert counting.reads <= 10 * (workers - 1)
    # a worker that claims our pool is found at the next check, and its mark honoured
    theirs = FlowController(FlowControlConfig(ttl=60.0))
    theirs.enqueue(req("crit", "critical", priority=10), 100.0)
    late = fleet[5].pool("default")
    assert late is not None
    late.publish(theirs, 100.0)
    assert mine.defers(low, ctl, 100.0)


def test_a_remembered_miss_lasts_at_most_the_marks_ttl() -> None:
    """A restarted worker refills its zeroed row, perhaps with our pool where another was: a check
    that remembered it without our pool scans again after ``MARK_TTL_S``."""
    buf = bytearray(segment_size(2))
    a, b = FleetMarks(memoryview(buf), 2, 0), FleetMarks(memoryview(buf), 2, 1)
    b.pool("other")
    b.pool("third")
    mine = a.pool("default")
    ctl = FlowController(FlowControlConfig(ttl=60.0))
    assert mine is not None and not mine.defers(req("low", "t0"), ctl, 100.0)
    a.clear_row(1)  # the supervisor restarts worker 1, which claims ours first this time
    b = FleetMarks(memoryview(buf), 2, 1)
    theirs = FlowController(FlowControlConfig(ttl=60.0))
    theirs.enqueue(req("crit", "critical", priority=10), 100.0)
    b.pool("default").publish(theirs, 100.0 + MARK_TTL_S)  # type: ignore[union-attr]
    assert mine.defers(req("low", "t0"), ctl, 100.0 + MARK_TTL_S + 0.001)


def test_an_emptied_queue_publishes_nothing_waiting() -> None:
    f = Fleet()
    f.arrive(1, req("crit", "critical", priority=10))
    f.free = 1
    f.step(1)  # sent; its pass publishes an empty queue
    f.arrive(0, req("low", "t0"))  # pool full again: queued
    f.free = 1
    f.step(0)
    assert f.sent == [(1, "crit"), (0, "low")]


def test_a_subset_hinted_head_is_not_published() -> None:
    f = Fleet()
    r = req("crit", "critical", priority=10)
    r.subset = frozenset({"10.0.0.9:8000"})
    f.arrive(1, r)
    f.arrive(0, req("low", "t0"))
    f.free = 1
    f.step(0)
    assert f.sent == [(0, "low")]


def test_pools_are_told_apart_and_bounded() -> None:
    buf = bytearray(segment_size(2))
    a, b = FleetMarks(memoryview(buf), 2, 0), FleetMarks(memoryview(buf), 2, 1)
    ctl = FlowController(FlowControlConfig(ttl=60.0))
    ctl.enqueue(req("crit", "critical", priority=10), 0.0)
    b.pool("other").publish(ctl, 0.0)  # type: ignore[union-attr]
    mine = a.pool("default")
    assert mine is not None and not mine.defers(req("low", "t0"), ctl, 0.0)
    b.pool("default").publish(ctl, 0.0)  # type: ignore[union-attr]
    assert mine.defers(req("low", "t0"), ctl, 0.0)
    assert all(b.pool(f"p{i}") is not None for i in range(POOLS - 2))
    assert b.pool("one too many") is None and b.pool("default") is not None  # (known pools keep theirs)
    assert pool_key("default") == pool_key("default") != pool_key("other") and pool_key("") != 0.0


def test_closed_marks_defer_nothing_and_release_the_buffer() -> None:
    buf = bytearray(segment_size(2))
    a, b = FleetMarks(memoryview(buf), 2, 0), FleetMarks(memoryview(buf), 2, 1)
    ctl = FlowController(FlowControlConfig(ttl=60.0))
    ctl.enqueue(req("crit", "critical", priority=10), 0.0)
    mine = a.pool("default")
    b.pool("default").publish(ctl, 0.0)  # type: ignore[union-attr]
    assert mine is not None and mine.defers(req("low", "t0"), ctl, 0.0)
    a.close()
    b.close()
    assert not mine.defers(req("low", "t0"), ctl, 0.0)
    mine.publish(ctl, 0.0)  # no-op, no error on a released buffer
    buf.append(0)  # (no view of it left: a bytearray with exports cannot resize)


def test_the_shared_segment_carries_the_marks_between_processes_views() -> None:
    """The supervisor's segment: ``SharedInFlight``'s extra bytes, one view per worker, closable."""
    import multiprocessing

    from kvgate.gateway.shared_inflight import SharedInFlight

    lock = multiprocessing.get_context("spawn").Lock()
    owner = SharedInFlight.create(2, lock, 16, extra=segment_size(2))
    views = [SharedInFlight.attach(owner.name, lock, 2, w, 16, extra=segment_size(2)) for w in (0, 1)]
    marks = [FleetMarks(v.extra, 2, w) for w, v in enumerate(views)]
    sup = FleetMarks(owner.extra, 2, -1)
    ctl = FlowController(FlowControlConfig(ttl=60.0))
    ctl.enqueue(req("crit", "critical", priority=10), 1.0)
    marks[1].pool("default").publish(ctl, 1.0)  # type: ignore[union-attr]
    mine = marks[0].pool("default")
    assert mine is not None and mine.defers(req("low", "t0"), ctl, 1.0)
    sup.clear_row(1)
    assert not mine.defers(req("low", "t0"), ctl, 1.0)
    for m in (*marks, sup):
        m.close()
    for v in (*views, owner):
        v.close()  # (BufferError if a view of the segment were left)


def _failing_mark(f: Fleet, w: int) -> None:
    """Worker ``w``'s mark raises when written (a bug in what it reads), never when the gate asks."""

    def boom(*_a: Any, **_k: Any) -> bool:
        raise RuntimeError("boom")

    f.ds[w].ctl.held_back = boom  # type: ignore[method-assign]


def test_a_mark_that_cannot_be_written_does_not_fail_the_request_queued(
    caplog: pytest.LogCaptureFixture,
) -> None:
    f = Fleet()
    _failing_mark(f, 0)
    got = f.arrive(0, req("low", "t0"))  # pool full: queued, its mark written
    assert not isinstance(got, PickResult) and len(f.ds[0].ctl) == 1
    assert "queue mark could not be written" in caplog.text


async def test_a_mark_that_cannot_be_written_does_not_end_the_dispatch_loop() -> None:
    import asyncio

    f = Fleet()
    d = f.ds[0]
    d.recheck_interval = 0.001
    _failing_mark(f, 0)
    waiter = asyncio.ensure_future(d.admit(req("low", "t0")))
    await asyncio.sleep(0.01)  # queued (pool full); the loop's passes each fail to write the mark
    f.free = 1
    got = await asyncio.wait_for(waiter, 30.0)
    assert isinstance(got, PickResult) and f.sent == [(0, "low")]
