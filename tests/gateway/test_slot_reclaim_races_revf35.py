"""rev-f35 F1's reclaim of idle shared in-flight slots, and its races. A slot is reused only when no worker
lists it (each worker's listed mark, set under the lock with its cached slot index, cleared when it drops
the entry or dies), so no worker ever writes through a cached index into another key's entry. Real
``SharedInFlight`` views of one segment and the workers' own pass (``workers._sync_pass``); the last test
runs two spawned processes against one real multiprocessing lock."""

from __future__ import annotations

import contextlib
import multiprocessing
import random
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

from kvgate.datalayer.endpoint import Endpoint
from kvgate.datalayer.store import EndpointStore
from kvgate.gateway.shared_inflight import SharedInFlight
from kvgate.gateway.workers import _sync_pass

A, B, C, D = "10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000", "10.0.0.4:8000"


@contextlib.contextmanager
def _workers(slots: int = 2) -> Iterator[tuple[SharedInFlight, SharedInFlight, SharedInFlight]]:
    lock = multiprocessing.get_context("spawn").Lock()
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


def _set(store: EndpointStore, *addresses: str) -> None:
    store.sync(EndpointStore.from_addresses(list(addresses)).all())


def _ep(store: EndpointStore, address: str) -> Endpoint:
    ep = store.get(address)
    assert ep is not None
    return ep


def test_only_a_slot_no_worker_lists_is_reclaimed() -> None:
    with _workers() as (_, w0, w1):
        s0, s1 = EndpointStore.from_addresses([A]), EndpointStore.from_addresses([B])
        _sync_pass(w0, _pool(s0))  # worker 0 lists A (idle: its counts are zero, still not free)
        _sync_pass(w1, _pool(s1))
        a = w0._slot[SharedInFlight.key(A, "p")]
        _set(s1, C)  # B gone from worker 1: its slot is the only free one
        for _ in range(2):
            _sync_pass(w1, _pool(s1))
        c = w1._slot.get(SharedInFlight.key(C, "p"))
        assert c is not None, "a new address is refused although B's slot is listed by no worker"
        assert c != a and w0._read_addr(a) == SharedInFlight.key(A, "p").encode()
        _set(s1, C, D)  # full now: A and C are listed
        _sync_pass(w1, _pool(s1))
        assert SharedInFlight.key(D, "p") not in w1._slot
        assert w0._read_addr(a) == SharedInFlight.key(A, "p").encode(), "a listed (idle) slot was taken"


def test_a_key_back_after_its_slot_was_reclaimed_claims_anew_and_never_writes_into_the_new_key() -> None:
    with _workers() as (_, w0, w1):
        s0, s1 = EndpointStore.from_addresses([A, B]), EndpointStore()
        _sync_pass(w0, _pool(s0))  # A and B fill the table
        _set(s0, B)  # A gone from worker 0 (idle)
        _sync_pass(w0, _pool(s0))
        _set(s1, C)
        _sync_pass(w1, _pool(s1))  # C takes A's old slot
        assert SharedInFlight.key(C, "p") in w1._slot, "C is refused: A's idle slot was not reclaimed"
        _set(s0, A, B)  # A back on worker 0 with a request: the table is full of listed entries
        _ep(s0, A).inflight.requests = 1
        for _ in range(2):
            _sync_pass(w0, _pool(s0))
            _sync_pass(w1, _pool(s1))
        assert _ep(s1, C).inflight.requests == 0, "worker 0's request at A was counted at C on worker 1"
        assert SharedInFlight.key(A, "p") not in w0._slot  # (A stays local: every slot is listed)
        _ep(s1, C).inflight.requests = 2
        _sync_pass(w1, _pool(s1))
        _sync_pass(w0, _pool(s0))
        assert _ep(s0, A).inflight.requests == 1, "C's requests were folded into A on worker 0"


def test_a_reclaimed_slot_starts_its_new_key_without_the_old_keys_totals() -> None:
    with _workers() as (_, w0, w1):
        s0, s1 = EndpointStore.from_addresses([A, B]), EndpointStore()
        _ep(s0, A).inflight.sent_tokens = 500
        _sync_pass(w0, _pool(s0))
        _set(s0, B)
        _sync_pass(w0, _pool(s0))
        _set(s1, C)
        _ep(s1, C).inflight.sent_tokens = 7
        for _ in range(2):
            _sync_pass(w1, _pool(s1))
            _sync_pass(w0, _pool(s0))
        assert SharedInFlight.key(C, "p") in w1._slot
        assert _ep(s1, C).inflight.sent_tokens == 7, "C took A's running total"


def test_a_key_refused_by_a_full_table_is_tried_again_at_the_pass_after_another_worker_frees_a_slot() -> None:
    with _workers() as (_, w0, w1):
        s0, s1 = EndpointStore.from_addresses([A]), EndpointStore.from_addresses([B])
        _sync_pass(w0, _pool(s0))
        _sync_pass(w1, _pool(s1))
        _set(s0, A, C)
        _sync_pass(w0, _pool(s0))
        assert SharedInFlight.key(C, "p") not in w0._slot  # refused: A and B are listed
        _set(s1)
        _sync_pass(w1, _pool(s1))  # worker 1 drops B
        _sync_pass(w0, _pool(s0))
        assert SharedInFlight.key(C, "p") in w0._slot, "the refused key waits out its ~10 s retry interval"


def test_a_dead_workers_marks_are_cleared_with_its_row_and_its_slots_reclaimed() -> None:
    with _workers() as (owner, w0, w1):
        s0, s1 = EndpointStore.from_addresses([A]), EndpointStore.from_addresses([B])
        _ep(s1, B).inflight.requests = 3  # worker 1 dies with requests at B
        _sync_pass(w0, _pool(s0))
        _sync_pass(w1, _pool(s1))
        _set(s0, A, C)
        _sync_pass(w0, _pool(s0))
        assert SharedInFlight.key(C, "p") not in w0._slot  # B is listed (worker 1 alive)
        owner.clear_row(1)  # (the supervisor, at its death)
        _sync_pass(w0, _pool(s0))  # (at the next pass: the freed-slots counter moved)
        assert SharedInFlight.key(C, "p") in w0._slot, "the dead worker's slot is not reclaimed at once"
        assert _ep(s0, C).inflight.requests == 0


def test_a_departed_endpoint_with_requests_running_keeps_its_slot() -> None:
    with _workers() as (_, w0, w1):
        s0, s1 = EndpointStore.from_addresses([A]), EndpointStore.from_addresses([B])
        _ep(s0, A).inflight.requests = 1
        _sync_pass(w0, _pool(s0))
        _sync_pass(w1, _pool(s1))
        _set(s0)  # A gone from worker 0's pool, its request still running (departed)
        _sync_pass(w0, _pool(s0))
        _set(s1, C)  # B gone from worker 1: C takes B's slot, never A's
        for _ in range(2):
            _sync_pass(w1, _pool(s1))
            _sync_pass(w0, _pool(s0))
        assert SharedInFlight.key(C, "p") in w1._slot
        assert w0._read_addr(w0._slot[SharedInFlight.key(A, "p")]) == SharedInFlight.key(A, "p").encode()


def _churn(name: str, lock: Any, worker: int, rounds: int, start: Any) -> None:
    """A spawned worker: lists a random 3 of 6 addresses each pass on a 4-slot table shared with another
    one doing the same; after each pass every cached slot must hold its own key and carry its mark."""
    from kvgate.gateway import shared_inflight

    shared_inflight.FULL_RETRY_PASSES = 0  # (retry at once: as many claims and reclaims as possible)
    view = SharedInFlight.attach(name, lock, 2, worker, 4)
    rng = random.Random(worker)
    addrs = [f"10.0.1.{k}:8000" for k in range(6)]
    store = EndpointStore()
    bad = 0
    try:
        start.wait(60)  # (both attached: their passes overlap)
        for _ in range(rounds):
            _set(store, *rng.sample(addrs, 3))
            for ep in store.all():
                ep.inflight.requests = rng.randrange(2)
            view.sync(store.all(), "p")
            with lock:
                for key, i in view._slot.items():
                    if view._read_addr(i) != key.encode() or view._marks[worker * 4 + i] != 1:
                        bad += 1
            for ep in store.all():
                ep.inflight.requests = 0
            view.sync(store.all(), "p")
            view.drop_unlisted()
    finally:
        view.close()
    raise SystemExit(min(bad, 99))


def test_two_processes_claiming_and_dropping_never_share_a_cached_slot() -> None:
    ctx = multiprocessing.get_context("spawn")
    lock = ctx.Lock()
    owner = SharedInFlight.create(2, lock, 4)
    start = ctx.Barrier(2)
    procs = [ctx.Process(target=_churn, args=(owner.name, lock, w, 500, start)) for w in range(2)]
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
        assert [p.exitcode for p in procs] == [0, 0], "a cached slot held another key or had no mark"
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(30)
        owner.close()
