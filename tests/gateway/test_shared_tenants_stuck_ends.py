"""Review s18-fixes-c I3: once a worker's wait for the shared tenant table's lock timed out ("stuck", e.g.
a holder descheduled at load 6+), every later request only tried the lock without waiting, and a try that
met an ordinary microsecond hold by another live worker admitted that request without the fleet-wide
check, for as long as no try happened to find the lock free. Now the episode ends when the lock is seen
moving (held by a later holder than the one the wait timed out on): that request waits for it as usual.
Two real processes on one segment and one ``multiprocessing`` lock."""

from __future__ import annotations

import multiprocessing
import time
from multiprocessing import shared_memory
from typing import Any

from kvgate.gateway.shared_tenants import SharedTenants, segment_size

SLOTS = 64
CTX = multiprocessing.get_context("spawn")


def _other_worker(name: str, lock: Any, held: Any, go: Any, held2: Any, hold2_s: float) -> None:
    """Worker 1: holds the lock until told (a holder descheduled past worker 0's wait), lets go, takes it
    again at once as any live worker does, and holds that for ``hold2_s`` (worker 0 tries it meanwhile)."""
    table = SharedTenants.attach(name, 0, lock, 2, 1, slots=SLOTS)
    try:
        assert table.acquire()
        held.set()
        go.wait(60)
        table.release()
        assert table.acquire()
        held2.set()
        time.sleep(hold2_s)
        table.release()
    finally:
        table.close()


def test_a_stuck_episode_ends_when_another_worker_is_seen_holding_the_lock_anew() -> None:
    lock = CTX.Lock()
    shm = shared_memory.SharedMemory(create=True, size=segment_size(2, SLOTS))
    held, go, held2 = CTX.Event(), CTX.Event(), CTX.Event()
    other = CTX.Process(target=_other_worker, args=(shm.name, lock, held, go, held2, 0.3), daemon=True)
    other.start()
    me = SharedTenants.attach(shm.name, 0, lock, 2, 0, slots=SLOTS, wait_s=0.05)
    try:
        assert held.wait(60)
        # Worker 1 holds past the 50 ms wait: admitted unchecked (counted: 1 in flight), stuck.
        assert me.enter(1)
        assert me.stuck and me.inflight() == 1
        # Still the same hold: the next request is not waited for either (one wait per episode).
        me.wait_s = 60.0  # (a wait now would be long: none is made)
        assert me.enter(1) and me.stuck
        me.leave()
        go.set()
        assert held2.wait(60)
        # Worker 1 let go and holds the lock again, for microseconds in real life (0.3 s here): this
        # request waits for it and is checked against the fleet's cap (1 already in flight): refused.
        # Before: tried without waiting, found held, admitted unchecked (2 in flight past a cap of 1).
        assert me.enter(1) is False
        assert not me.stuck and me.inflight() == 1
    finally:
        go.set()
        other.join(60)
        me.close()
        shm.close()
        shm.unlink()
    assert other.exitcode == 0
