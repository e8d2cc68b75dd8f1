"""Per-request cost of the tenant rate limit and the concurrency cap: one process vs ``--workers``.

    PYTHONPATH=src python scripts/tenant_limit_cost.py [--n 200000] [--repeats 7] [--tenants 1,1000]
                                                     [--workers 2] [--contend 0]

Nanoseconds per call, the median over ``--repeats`` runs of ``--n`` calls:

- ``RateLimiter.admit`` (``gateway.tenants``): what one process runs, and what each ``--workers`` worker
  ran before review s18-qa M1 (its own buckets: N x the limit for the fleet);
- ``SharedRateLimiter.admit`` (``gateway.shared_tenants``): what a worker runs now, on a real
  shared-memory segment with the segment's real ``multiprocessing`` lock, ``--workers`` rows;
- the concurrency cap: one process's ``inflight >= limit`` check and count, against a worker's
  ``SharedTenants.enter`` + ``leave``.

Every call is admitted (limits far above the calls made), ``--tenants`` names taken round robin (1: one
hot tenant; 1000: the worker's tenant cache and the table's sets exercised). ``--contend K`` starts K
processes that admit in a loop on the same segment meanwhile (lock contention; on a machine with fewer
free cores than K + 1 this measures the scheduler too). The clock is fixed (time injected). Run it on a
quiet machine and more than once: the spread between runs is larger than a few tens of ns.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time
from collections.abc import Callable
from multiprocessing import shared_memory
from typing import Any

from kvgate.gateway.tenants import RateLimiter

HUGE = 1e18  # requests (and tokens) per minute: never refused


def _per_call(fn: Callable[[int], None], n: int, repeats: int) -> float:
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        fn(n)
        runs.append((time.perf_counter_ns() - t0) / n)
    return statistics.median(runs)


def _contender(name: str, lock: Any, workers: int, worker: int, stop: Any) -> None:
    from kvgate import lifeline
    from kvgate.gateway.shared_tenants import SharedRateLimiter, SharedTenants

    lifeline.die_with(getattr(multiprocessing.parent_process(), "pid", None))  # (ends with the script)

    view = SharedTenants.attach(name, 0, lock, workers, worker)
    rl = SharedRateLimiter(view, HUGE, HUGE, lambda: 1.0)
    i = 0
    while not stop.is_set():
        for _ in range(1000):
            rl.admit(f"c{i % 100}")
            i += 1
    view.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--tenants", default="1,1000")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--contend", type=int, default=0)
    a = ap.parse_args()
    from kvgate.gateway.shared_tenants import SharedRateLimiter, SharedTenants, segment_size

    ctx = multiprocessing.get_context("spawn")
    lock = ctx.Lock()
    workers = max(a.workers, a.contend + 1)
    shm = shared_memory.SharedMemory(create=True, size=segment_size(workers))
    assert shm.buf is not None
    shm.buf[:] = bytes(shm.size)
    view = SharedTenants.attach(shm.name, 0, lock, workers, 0)
    stop = ctx.Event()
    others = [
        ctx.Process(target=_contender, args=(shm.name, lock, workers, w, stop))
        for w in range(1, a.contend + 1)
    ]
    for p in others:
        p.start()
    try:
        print(f"ns per call, median of {a.repeats} x {a.n}; {workers} worker rows, {a.contend} contending")
        for count in (int(x) for x in a.tenants.split(",")):
            names = [f"tenant-{i}" for i in range(count)]
            one = RateLimiter(HUGE, HUGE, lambda: 1.0)
            shared = SharedRateLimiter(view, HUGE, HUGE, lambda: 1.0)

            def run(rl: Any, names: list[str] = names) -> Callable[[int], None]:
                admit, k = rl.admit, len(names)

                def go(n: int) -> None:
                    for i in range(n):
                        admit(names[i % k])

                return go

            t_one = _per_call(run(one), a.n, a.repeats)
            t_shared = _per_call(run(shared), a.n, a.repeats)
            print(
                f"  admit, {count} tenant(s): one process (RateLimiter) {t_one:.0f}; "
                f"--workers (SharedRateLimiter) {t_shared:.0f} (+{t_shared - t_one:.0f})"
            )
        inflight = [0]
        limit = 10_000

        def local(n: int) -> None:
            for _ in range(n):
                if inflight[0] >= limit:
                    raise AssertionError
                inflight[0] += 1
                inflight[0] -= 1

        def fleet(n: int) -> None:
            enter, leave = view.enter, view.leave
            for _ in range(n):
                if not enter(limit):
                    raise AssertionError
                leave()

        t_local = _per_call(local, a.n, a.repeats)
        t_fleet = _per_call(fleet, a.n, a.repeats)
        print(
            f"  maxConcurrentRequests check + count: one process {t_local:.0f}; "
            f"--workers (enter + leave) {t_fleet:.0f} (+{t_fleet - t_local:.0f})"
        )
    finally:
        stop.set()
        for p in others:
            p.join()
        view.close()
        shm.close()
        shm.unlink()


if __name__ == "__main__":
    main()
