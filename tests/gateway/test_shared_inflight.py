"""In-flight counts shared between worker processes (``gateway.shared_inflight``)."""

from __future__ import annotations

import contextlib
import multiprocessing
import time
from collections.abc import Iterator

from kvgate.datalayer.endpoint import Endpoint
from kvgate.gateway.shared_inflight import SharedInFlight


@contextlib.contextmanager
def _views(workers: int = 2, slots: int = 16) -> Iterator[tuple[SharedInFlight, list[SharedInFlight]]]:
    """The segment's owner (the supervisor's) and each worker's view of it; all closed at the end."""
    lock = multiprocessing.get_context("spawn").Lock()
    owner = SharedInFlight.create(workers, lock, slots)
    views = [SharedInFlight.attach(owner.name, lock, workers, w, slots) for w in range(workers)]
    try:
        yield owner, views
    finally:
        for v in views:
            v.close()
        owner.close()


def test_each_worker_sees_the_fleet_wide_counts_and_keeps_its_own() -> None:
    with _views() as (_, (w0, w1)):
        a0, a1 = Endpoint("10.0.0.1:8000"), Endpoint("10.0.0.1:8000")  # one endpoint, seen by two workers
        a0.inflight.requests, a0.inflight.pending_prefill_tokens = 3, 300
        a1.inflight.requests, a1.inflight.decoding = 2, 2
        w0.sync([a0])
        w1.sync([a1])
        assert (a1.inflight.requests, a1.inflight.pending_prefill_tokens, a1.inflight.decoding) == (5, 300, 2)
        w0.sync([a0])
        assert (a0.inflight.requests, a0.inflight.decoding) == (5, 2)
        # Worker 0's own request finishes (the director decrements the total it reads): it publishes 2.
        a0.inflight.requests -= 1
        a0.inflight.pending_prefill_tokens -= 100
        w0.sync([a0])
        assert w0.local(a0.inflight, a0.address)[:2] == [2, 200]
        w1.sync([a1])
        assert (a1.inflight.requests, a1.inflight.pending_prefill_tokens) == (4, 200)
        # Syncing again without changes is idempotent (remote counts are not added twice).
        for _ in range(3):
            w0.sync([a0])
            w1.sync([a1])
        assert a0.inflight.requests == a1.inflight.requests == 4


def test_slots_are_claimed_once_and_bounded() -> None:
    with _views(slots=2) as (_, (w0, w1)):
        s = w0.slot("a:1")
        assert s is not None and w1.slot("a:1") == s  # same slot from another worker's view
        assert w1.slot("b:1") not in (None, s)
        assert w0.slot("c:1") is None  # table full: that endpoint stays local
        assert w0.slot("x" * 65) is None
        e = Endpoint("c:1")
        e.inflight.requests = 7
        w0.sync([e])
        assert e.inflight.requests == 7


class _CountingLock:
    """A lock that counts its takes: each take of the full table's lock is a scan of every slot."""

    def __init__(self) -> None:
        self.inner = multiprocessing.get_context("spawn").Lock()
        self.takes = 0

    def __enter__(self) -> object:
        self.takes += 1
        return self.inner.__enter__()

    def __exit__(self, *exc: object) -> None:
        self.inner.__exit__(*exc)


def test_a_full_table_refuses_a_key_without_rescanning_it_at_every_pass_rev_f35(caplog) -> None:  # type: ignore[no-untyped-def]
    """rev-f35 F1: a key the full table refused is tried again only after FULL_RETRY_PASSES passes (each try
    scans every slot under the lock the tenants' request path takes too), and the full table is logged once;
    another key is answered from that refusal's view of the table (rev-a36 F1: one scan, not one per key)."""
    from kvgate.gateway import shared_inflight as si

    lock = _CountingLock()
    owner = SharedInFlight.create(1, lock, 2)
    w0 = SharedInFlight.attach(owner.name, lock, 1, 0, 2)
    try:
        assert w0.slot("a:1") is not None and w0.slot("b:1") is not None
        with caplog.at_level("WARNING", logger="kvgate.gateway.shared_inflight"):
            before = lock.takes
            assert w0.slot("c:1") is None  # the first refusal scans once
            assert lock.takes == before + 1
            for _ in range(100):  # the next passes' asks: no scan
                assert w0.slot("c:1") is None
                assert w0.slot("d:1") is None  # another key: refused from the same view, no scan
            assert lock.takes == before + 1
            full = [r for r in caplog.records if "shared in-flight table is full" in r.getMessage()]
            assert len(full) == 1
            for _ in range(si.FULL_RETRY_PASSES):  # after its retry interval the key is tried again
                w0.drop_unlisted()
                w0.slot("c:1")
            assert lock.takes == before + 2
    finally:
        w0.close()
        owner.close()


def _child(name: str, lock: object, done: object) -> None:
    view = SharedInFlight.attach(name, lock, 2, 1, 16)
    e = Endpoint("10.0.0.9:8000")
    e.inflight.requests, e.inflight.pending_decode_tokens = 4, 512
    view.sync([e])
    done.set()  # type: ignore[attr-defined]
    view.close()


def test_counts_cross_a_real_process_boundary() -> None:
    ctx = multiprocessing.get_context("spawn")
    lock = ctx.Lock()
    owner = SharedInFlight.create(2, lock, 16)
    me = SharedInFlight.attach(owner.name, lock, 2, 0, 16)
    try:
        done = ctx.Event()
        p = ctx.Process(target=_child, args=(owner.name, lock, done))
        p.start()
        assert done.wait(30)
        p.join(30)
        e = Endpoint("10.0.0.9:8000")
        me.sync([e])
        assert (e.inflight.requests, e.inflight.pending_decode_tokens) == (4, 512)
    finally:
        me.close()
        owner.close()


def test_the_running_total_of_tokens_sent_is_the_fleets() -> None:
    """``sent_tokens`` (the utilization detector's KV carry-forward) sums every worker's dispatches."""
    with _views() as (_, (w0, w1)):
        a0, a1 = Endpoint("10.0.0.1:8000"), Endpoint("10.0.0.1:8000")
        a0.inflight.sent_tokens, a1.inflight.sent_tokens = 500, 70
        w0.sync([a0])
        w1.sync([a1])
        w0.sync([a0])
        assert a0.inflight.sent_tokens == a1.inflight.sent_tokens == 570
        a1.inflight.sent_tokens += 30  # worker 1 sends one more
        w1.sync([a1])
        w0.sync([a0])
        w0.sync([a0])
        assert a0.inflight.sent_tokens == a1.inflight.sent_tokens == 600


def test_first_tokens_are_the_fleets_running_total_and_survive_a_restart() -> None:
    """``started`` (the detector's count of first tokens, review s8-final-c C2) sums every worker's, never
    goes back when a worker restarts, and a fresh ``InFlight``'s first fold is kept as its base."""
    with _views() as (owner, (w0, w1)):
        a0, a1 = Endpoint("10.0.0.1:8000"), Endpoint("10.0.0.1:8000")
        a0.inflight.started, a1.inflight.started = 4, 3
        w0.sync([a0])
        w1.sync([a1])
        w0.sync([a0])
        assert a0.inflight.started == a1.inflight.started == 7
        a1.inflight.started += 2  # worker 1 sees two more first tokens
        w1.sync([a1])
        w0.sync([a0])
        assert a0.inflight.started == 9 and a0.inflight.started_base == 0
        # Worker 1 dies and is restarted: its row is cleared but its total kept, which the new process
        # (a fresh InFlight) continues; its first fold's intake is its base, not "started since".
        owner.clear_row(1)
        w0.sync([a0])
        assert a0.inflight.started == 9  # never back
        b1 = Endpoint("10.0.0.1:8000")
        b1.inflight.started = 1  # a first token before its first fold
        w1.sync([b1])
        assert b1.inflight.started == 10 and b1.inflight.started - b1.inflight.started_base == 1
        w0.sync([a0])
        assert a0.inflight.started == 10


def test_a_fresh_inflights_first_fold_keeps_all_of_its_own_counts() -> None:
    """Review s9-dl D2: an endpoint that leaves a worker's store and comes back gets a fresh ``InFlight``;
    its first fold subtracted the old ``InFlight``'s remote counts (those were not reset with the running
    totals), so the requests this worker sent there before that fold vanished from its published row and
    from the fleet's totals (7 in flight read as 5)."""
    with _views() as (_, (w0, w1)):
        addr = "10.0.0.1:8000"
        old0, a1 = Endpoint(addr), Endpoint(addr)
        a1.inflight.requests, a1.inflight.pending_prefill_tokens = 5, 500
        w1.sync([a1])
        w0.sync([old0])
        assert old0.inflight.requests == 5
        fresh0 = Endpoint(addr)  # removed from worker 0's store and back: a fresh InFlight
        fresh0.inflight.requests, fresh0.inflight.pending_prefill_tokens = 2, 200  # sent before the fold
        assert w0.local(fresh0.inflight, addr)[:2] == [2, 200]
        w0.sync([fresh0])
        assert (fresh0.inflight.requests, fresh0.inflight.pending_prefill_tokens) == (7, 700)
        assert w0.local(fresh0.inflight, addr)[:2] == [2, 200]
        w1.sync([a1])
        assert (a1.inflight.requests, a1.inflight.pending_prefill_tokens) == (7, 700)


async def test_a_workers_sync_publishes_its_last_counts_when_it_ends() -> None:
    """A worker's request that finished after its sync's last pass (its drain ended within the 5 ms
    interval, then the sync was cancelled) must not stay in flight in the other workers' view: their
    gates would stay saturated on it and their queued requests wait out their TTL (seen as 503s in
    ``test_the_drain_serves_every_workers_flow_control_queue`` under load). Failed before wk18: the row
    kept the count of the last pass."""
    import asyncio
    from types import SimpleNamespace

    from kvgate.flowcontrol import fleet
    from kvgate.gateway.workers import _share_inflight

    lock = multiprocessing.get_context("spawn").Lock()
    owner = SharedInFlight.create(2, lock, extra=fleet.segment_size(2))
    other = SharedInFlight.attach(owner.name, lock, 2, 1, extra=fleet.segment_size(2))
    mine, theirs = Endpoint("10.0.0.1:8000"), Endpoint("10.0.0.1:8000")
    pool = SimpleNamespace(name="p", endpoints=lambda: [mine], director=SimpleNamespace(flow=None))
    try:
        mine.inflight.requests = 1
        task = asyncio.create_task(_share_inflight([pool], 0, (owner.name, lock, 2)))
        deadline = time.monotonic() + 30.0  # (its first pass: the state, not a count of ticks)
        while True:
            other.sync([theirs], "p")  # (the table keys by pool and address)
            if theirs.inflight.requests == 1 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.005)
        assert theirs.inflight.requests == 1
        mine.inflight.requests = 0  # its last request finishes; the drain ends before the next pass
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        other.sync([theirs], "p")
        assert theirs.inflight.requests == 0
    finally:
        other.close()
        owner.close()
