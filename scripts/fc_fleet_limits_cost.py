"""What the fleet-wide queue limits (``flowcontrol.fleet.FleetLimits``, session 21) add to a queued arrival.

    PYTHONPATH=src python scripts/fc_fleet_limits_cost.py none|limits [--workers 2] [--batch 200]
        [--repeats 200]

Per request, microseconds, the median over ``--repeats`` batches: ``FlowController.enqueue`` of ``--batch``
requests that queue (behind one queued first; 8 flows, 2 bands, one with a limit of its own), then
``cancel`` of each (one way out of the queue; every way out adds the same write); the same request
objects every batch, the garbage collector off (its passes, and fresh objects' cache misses, made the
spread between runs larger than the difference). ``none``:
no fleet limits (one process; on a tree without ``FleetLimits`` too: the old path). ``limits``: worker 0 of
``--workers`` on a real shared-memory segment, admitted under the segment's real ``multiprocessing`` lock
through ``SharedTenants.acquire`` (uncontended: no other process takes it), every other worker's row for the
pool claimed with requests queued (each admission reads them all). Requests that arrive to an empty queue
and room are picked at once and never meet the limits (no cost there). Time injected.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import statistics
import time
from typing import Any

from kvgate.flowcontrol.config import BandConfig, FlowControlConfig
from kvgate.flowcontrol.controller import FlowController
from kvgate.scheduling.types import InferenceRequest


def requests(n: int) -> list[InferenceRequest]:
    return [
        InferenceRequest(
            f"r{i}", "m", prompt_text="x" * 200, max_tokens=4, priority=i % 2, fairness_id=f"f{i % 8}"
        )
        for i in range(n)
    ]


def setup(mode: str, workers: int) -> tuple[FlowController, Any]:
    cfg = FlowControlConfig(ttl=60.0, bands={1: BandConfig(1, max_requests=1 << 30)})
    ctl = FlowController(cfg)
    if mode == "none":
        return ctl, None
    from multiprocessing import shared_memory

    from kvgate.flowcontrol.fleet import FleetMarks, segment_size
    from kvgate.gateway.shared_tenants import SharedTenants
    from kvgate.gateway.shared_tenants import segment_size as tenants_size

    at = segment_size(workers)
    shm = shared_memory.SharedMemory(create=True, size=at + tenants_size(workers))
    buf = shm.buf
    assert buf is not None
    lock = multiprocessing.get_context("spawn").Lock()
    tenants = SharedTenants(buf[at:], workers, 0, lock)
    views = [FleetMarks(buf[:at], workers, w, lock=tenants) for w in range(workers)]
    for w in range(1, workers):  # the others: the pool claimed, 10 requests queued each
        other = FlowController(cfg)
        mark = views[w].pool("p")
        assert mark is not None
        mark.limits.attach(other)
        for r in requests(10):
            other.enqueue(r, 0.0)
    mark = views[0].pool("p")
    assert mark is not None
    mark.limits.attach(ctl)
    return ctl, (shm, tenants, views)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=("none", "limits"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=200)
    a = ap.parse_args()
    ctl, keep = setup(a.mode, a.workers)
    rs = requests(a.batch + 1)
    enq: list[float] = []
    out: list[float] = []
    gc.collect()
    gc.disable()
    for _ in range(a.repeats):
        ctl.enqueue(rs[0], 0.0)  # (the queue is not empty: every timed one queues behind it)
        t0 = time.perf_counter()
        items = [ctl.enqueue(r, 0.0) for r in rs[1:]]
        t1 = time.perf_counter()
        for item in items:
            ctl.cancel(item, 0.0)
        t2 = time.perf_counter()
        ctl.expire(1e9)
        enq.append((t1 - t0) / a.batch * 1e6)
        out.append((t2 - t1) / a.batch * 1e6)
    gc.enable()
    e, o = statistics.median(enq), statistics.median(out)
    print(
        f"{a.mode} (workers {a.workers}): enqueue {e:.2f} us, cancel {o:.2f} us, queued arrival in all "
        f"{e + o:.2f} us per request (median of {a.repeats} batches of {a.batch})"
    )
    if keep is not None:
        shm, tenants, views = keep
        for v in views:
            v.close()
        tenants.close()
        shm.close()
        shm.unlink()


if __name__ == "__main__":
    main()
