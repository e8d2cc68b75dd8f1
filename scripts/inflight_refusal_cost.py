"""Cost of a full ``--workers`` shared in-flight table on a worker's 5 ms pass (``gateway.shared_inflight``),
1,024 slots, 2 workers (review rev-a36's ``retry_storm_cost.py``, with the shared lock's acquisitions
counted too): (1) worker 0 lists 2,048 endpoints (1,024 refused); worker 1 lists and drops one key worker 0
lists too (the freed-slots counter moves, no slot frees): worker 0's next pass vs its steady pass (rev-a36
F1); (2) 3,000 endpoints listed, no churn: a steady pass (rev-a36 F3: past 2 x slots refused keys the old
per-key refusal cache missed every one). Compare two trees in the same run and load:
``PYTHONPATH=<src> python scripts/inflight_refusal_cost.py``."""

from __future__ import annotations

import multiprocessing
import statistics
import time
from types import SimpleNamespace
from typing import Any

from kvgate.datalayer.store import EndpointStore
from kvgate.gateway.shared_inflight import SharedInFlight
from kvgate.gateway.workers import _sync_pass


class _Counted:
    """The spawn-context lock the workers share, its acquisitions counted."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.taken = 0

    def __enter__(self) -> bool:
        self.taken += 1
        return self.inner.__enter__()

    def __exit__(self, *exc: Any) -> None:
        self.inner.__exit__(*exc)


def _pools(store: EndpointStore) -> list[SimpleNamespace]:
    return [SimpleNamespace(name="p", endpoints=store.all, store=store)]


def _timed(view: SharedInFlight, pools: list[SimpleNamespace], lock: _Counted) -> tuple[float, int]:
    before = lock.taken
    t = time.perf_counter()
    _sync_pass(view, pools)
    return (time.perf_counter() - t) * 1e3, lock.taken - before


def main() -> None:
    lock = _Counted(multiprocessing.get_context("spawn").Lock())
    owner = SharedInFlight.create(2, lock)
    w0 = SharedInFlight.attach(owner.name, lock, 2, 0)
    w1 = SharedInFlight.attach(owner.name, lock, 2, 1)
    addrs = [f"10.{i // 250}.{i % 250}.2:8000" for i in range(2048)]
    s0 = EndpointStore.from_addresses(addrs)
    s1 = EndpointStore()
    _sync_pass(w0, _pools(s0))
    steady, storm = [], []
    for k in range(10):
        steady.append(_timed(w0, _pools(s0), lock))
        s1.sync(EndpointStore.from_addresses([addrs[k]]).all())
        _sync_pass(w1, _pools(s1))
        s1.sync([])
        _sync_pass(w1, _pools(s1))  # worker 1's drop: a bump, nothing freed
        storm.append(_timed(w0, _pools(s0), lock))
    ms = statistics.median(t for t, _ in steady), statistics.median(t for t, _ in storm)
    locks = statistics.median(n for _, n in steady), statistics.median(n for _, n in storm)
    print(
        f"2,048 endpoints (1,024 refused): steady pass median {ms[0]:.1f} ms ({locks[0]:.0f} lock holds); "
        f"the pass after another worker's drop median {ms[1]:.1f} ms ({locks[1]:.0f} lock holds)"
    )
    for v in (w0, w1, owner):
        v.close()
    owner = SharedInFlight.create(2, lock)
    w0 = SharedInFlight.attach(owner.name, lock, 2, 0)
    s0 = EndpointStore.from_addresses([f"10.{i // 250}.{i % 250}.3:8000" for i in range(3000)])
    for _ in range(2):
        _sync_pass(w0, _pools(s0))
    res = [_timed(w0, _pools(s0), lock) for _ in range(5)]
    print(
        f"3,000 endpoints (1,976 refused), no churn: steady pass median "
        f"{statistics.median(t for t, _ in res):.1f} ms "
        f"({statistics.median(n for _, n in res):.0f} lock holds)"
    )
    for v in (w0, owner):
        v.close()


if __name__ == "__main__":
    main()
