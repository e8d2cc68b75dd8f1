"""Cost of ``--workers``' shared in-flight table claims (``gateway.shared_inflight``), 1,024 slots, 2 workers:
a new address's claim while the table fills (under the lock the tenants' request path takes too), a steady
5 ms pass over 1,024 listed endpoints, and one rollout step on the full table (one endpoint gone, a new one
claimed: reused since plan36a / rev-f35 F1, refused before). Compare two trees in the same load:
``PYTHONPATH=<src> python scripts/inflight_claim_cost.py``."""

from __future__ import annotations

import multiprocessing
import statistics
import time
from types import SimpleNamespace

from kvgate.datalayer.store import EndpointStore
from kvgate.gateway.shared_inflight import DEFAULT_SLOTS, SharedInFlight
from kvgate.gateway.workers import _sync_pass

POOL = "vllm-llama3-8b-instruct"


def _key(address: str) -> str:
    return SharedInFlight.key(address, POOL)


def main() -> None:
    lock = multiprocessing.get_context("spawn").Lock()
    owner = SharedInFlight.create(2, lock)
    w = SharedInFlight.attach(owner.name, lock, 2, 0)
    claims = []
    for i in range(DEFAULT_SLOTS - 1):
        t = time.perf_counter()
        assert w.slot(_key(f"10.{i // 250}.{i % 250}.1:8000")) is not None
        claims.append((time.perf_counter() - t) * 1e6)
    print(f"claim of a new key while the table fills: median {statistics.median(claims):.0f} us")
    w.close()
    owner.close()

    owner = SharedInFlight.create(2, lock)
    w = SharedInFlight.attach(owner.name, lock, 2, 0)
    addrs = [f"10.{i // 250}.{i % 250}.2:8000" for i in range(DEFAULT_SLOTS)]
    store = EndpointStore.from_addresses(addrs)
    pool = [SimpleNamespace(name=POOL, endpoints=store.all, store=store)]
    _sync_pass(w, pool)
    res = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(50):
            _sync_pass(w, pool)
        res.append((time.perf_counter() - t) / 50 * 1e6)
    print(f"steady pass, 1,024 endpoints listed: median {statistics.median(res):.0f} us/pass")
    drops, got, claimed = [], [], 0
    for gen in range(1, 101):  # one endpoint replaced by a new address, the table full
        gone, new = addrs[gen], f"10.200.{gen // 250}.{gen % 250}:8000"
        addrs[gen] = new
        w._listed = set(w._listed_before) - {_key(gone)}
        t = time.perf_counter()
        w.drop_unlisted()
        drops.append((time.perf_counter() - t) * 1e6)
        w._listed = set()
        w._full = None  # (this step's claim, whatever the refusal's view of the table would say)
        t = time.perf_counter()
        claimed += w.slot(_key(new)) is not None
        got.append((time.perf_counter() - t) * 1e6)
        w._listed_before.add(_key(new))
    drop, claim = statistics.median(drops), statistics.median(got)
    print(f"full table, one endpoint gone: drop_unlisted median {drop:.0f} us; claim of the new one median "
          f"{claim:.0f} us; claimed {claimed}/100")  # fmt: skip
    w.close()
    owner.close()


if __name__ == "__main__":
    main()
