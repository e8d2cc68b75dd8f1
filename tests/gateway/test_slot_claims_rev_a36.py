"""Review rev-a36 (of 8cfcc4d7, the shared in-flight table's slot reclaim): real ``SharedInFlight`` views of
one segment and the workers' own pass. No timing: the tests count the shared lock's acquisitions or read
state (F1-F3 adapted from the review's proofs)."""

from __future__ import annotations

import contextlib
import multiprocessing
import threading
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

from kvgate.datalayer.endpoint import Endpoint
from kvgate.datalayer.store import EndpointStore
from kvgate.gateway import shared_tenants
from kvgate.gateway.shared_inflight import SharedInFlight
from kvgate.gateway.workers import _sync_pass


class CountingLock:
    """A real lock that counts its acquisitions (how many times a pass takes the shared lock)."""

    def __init__(self, inner: Any = None, on_enter: Callable[[], None] | None = None) -> None:
        self.inner = inner if inner is not None else threading.Lock()
        self.on_enter = on_enter
        self.taken = 0

    def __enter__(self) -> bool:
        self.taken += 1
        got = self.inner.__enter__()
        if self.on_enter is not None:
            self.on_enter()
        return got

    def __exit__(self, *exc: Any) -> None:
        self.inner.__exit__(*exc)


@contextlib.contextmanager
def _workers(slots: int, lock: Any) -> Iterator[tuple[SharedInFlight, SharedInFlight, SharedInFlight]]:
    owner = SharedInFlight.create(2, lock, slots)
    w0 = SharedInFlight.attach(owner.name, lock, 2, 0, slots)
    w1 = SharedInFlight.attach(owner.name, lock, 2, 1, slots)
    try:
        yield owner, w0, w1
    finally:
        for v in (w0, w1, owner):
            v.close()


def _pool(store: EndpointStore) -> list[SimpleNamespace]:
    return [SimpleNamespace(name="p", endpoints=store.all, store=store)]


def _ep(store: EndpointStore, address: str) -> Endpoint:
    ep = store.get(address)
    assert ep is not None
    return ep


def _key(address: str) -> str:
    return SharedInFlight.key(address, "p")


def test_f1_a_free_that_frees_nothing_costs_one_scan_not_one_per_refused_key() -> None:
    """Any worker's drop bumps the freed counter, even of a slot another worker still lists: each refused key
    then rescanned the table under the shared lock (up to 1,024 a pass). One scan per counter value."""
    lock = CountingLock()
    slots, extra = 8, 8
    with _workers(slots, lock) as (_, w0, w1):
        s0 = EndpointStore.from_addresses([f"10.0.0.{k}:8000" for k in range(slots + extra)])
        _sync_pass(w0, _pool(s0))  # 8 claimed, 8 refused
        s1 = EndpointStore.from_addresses(["10.0.0.0:8000"])  # worker 1 lists a key worker 0 lists too
        _sync_pass(w1, _pool(s1))
        s1.sync([])
        _sync_pass(w1, _pool(s1))  # ... and drops it: the counter moves, nothing becomes reclaimable
        before = lock.taken
        _sync_pass(w0, _pool(s0))
        assert not any(_key(f"10.0.0.{k}:8000") in w0._slot for k in range(slots, slots + extra))
        assert lock.taken - before == 1, f"the pass took the shared lock {lock.taken - before} times"
        before = lock.taken
        _sync_pass(w0, _pool(s0))
        assert lock.taken == before, "a steady pass on a full table took the shared lock"


def test_f1_a_key_another_worker_listed_is_still_found_and_one_freed_slot_still_claimed() -> None:
    """The refusal's view of the table must not hide a key another worker holds there, nor a freed slot."""
    lock = CountingLock()
    with _workers(2, lock) as (_, w0, w1):
        a, b, c = "10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000"
        s1 = EndpointStore.from_addresses([a, b])
        _sync_pass(w1, _pool(s1))  # worker 1 fills the table with A and B
        s0 = EndpointStore.from_addresses([c])
        _sync_pass(w0, _pool(s0))  # C refused: worker 0 keeps the full table's keys
        assert _key(c) not in w0._slot
        s0.sync(EndpointStore.from_addresses([c, a]).all())
        _sync_pass(w0, _pool(s0))
        assert _key(a) in w0._slot and w0._slot[_key(a)] == w1._slot[_key(a)], "A (in the table) refused"
        s1.sync(EndpointStore.from_addresses([a]).all())  # worker 1 drops B: its slot is free
        _sync_pass(w1, _pool(s1))
        _sync_pass(w0, _pool(s0))
        assert _key(c) in w0._slot, "C waits although B's slot was freed"


def test_f3_past_twice_slots_endpoints_a_steady_pass_takes_no_lock() -> None:
    """The per-key refusal cache held ``slots`` keys: with more refused keys, the cyclic pass missed it for
    each, so every steady pass scanned the table once per refused key."""
    lock = CountingLock()
    slots = 4
    with _workers(slots, lock) as (_, w0, _w1):
        s0 = EndpointStore.from_addresses([f"10.0.0.{k}:8000" for k in range(3 * slots)])  # 8 refused
        for _ in range(3):
            _sync_pass(w0, _pool(s0))
        before = lock.taken
        _sync_pass(w0, _pool(s0))
        assert lock.taken == before, (
            f"a steady pass on a full table took the shared lock {lock.taken - before}x"
        )


def test_f1_the_full_table_is_scanned_again_after_its_retry_passes(monkeypatch: Any) -> None:
    """A bump lost between two unlocked writers delays a retry, never stops it (``FULL_RETRY_PASSES``)."""
    from kvgate.gateway import shared_inflight

    monkeypatch.setattr(shared_inflight, "FULL_RETRY_PASSES", 3)
    lock = CountingLock()
    with _workers(2, lock) as (_, w0, _w1):
        s0 = EndpointStore.from_addresses([f"10.0.0.{k}:8000" for k in range(4)])
        _sync_pass(w0, _pool(s0))
        taken = []
        for _ in range(6):
            before = lock.taken
            _sync_pass(w0, _pool(s0))
            taken.append(lock.taken - before)
        assert taken == [0, 0, 1, 0, 0, 1], taken


def test_f2_a_departed_endpoint_is_unlisted_once_idle() -> None:
    """docs/gateway.md: an entry is held while any worker lists it (its pool's endpoint, or one gone with
    requests still running there). The store kept a departed endpoint gone idle until its next ``remove``,
    so its entry stayed listed and a new address on a full table was refused."""
    lock = threading.Lock()
    a, b, c = "10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000"
    with _workers(2, lock) as (_, w0, w1):
        s0 = EndpointStore.from_addresses([a, b])
        _ep(s0, a).inflight.requests = 1  # a request running at A when A leaves
        _sync_pass(w0, _pool(s0))
        gone = _ep(s0, a)
        s0.sync(EndpointStore.from_addresses([b]).all())  # A removed (departed: busy)
        _sync_pass(w0, _pool(s0))
        assert _key(a) in w0._slot, "a departed endpoint with a request running lost its entry"
        gone.inflight.requests = 0  # its request finished
        _sync_pass(w0, _pool(s0))
        assert s0.departed() == () and _key(a) not in w0._slot
        s1 = EndpointStore.from_addresses([c])
        _sync_pass(w1, _pool(s1))
        assert _key(c) in w1._slot, "a new address is refused: the idle departed A's entry is still listed"


def test_f4_the_fleet_layout_mark_follows_the_in_flight_tables_row(monkeypatch: Any) -> None:
    """The fleet segment starts where the in-flight table ends: a row change there moves every fleet row,
    so the mark a worker checks at its start must change with it, not only with a hand-bumped version."""
    from kvgate.flowcontrol import fleet
    from kvgate.gateway import shared_inflight, workers

    before = workers._fleet_mark()
    assert before == fleet.layout_mark(table=shared_inflight.layout())
    monkeypatch.setattr(shared_inflight, "FIELDS", (*shared_inflight.FIELDS, "one_more"))
    monkeypatch.setattr(shared_inflight, "_NF", len(shared_inflight.FIELDS))
    assert workers._fleet_mark() != before, "the in-flight row grew; the mark a worker checks did not change"


def test_f5_a_lock_the_supervisor_freed_under_a_live_holder_does_not_stop_its_pass() -> None:
    """``SharedTenants.free_stuck`` releases a lock that names no holder (the in-flight claim's and unmarks'
    holds) when it cannot take it after a worker died: a live holder descheduled that long then released a
    free lock, ValueError, which ended the worker's sharing task for good. Real spawn-context lock, the
    supervisor's real ``free_stuck``, fired inside each hold."""
    real = multiprocessing.get_context("spawn").Lock()
    sup = shared_tenants.SharedTenants(bytearray(shared_tenants.segment_size(2, 8)), 2, -1, real, slots=8)
    freed: list[bool] = []
    lock = CountingLock(real, on_enter=lambda: freed.append(sup.free_stuck(1, wait_s=0.01)))
    with _workers(4, lock) as (_, w0, _w1):
        s0 = EndpointStore.from_addresses(["10.0.0.1:8000", "10.0.0.2:8000"])
        _sync_pass(w0, _pool(s0))  # two claims, each lock freed under the claim
        s0.sync(EndpointStore.from_addresses(["10.0.0.1:8000"]).all())
        _sync_pass(w0, _pool(s0))  # one unmark, its lock freed under it
        assert freed == [True, True, True], freed
        assert set(w0._slot) == {_key("10.0.0.1:8000")}
        assert real.acquire(False), "the lock is left held"
        real.release()
