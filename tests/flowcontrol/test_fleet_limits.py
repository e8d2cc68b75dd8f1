"""``flowcontrol.fleet.FleetLimits``: ``maxRequests`` / ``maxBytes`` (global and per band) bound the queue of
the whole ``kvgate serve --workers N`` fleet, as one process's queue (session 21; before, each worker's).

Two workers are two ``FlowController``s on one segment (a ``bytearray``, as the shared memory), each with
its ``FleetMarks`` view; time injected. What a worker may queue is asked by queuing (``room``): every way a
request leaves a queue must give its place back exactly once, which shows as the room the other worker
finds afterwards. The real processes: ``tests/gateway/test_workers_max_requests.py``."""

from __future__ import annotations

import random

import pytest

from kvgate.flowcontrol.config import BandConfig, FlowControlConfig
from kvgate.flowcontrol.controller import FlowController, QueuedRequest
from kvgate.flowcontrol.fleet import LIMIT_BANDS, FleetMarks, segment_size
from kvgate.scheduling.types import InferenceRequest, ShedError

NOW = 100.0


def req(rid: str, priority: int = 0, prompt: str = "x" * 10, flow: str = "f") -> InferenceRequest:
    return InferenceRequest(rid, "m", prompt_text=prompt, max_tokens=4, priority=priority, fairness_id=flow)


class Lock:
    """The segment lock's interface (``SharedTenants.acquire``/``release``), counting its holds."""

    def __init__(self, free: bool = True) -> None:
        self.free = free
        self.held = False
        self.holds = 0

    def acquire(self) -> bool:
        if not self.free:
            return False  # (found stuck)
        assert not self.held
        self.held = True
        self.holds += 1
        return True

    def release(self) -> None:
        assert self.held
        self.held = False


class Fleet:
    def __init__(self, cfg: FlowControlConfig, workers: int = 2, lock: Lock | None = None) -> None:
        self.buf = bytearray(segment_size(workers))
        self.lock = lock or Lock()
        self.marks = [FleetMarks(memoryview(self.buf), workers, w, lock=self.lock) for w in range(workers)]
        self.ctls = [FlowController(cfg) for _ in range(workers)]
        for w, ctl in enumerate(self.ctls):
            self.attach(w, ctl)
        self.seq = 0

    def attach(self, w: int, ctl: FlowController) -> None:
        mark = self.marks[w].pool("p")
        assert mark is not None
        mark.limits.attach(ctl)

    def put(self, w: int, priority: int = 0, prompt: str = "x" * 10) -> QueuedRequest:
        self.seq += 1
        return self.ctls[w].enqueue(req(f"r{self.seq}", priority, prompt), NOW)

    def room(self, w: int, priority: int = 0, prompt: str = "x" * 10) -> int:
        """How many more requests worker ``w`` may queue (each removed again: the count is unchanged)."""
        got: list[QueuedRequest] = []
        try:
            while len(got) < 1000:
                got.append(self.put(w, priority, prompt))
        except ShedError:
            pass
        for item in got:
            assert self.ctls[w].cancel(item, NOW)
        return len(got)


def test_max_requests_bounds_the_fleets_queue():
    f = Fleet(FlowControlConfig(max_requests=3))
    f.put(0)
    f.put(0)
    f.put(1)
    for w in (0, 1):
        with pytest.raises(ShedError, match=r"flow control queue is full \(3 requests\)"):
            f.put(w)
    assert f.room(0) == f.room(1) == 0
    assert f.lock.holds >= 5 and not f.lock.held  # (each admission under one hold, released)


def test_a_bands_limits_and_max_bytes_bound_the_fleet():
    cfg = FlowControlConfig(
        max_bytes=100, bands={5: BandConfig(5, max_requests=2), 1: BandConfig(1, max_bytes=30)}
    )
    f = Fleet(cfg)
    f.put(0, 5)
    f.put(1, 5)
    with pytest.raises(ShedError, match=r"priority band 5 is full \(2 requests\)"):
        f.put(0, 5)
    f.put(0, 1, "y" * 20)
    with pytest.raises(ShedError, match=r"priority band 1 is full \(30 bytes\)"):
        f.put(1, 1, "y" * 11)
    assert f.room(1, 1, "y" * 10) == 1
    f.put(1, 0, "z" * 40)  # 10 + 10 + 20 + 40 = 80 bytes queued in the fleet
    with pytest.raises(ShedError, match=r"flow control queue is full \(100 bytes\)"):
        f.put(0, 0, "z" * 21)
    assert f.room(0, 0, "z" * 20) == 1


def test_every_way_out_of_a_queue_gives_its_place_back_once():
    f = Fleet(FlowControlConfig(max_requests=6, ttl=10.0))
    c0, c1 = f.ctls
    items = [f.put(0) for _ in range(6)]
    assert f.room(1) == 0
    c0.take(items[0], NOW)  # dispatched
    assert f.room(1) == 1
    assert c0.cancel(items[1], NOW)  # client gone
    assert not c0.cancel(items[1], NOW)  # (twice: once)
    assert f.room(1) == 2
    c0.take(items[2], NOW)
    c0.hold(items[2], NOW, NOW + 1.0)  # turned back by its pick: queued again
    assert f.room(1) == 2
    c0.give_up(items[3], NOW + 1.0)
    assert c0.give_ups(NOW + 2.0) == [items[3]]  # sloAdmission's give-up
    assert f.room(1) == 3
    assert items[4] in c0.expire(NOW + 11.0)  # TTL (the held one too)
    assert f.room(1) == 6
    late = [f.put(0) for _ in range(2)]
    assert c0.evict_all(NOW) == late  # the drain deadline
    assert f.room(1) == 6 and len(c0) == len(c1) == 0


def test_a_random_walk_keeps_the_fleets_count_exact():
    """Any mix of arrivals and ways out on two workers, three bands: the fleet admits exactly what one queue
    holding both workers' requests would."""
    bands = {2: BandConfig(2, max_requests=4), 1: BandConfig(1, max_bytes=60)}
    cfg = FlowControlConfig(max_requests=9, max_bytes=200, ttl=5.0, bands=bands)
    f = Fleet(cfg)
    rnd = random.Random(21)
    queued: list[tuple[int, QueuedRequest]] = []
    now = NOW
    outcomes = {True: 0, False: 0}
    for _ in range(3000):
        op = rnd.random()
        w = rnd.randrange(2)
        if op < 0.5:
            prio, prompt = rnd.choice((0, 1, 2)), "x" * rnd.randrange(1, 30)
            size = len(prompt)
            count = sum(len(c) for c in f.ctls)
            nbytes = sum(c.bytes for c in f.ctls)
            bcount = sum(c.bands[prio].count for c in f.ctls if prio in c.bands)
            bbytes = sum(c.bands[prio].bytes for c in f.ctls if prio in c.bands)
            fits = count < 9 and nbytes + size <= 200
            fits = fits and (prio != 2 or bcount < 4) and (prio != 1 or bbytes + size <= 60)
            f.seq += 1
            outcomes[fits] += 1
            try:
                item = f.ctls[w].enqueue(req(f"r{f.seq}", prio, prompt, rnd.choice("ab")), now)
            except ShedError:
                assert not fits
            else:
                assert fits
                queued.append((w, item))
        elif queued:
            i = rnd.randrange(len(queued))
            w, item = queued[i]
            ctl = f.ctls[w]
            if op < 0.7:
                ctl.cancel(item, now)
            elif op < 0.85 and not item.done and item.held_until is None:
                head = ctl.head(now)
                if head is not None:
                    ctl.take(head, now)
                    if rnd.random() < 0.3:
                        ctl.hold(head, now, now + 0.5)
            else:
                now += 0.5
                ctl.unhold(now)
                ctl.expire(now)
            queued = [(w, it) for w, it in queued if not it.done]
    assert not f.lock.held
    assert min(outcomes.values()) > 200, outcomes  # (both sides of the limits walked)


def test_a_dead_workers_share_is_reclaimed_by_its_row_cleared():
    f = Fleet(FlowControlConfig(max_requests=2, bands={3: BandConfig(3, max_requests=1)}))
    f.put(1, 3)
    f.put(1)
    assert f.room(0) == 0
    supervisor = FleetMarks(memoryview(f.buf), 2, -1)
    supervisor.clear_row(1)  # worker 1 died (its queue with it): cleared before its restart
    assert f.room(0) == 2 and f.room(0, 3) == 1
    # the restarted worker: a fresh controller, counted from its first request
    f.marks[1] = FleetMarks(memoryview(f.buf), 2, 1, lock=f.lock)
    f.ctls[1] = FlowController(f.ctls[0].cfg)
    f.attach(1, f.ctls[1])
    f.put(1, 3)
    assert f.room(0) == 1 and f.room(0, 3) == 0


def test_a_controller_attached_with_a_queue_counts_it():
    """The limits are attached at the worker's first in-flight sync (and a reload's new controller at the
    next): what it queued before counts from then on, and its way out gives it back."""
    cfg = FlowControlConfig(max_requests=3, bands={4: BandConfig(4, max_requests=2)})
    f = Fleet(cfg)
    late = FlowController(cfg)  # worker 0's second controller for the pool (a reload's), queued unattached
    early = late.enqueue(req("early", 4), NOW)
    f.attach(0, late)
    assert f.room(1) == 2 and f.room(1, 4) == 1
    late.take(early, NOW)
    assert f.room(1) == 3 and f.room(1, 4) == 2


def test_a_stuck_lock_admits_on_the_rows_read_without_it():
    lock = Lock()
    f = Fleet(FlowControlConfig(max_requests=2), lock=lock)
    f.put(0)
    lock.free = False
    f.put(1)
    with pytest.raises(ShedError):
        f.put(1)


def test_more_limited_bands_than_entries_keep_a_band_limit_per_worker():
    bands = {p: BandConfig(p, max_requests=1) for p in range(LIMIT_BANDS + 1)}
    f = Fleet(FlowControlConfig(bands=bands))
    for p in range(1, LIMIT_BANDS + 1):  # (claimed at attach, highest first: review s21-wk L4)
        f.put(0, p)
        assert f.room(1, p) == 0, p
    last = 0  # (no entry left in the workers' rows: that band's limit holds in each worker)
    f.put(0, last)
    assert f.room(0, last) == 0 and f.room(1, last) == 1
