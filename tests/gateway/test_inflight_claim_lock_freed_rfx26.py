"""s26-rev-fixes26 F1: fixwkv26 (a77b52a7) frees a dead worker's segment lock only when the tenant table's
holds word names it. The same lock guards the in-flight table's address claim (``SharedInFlight.slot``,
``with self.lock:``, blocking with no bound, on the event loop), which records no holder: a worker killed
inside that claim leaves the lock held for good, and every worker (the restarted one included) then blocks
its event loop forever at its next new address. On main 1b0eae32 ``free_stuck_lock`` freed it after
``STUCK_S``. Real spawned process, real multiprocessing lock and shared segments."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import signal
import time
from multiprocessing import shared_memory
from types import SimpleNamespace

from kvgate.gateway.shared_inflight import SharedInFlight
from kvgate.gateway.shared_tenants import SharedTenants, segment_size
from kvgate.gateway.workers import Supervisor

_SLOTS, _WAYS = 8, 4


def _die_inside_claim(name: str, lock, inside) -> None:  # worker 1: killed inside ``slot``'s lock
    table = SharedInFlight.attach(name, lock, 2, 1)

    def stall(self, i):  # (the claim's scan, lock held: stopped here until killed)
        inside.set()
        time.sleep(60)
        return b""

    SharedInFlight._read_addr = stall  # type: ignore[method-assign]
    table.slot("10.0.0.9:8000")


def test_a_worker_killed_inside_the_address_claim_has_the_lock_freed() -> None:
    ctx = mp.get_context("spawn")
    lock = ctx.Lock()
    inflight = SharedInFlight.create(2, lock)
    shm = shared_memory.SharedMemory(create=True, size=segment_size(2, _SLOTS))
    sup = SharedTenants(shm.buf, 2, -1, lock, slots=_SLOTS, ways=_WAYS)
    inside = ctx.Event()
    dead = ctx.Process(target=_die_inside_claim, args=(inflight.name, lock, inside))
    try:
        dead.start()
        assert inside.wait(30)
        os.kill(dead.pid, signal.SIGKILL)
        dead.join(30)
        assert dead.exitcode == -signal.SIGKILL
        stub = SimpleNamespace(shared=inflight, tenants=sup, _clear_rows=lambda i: None)
        asyncio.run(Supervisor._ended_in_drain(stub, 1, dead))  # type: ignore[arg-type]
        freed = lock.acquire(True, 2.0)
        if freed:
            lock.release()
        assert freed, (
            "the dead worker's lock stays held: every worker's next SharedInFlight.slot blocks forever"
        )
    finally:
        if dead.is_alive():
            dead.kill()
        dead.join(30)
        sup.close()
        shm.close()
        shm.unlink()
        inflight.close()
