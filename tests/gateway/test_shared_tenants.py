"""The fleet's tenant buckets and in-flight count in shared memory (``gateway.shared_tenants``): several
views of one real segment (as several ``--workers`` processes attach it) behave as one process's limiter."""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing import shared_memory
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvgate.gateway.shared_tenants import (
    SharedRateLimiter,
    SharedTenants,
    segment_size,
    tenant_key,
)
from kvgate.gateway.tenants import RateLimiter, bucket_key

OFFSET = 24  # the table sits after other data in the segment (the in-flight counts, the marks)


@contextmanager
def fleet(
    workers: int = 2, slots: int = 64, ways: int = 8, wait_s: float = 0.05
) -> Iterator[list[SharedTenants]]:
    """The supervisor's segment and lock, and each worker's own attached view of it."""
    lock = multiprocessing.get_context("spawn").Lock()
    shm = shared_memory.SharedMemory(create=True, size=OFFSET + segment_size(workers, slots))
    assert shm.buf is not None
    shm.buf[:] = bytes(shm.size)
    views = [
        SharedTenants.attach(shm.name, OFFSET, lock, workers, w, slots=slots, ways=ways, wait_s=wait_s)
        for w in range(workers)
    ]
    try:
        yield views
    finally:
        for v in views:
            v.close()
        shm.close()
        shm.unlink()


def test_two_workers_hold_a_tenant_to_its_limit_overall() -> None:
    now = [100.0]
    with fleet() as (w0, w1):
        a, b = (SharedRateLimiter(w, 4, 0, lambda: now[0]) for w in (w0, w1))
        got = [(a if i % 2 else b).admit("t") for i in range(8)]
        assert got[:4] == [None] * 4  # 4 a minute, whichever worker takes them
        assert all(w is not None and 0 < w <= 15 for w in got[4:])
        assert a.admit("other") is None  # another tenant's bucket
        now[0] += 15  # one request refilled, once, for the fleet
        assert b.admit("t") is None and a.admit("t") is not None


def test_token_debt_charged_by_one_worker_holds_in_the_other() -> None:
    now = [0.0]
    with fleet() as (w0, w1):
        a, b = (SharedRateLimiter(w, 0, 100, lambda: now[0]) for w in (w0, w1))
        assert a.admit("t") is None
        a.charge("t", 500)  # a big answer relayed by worker 0
        assert b.admit("t") is not None  # worker 1 sees the debt
        now[0] += 300
        assert b.admit("t") is None


OPS = st.lists(
    st.tuples(
        st.sampled_from(["admit", "charge"]),
        st.integers(0, 2),  # which worker
        st.sampled_from(["a", "b", "c", "", "t\udcff"]),  # (a lone surrogate: a client-chosen header)
        st.floats(0, 40, allow_nan=False),  # seconds since the last operation
        st.integers(-5, 300),  # tokens charged
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(ops=OPS, rpm=st.sampled_from([0, 1, 3, 600]), tpm=st.sampled_from([0, 50, 1000]))
def test_any_mix_of_workers_answers_as_one_process(ops: list[Any], rpm: int, tpm: int) -> None:
    """Property: operations spread over three workers' views give exactly the one-process limiter's answers
    (the same arithmetic on one shared bucket per tenant; fewer tenants than a set's ways: no eviction)."""
    if not (rpm or tpm):
        rpm = 2
    now = [1000.0]

    def clock() -> float:
        return now[0]

    one = RateLimiter(rpm, tpm, clock)
    with fleet(workers=3, slots=8, ways=8) as views:
        shared = [SharedRateLimiter(v, rpm, tpm, clock) for v in views]
        for op, w, tenant, dt, tokens in ops:
            now[0] += dt
            if op == "admit":
                assert shared[w].admit(tenant) == one.admit(tenant)
            else:
                shared[w].charge(tenant, tokens)
                one.charge(tenant, tokens)
        for tenant in {op[2] for op in ops}:
            b = one._buckets.get(bucket_key(tenant))  # (keyed by the name, or its digest past 256 chars)
            if b is not None:
                assert views[0].levels(tenant) == (b.requests, b.tokens)


@settings(max_examples=100, deadline=None)
@given(ops=st.lists(st.tuples(st.booleans(), st.integers(0, 2)), max_size=80), limit=st.integers(1, 5))
def test_the_fleet_never_has_more_than_the_limit_in_flight(ops: list[tuple[bool, int]], limit: int) -> None:
    with fleet(workers=3) as views:
        mine = [0, 0, 0]  # each worker's requests in flight, as its proxy counts them
        for start, w in ops:
            if start:
                admitted = views[w].enter(limit)
                assert admitted == (sum(mine) < limit)
                mine[w] += admitted
            elif mine[w]:
                views[w].leave()
                mine[w] -= 1
            assert views[(w + 1) % 3].inflight() == sum(mine) <= limit


def test_a_dead_workers_count_is_cleared_by_the_supervisor() -> None:
    with fleet() as (w0, w1):
        assert w0.enter(2) and w0.enter(2)
        assert not w1.enter(2)
        w1.clear_row(0)  # (the supervisor's view does this before it restarts worker 0)
        assert w1.enter(2) and w1.inflight() == 1


def _same_set(n: int, sets: int) -> list[str]:
    """``n`` tenant names whose keys fall in set 0 of ``sets``."""
    out = [f"t{i}" for i in range(100_000) if tenant_key(f"t{i}") % sets == 0]
    return out[:n]


def test_a_full_set_gives_the_least_recently_seen_entry_to_a_new_tenant() -> None:
    now = [0.0]
    with fleet(slots=4, ways=2) as (w0, w1):  # 2 sets of 2 entries
        a, b = (SharedRateLimiter(w, 1, 0, lambda: now[0]) for w in (w0, w1))
        t1, t2, t3 = _same_set(3, 2)
        assert a.admit(t1) is None and a.admit(t2) is None  # both buckets empty now
        now[0] += 1
        assert b.admit(t1) is not None  # t1 seen again (refused): t2 is the least recently seen
        now[0] += 1
        assert b.admit(t3) is None  # takes t2's entry
        assert w0.levels(t2) is None and w0.levels(t1) is not None
        # Worker 0 had t2's entry cached: it finds the entry taken and t2 back with a full bucket (as the
        # one-process limiter forgets its least recently seen tenant past MAX_TENANTS), in t1's entry now.
        now[0] += 1
        assert a.admit(t2) is None
        assert w1.levels(t1) is None
        assert a.admit(t3) is not None  # t3 keeps its own (empty) bucket


def test_a_stuck_lock_admits_unchecked_warns_once_and_the_supervisor_frees_it(caplog) -> None:
    with fleet(wait_s=0.01) as (w0, w1):
        rl = SharedRateLimiter(w0, 1, 0, lambda: 0.0)
        assert rl.admit("t") is None and rl.admit("t") is not None
        assert w0.acquire()  # a worker killed while it held the lock (the holds word names it)
        with caplog.at_level(logging.WARNING, "kvgate.gateway.shared_tenants"):
            assert rl.admit("t") is None  # admitted unchecked, not stalled
            assert w0.enter(1) and w0.enter(1)  # counted (``leave`` matches) but unchecked
        assert [r.message.count("lock was not free") for r in caplog.records] == [1]  # once per episode
        assert w1.free_stuck(0, 0.01) is True  # the supervisor, after the death
        assert rl.admit("t") is not None and not w0.enter(1)  # checked again
        assert w1.free_stuck(0, 0.01) is False  # (not stuck: taken and given back)
        # A worker whose hold was freed under it releases without an error.
        assert w1.acquire() and w0.holder() == 1
        assert w0.free_stuck(1, 0.01) is True and w0.holder() is None
        w1.release()
        assert w0.enter(5)


def test_the_supervisor_frees_only_a_dead_holders_lock() -> None:
    """Review s26-rev-wkv26 F2: a lock worker 1 holds is not freed after worker 0's death (it was, whoever
    held it); the holds word names the holder while it holds and no one after it lets go."""
    with fleet(wait_s=0.01) as (w0, w1):
        assert w0.holder() is None
        assert w1.acquire() and w0.holder() == 1
        assert w0.free_stuck(0, 0.01) is False and w0.holder() == 1  # a live holder's: kept
        assert not w0.lock.acquire(False)  # (still held)
        w1.release()
        assert w0.holder() is None and w0.free_stuck(0, 0.01) is False


def test_sizes_and_keys() -> None:
    assert segment_size(2) == (2 + 1 + 65_536 * 4) * 8  # 2 MiB for the table, 8 bytes per worker, the holds
    assert tenant_key("a") == tenant_key("a") != tenant_key("b")
    assert tenant_key("x\udcff") != 0
    with pytest.raises(ValueError):
        SharedTenants(memoryview(bytearray(segment_size(1, 6))), 1, 0, None, slots=6, ways=4)


class HeldLock:
    """A lock another process may hold (``held``; a frozen worker, one killed inside it); records how
    long each acquire was allowed to block (no wall clock)."""

    def __init__(self) -> None:
        self.held = False
        self.mine = False
        self.waits: list[float] = []

    def acquire(self, block: bool = True, timeout: float | None = None) -> bool:
        self.waits.append((timeout if timeout is not None else float("inf")) if block else 0.0)
        if self.held or self.mine:
            return False
        self.mine = True
        return True

    def release(self) -> None:
        if not self.mine:
            raise ValueError("not held")
        self.mine = False


def test_a_known_stuck_lock_is_not_waited_for_again_until_it_is_seen_free(caplog) -> None:
    """Review s18-fixes-a L2 (FAILED before: 20 waits of 50 ms, 1.0 s of event loop blocked for ten
    requests). Once a worker saw the lock stuck, a request only tries it without blocking; the first try
    that finds it free ends the episode (limits checked again; a next episode waits, and warns, once)."""
    lock = HeldLock()
    table = SharedTenants(memoryview(bytearray(segment_size(2, 64))), 2, 0, lock, slots=64, wait_s=0.05)
    limiter = SharedRateLimiter(table, 1, 0, lambda: 0.0)
    assert limiter.admit("t") is None and limiter.admit("t") is not None  # the one request a minute
    lock.held = True  # a worker frozen (SIGSTOP, a debugger) or killed while it held the lock
    lock.waits.clear()
    with caplog.at_level(logging.WARNING, "kvgate.gateway.shared_tenants"):
        for _ in range(10):  # ten requests, as ``Proxy._entry`` runs them: admit, then the fleet's cap
            assert limiter.admit("t") is None  # admitted unchecked
            assert table.enter(10_000)
        assert table.stuck
        assert lock.waits == [0.05] + [0.0] * 19  # one wait of 50 ms, then tries that do not block
        lock.held = False  # the holder resumed and let go (or the supervisor freed a dead one's)
        assert limiter.admit("t") is not None  # checked again
        assert not table.stuck
        lock.held = True
        lock.waits.clear()
        assert limiter.admit("t") is None and table.enter(10_000)
        assert lock.waits == [0.05, 0.0]  # a new episode: one wait again
    assert [r.message.count("lock was not free") for r in caplog.records] == [1, 1]  # once per episode
