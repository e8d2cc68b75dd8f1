"""s26-rev-wkv26 F2: the stop's ``_ended_in_drain`` (883f946f) freed the segment's lock after any worker
that ended non-zero (SIGKILL: exit -9) when it could not take it within ``STUCK_S`` (0.5 s), whoever held
it. A live worker that holds it longer (descheduled on a loaded 2-core box, or SIGSTOPped: the module doc
says a frozen holder is "never freed, deliberately") got it released under it while another worker's
update could run inside it. A dead worker that held no lock is the common case in a drain (the OOM
killer), so the 0.5 s timing alone decided. Now the tenant table's holds word names the holder and only a
dead holder's lock is freed. Real spawned processes, a real multiprocessing lock and shared segment (the
review's test, with the supervisor's real tenant table instead of a bare lock)."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing as mp
import os
import signal
import time
from multiprocessing import shared_memory
from types import SimpleNamespace

import pytest

from kvgate.gateway.shared_tenants import SharedTenants, segment_size
from kvgate.gateway.workers import Supervisor

_SLOTS, _WAYS = 8, 4


def _hold(name: str, lock, worker: int, held, seconds: float) -> None:
    table = SharedTenants.attach(name, 0, lock, 2, worker, slots=_SLOTS, ways=_WAYS)
    assert table.acquire()
    held.set()
    time.sleep(seconds)
    table.release()
    table.close()


def _kill_and_drain(holder_index: int, caplog: pytest.LogCaptureFixture) -> tuple[bool, bool]:
    """Worker ``holder_index`` takes the lock through the table (0: a live one for 3 s; 1: the one killed),
    worker 1 is SIGKILLed, the supervisor's drain handles its end: (live holder still alive, freed)."""
    ctx = mp.get_context("spawn")
    lock = ctx.Lock()
    shm = shared_memory.SharedMemory(create=True, size=segment_size(2, _SLOTS))
    sup = SharedTenants(shm.buf, 2, -1, lock, slots=_SLOTS, ways=_WAYS)
    held = ctx.Event()
    holder = ctx.Process(
        target=_hold, args=(shm.name, lock, holder_index, held, 3.0 if holder_index == 0 else 60)
    )
    procs = [holder] if holder_index == 1 else [holder, ctx.Process(target=time.sleep, args=(60,))]
    dead = procs[-1]
    try:
        for p in procs:
            p.start()
        assert held.wait(30)
        os.kill(dead.pid, signal.SIGKILL)  # (a worker killed during the drain)
        dead.join(30)
        assert dead.exitcode == -signal.SIGKILL
        stub = SimpleNamespace(shared=SimpleNamespace(lock=lock), tenants=sup, _clear_rows=lambda i: None)
        with caplog.at_level(logging.WARNING, "kvgate.gateway.workers"):
            asyncio.run(Supervisor._ended_in_drain(stub, 1, dead))  # type: ignore[arg-type]
        live = holder.is_alive()
        freed = lock.acquire(False)
        if freed:
            lock.release()
        return live, freed
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
                p.join()
        sup.close()
        shm.close()
        shm.unlink()


def test_a_death_in_the_drain_does_not_free_a_lock_a_live_worker_holds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    live, freed = _kill_and_drain(0, caplog)
    assert live
    assert not freed, "the supervisor released the lock a live worker holds (after a 0.5 s wait)"
    assert "died holding" not in caplog.text


def test_a_worker_that_died_holding_the_lock_has_it_freed(caplog: pytest.LogCaptureFixture) -> None:
    _, freed = _kill_and_drain(1, caplog)
    assert freed and "worker 1 died holding the shared segment's lock: freed" in caplog.text
