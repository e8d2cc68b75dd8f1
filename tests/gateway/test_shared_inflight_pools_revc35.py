"""``--workers``' shared in-flight table with one server in two pools, and an entry pruned before its last
sync (review rev-c35 F2, F3). Driven through the workers' own pass (``workers._sync_pass``) on real
``SharedInFlight`` views of one segment, one per worker, as ``_share_inflight`` runs it every 5 ms.

F2: the table was keyed by address only. Two pools of one gateway listing the same server (two
InferencePools over the same pods during an API-version move) synced into one slot one after the other:
each sync found "a fresh InFlight", published the other workers' folded counts as its own and folded them
in again: the count grew every tick and stayed up after the request ended (a concurrency gate shut for good).
F3: a departed endpoint is pruned at any ``remove`` once idle, possibly before the sync that would publish
its last finish: the other workers counted that ended request for good."""

from __future__ import annotations

import contextlib
import multiprocessing
from collections.abc import Iterator
from types import SimpleNamespace

from kvgate.config.director import build_director
from kvgate.datalayer.store import EndpointStore
from kvgate.gateway.shared_inflight import SharedInFlight
from kvgate.gateway.workers import _sync_pass
from kvgate.scheduling.types import InferenceRequest

A, B = "10.0.0.1:8000", "10.0.0.2:8000"
CFG = {
    "plugins": [{"type": "queue-scorer"}],
    "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": "queue-scorer"}]}],
}


@contextlib.contextmanager
def _workers() -> Iterator[tuple[SharedInFlight, SharedInFlight]]:
    lock = multiprocessing.get_context("spawn").Lock()
    owner = SharedInFlight.create(2, lock, 16)
    w0 = SharedInFlight.attach(owner.name, lock, 2, 0, 16)
    w1 = SharedInFlight.attach(owner.name, lock, 2, 1, 16)
    try:
        yield w0, w1
    finally:
        for v in (w0, w1, owner):
            v.close()


def _pool(name: str, store: EndpointStore) -> SimpleNamespace:
    return SimpleNamespace(name=name, endpoints=store.all, store=store)


def _requests(store: EndpointStore, address: str) -> int:
    ep = store.get(address)
    assert ep is not None
    return ep.inflight.requests


def test_one_server_in_two_pools_counts_each_pools_requests_apart() -> None:
    with _workers() as (w0, w1):
        v1, v1a2 = EndpointStore.from_addresses([A]), EndpointStore.from_addresses([A])
        theirs = EndpointStore.from_addresses([A])
        mine = [_pool("v1", v1), _pool("v1alpha2", v1a2)]  # worker 0: A in both pools
        other = [_pool("v1", theirs)]  # worker 1: A in pool v1, one request running there
        t = theirs.get(A)
        assert t is not None
        t.inflight.requests = 1
        for _ in range(10):  # ten ticks of each worker's ``_share_inflight``
            _sync_pass(w0, mine)
            _sync_pass(w1, other)
        got = (_requests(v1, A), _requests(v1a2, A), t.inflight.requests)
        assert got == (1, 0, 1), f"worker 1's request at {A} (pool v1): (v1, v1alpha2, worker 1) read {got}"
        t.inflight.requests = 0  # it ends
        for _ in range(3):
            _sync_pass(w0, mine)
            _sync_pass(w1, other)
        got = (_requests(v1, A), _requests(v1a2, A), t.inflight.requests)
        assert got == (0, 0, 0), f"nothing in flight at {A}: read {got} (a gate there stays shut)"


def test_a_departed_entry_pruned_before_its_last_sync_leaves_no_phantom() -> None:
    with _workers() as (w0, w1):
        s0, s1 = EndpointStore.from_addresses([A, B]), EndpointStore.from_addresses([A, B])
        p0, p1 = [_pool("p", s0)], [_pool("p", s1)]
        d0 = build_director(CFG, s0, flow_metrics=False)
        ep = s0.get(A)
        assert ep is not None
        r = InferenceRequest("r", "m", prompt_tokens=10, max_tokens=100)
        d0.on_dispatched(r, ep)
        _sync_pass(w0, p0)
        _sync_pass(w1, p1)
        key = SharedInFlight.key(A, "p")
        sent = w1.totals(key)[4]  # FIELDS[4]: sent_tokens (a running total), worker 0's row in it
        s0.remove(A)
        s1.remove(A)  # A NotReady: gone from both workers' stores (worker 1's copy busy: worker 0's count)
        ep.inflight.sent_tokens += 7  # (a running total: its last change must still reach the others)
        d0.on_finished(r, ep, None, True)  # it ends on worker 0 ...
        s0.remove(B)  # ... and another change there within the same 5 ms prunes A before the next sync
        assert s0.departed(A) == ()
        for _ in range(5):
            _sync_pass(w0, p0)
            _sync_pass(w1, p1)
        gone = s1.departed(A)
        phantom = gone[0].inflight.requests if gone else 0
        assert phantom == 0, f"worker 1 still counts {phantom} request(s) at {A}, ended on worker 0"
        assert s1.departed(A) == ()  # worker 1's copy, idle, is pruned and unlisted (rev-a36 F2) ...
        assert key not in w1._slot
        assert w1.slot(key) is not None  # ... so look the entry up again (idle, unreclaimed: found)
        now = w1.totals(key)[4]
        assert now == sent + 7, f"worker 0's last 7 tokens sent at {A} not published: {sent} -> {now}"
