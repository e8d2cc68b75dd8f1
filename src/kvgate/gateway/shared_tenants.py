"""Per-tenant rate limits and the concurrency cap, fleet-wide under ``kvgate serve --workers N``.

``rateLimits`` and ``limits.maxConcurrentRequests`` are contracts with a tenant and with the operator:
they must not depend on how many worker processes run (review s18-qa M1: each worker kept its own
buckets and its own count, so ``--workers N`` let every tenant through at N x its limit). Here the
workers keep them in the shared-memory segment the supervisor already creates for the in-flight
counts (``gateway.shared_inflight``), after the flow-control marks:

- in flight: one signed 64-bit count per worker, written by that worker only; ``enter(limit)`` checks
  the sum of all rows against the limit and counts the request in its own row under the segment's
  lock (check and count are one step for the fleet), ``leave`` takes it out without the lock. The
  supervisor zeroes a dead worker's row before it restarts it.
- holds: one 64-bit word, the count of the lock's acquisitions through this table times ``HOLDER_SPAN``
  plus the holder (its worker index + 1, 0 once it let go), written by each holder under the lock: a
  worker that found the lock stuck reads it (without the lock) to tell a lock that moves from one held all
  along, and the supervisor reads who holds it before it frees it (``free_stuck``).
- tenant buckets: ``slots`` entries of four 64-bit words (the tenant's key, requests, tokens, when
  last refilled), in sets of ``ways`` entries. A tenant's key is 64 bits of BLAKE2b of its name
  (the same in every process; Python's ``hash`` is not), its set the key modulo the number of sets.
  Two tenants with the same 64-bit key share one bucket (about 2**-64 per pair: never in practice).
  A tenant not in its set takes an empty entry, else the entry of the set seen least recently (its
  tenant, if it comes back, starts with a full bucket: the one-process limiter forgets its least
  recently seen tenant past ``tenants.MAX_TENANTS`` the same way). Bounded: ``SLOTS`` (65,536, the
  one-process limit) entries, 2 MiB.

The arithmetic is the one-process limiter's (``tenants.RateLimiter``), step for step, on the shared
entry, under the segment's lock, with the clock read under the lock (one order for every worker: the
gateway's clock is ``time.monotonic``, the same for every process on the host). One process keeps
``RateLimiter`` and its own count (no segment, no lock).

The lock is a ``multiprocessing`` lock, held for a few microseconds; a worker killed inside it would
leave it held. So a worker waits at most ``LOCK_WAIT_S`` for it and then lets the request through
without the fleet-wide check (logged once per episode; its count still taken, so ``leave`` matches);
then it only tries the lock without waiting (one wait per episode, not one per request: review
s18-fixes-a L2) while the lock is held by the same hold as when the wait ran out (the holds count
unchanged). The episode ends when a try finds the lock free, or held by a later holder (the count
moved: the lock moves again, a descheduled holder let go): that request waits for it as usual, so an
ordinary microsecond hold by another worker no longer lets a request through unchecked (review
s18-fixes-c I3: before, any try that met any hold during an episode admitted without the check). The
supervisor frees a lock it cannot take within ``STUCK_S`` after a worker died only when the holds word
names that worker as its holder (``free_stuck``; review s26-rev-wkv26 F2: it freed it whoever held it, so a
live worker descheduled past ``STUCK_S`` had its lock released under it); a worker whose lock was freed
under it ignores its own release's error. A lock held through a path that records no holder (the
in-flight table's address-slot claim and a pass's unmarks, ``shared_inflight``: ~45-80 us at 1,024
slots, rare; their release, too, tolerates a lock freed under them: rev-a36 F5) is freed as before, after
``STUCK_S`` (review s26-rev-fixes26 F1: left held, a worker killed inside the claim blocked every worker at
its next new endpoint for good). A holder that is frozen
(SIGSTOP, a debugger), not dead, is never freed, deliberately: it could resume inside its update while
another worker is in it and tear a bucket; the fleet admits without the fleet-wide limits until it lets go,
or until its heartbeat is ``listen.workerTimeoutSeconds`` old: the supervisor then kills it (SIGKILL) and
frees the lock as a dead worker's (``workers.Supervisor.check_heartbeat``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Callable
from multiprocessing import shared_memory
from typing import Any

from kvgate.gateway.tenants import MAX_TENANTS

log = logging.getLogger(__name__)

SLOTS = MAX_TENANTS
WAYS = 8
_WORDS = 4  # per entry: key (int64), requests, tokens, refilled at (float64)
_KEY, _REQ, _TOK, _AT = range(_WORDS)
# A worker's wait for the lock before it admits without the fleet-wide check (held microseconds by a live
# worker; only a worker killed inside it, or a descheduled one, holds it longer).
LOCK_WAIT_S = 0.05
# The supervisor's wait before it frees the lock after a worker died (it was held by the dead worker).
STUCK_S = 0.5
_WHERE_MAX = 4096  # a worker's cache of tenant -> (key, entry): cleared when it grows past this
_WHERE_NAME_MAX = 256  # longer names are not cached (client-chosen, any length: review s28-qa Q6)


def segment_size(workers: int, slots: int = SLOTS) -> int:
    return (workers + 1 + slots * _WORDS) * 8


def tenant_key(tenant: str) -> int:
    """64 bits of BLAKE2b of the tenant's name as a signed int64, never 0 (an empty entry's key)."""
    digest = hashlib.blake2b(tenant.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True) or 1


HOLDER_SPAN = 1 << 16  # the holds word: acquisitions x HOLDER_SPAN + (holder's worker index + 1)


class SharedTenants:
    """One process's view of the fleet's in-flight counts and tenant buckets in ``buf``
    (``segment_size`` bytes, zeroed at first); ``worker`` = -1 for the supervisor's (``clear_row``)."""

    def __init__(
        self,
        buf: memoryview,
        workers: int,
        worker: int,
        lock: Any,
        slots: int = SLOTS,
        ways: int = WAYS,
        wait_s: float = LOCK_WAIT_S,
    ) -> None:
        if slots % ways:
            raise ValueError("slots must be a multiple of ways")
        base = memoryview(buf)
        part = base[: segment_size(workers, slots)]
        self._q = part.cast("q")
        self._d = part.cast("d")
        part.release()
        base.release()
        self.workers = workers
        self._holds = workers  # the word counting the lock's acquisitions; the entries follow it
        self.worker = worker
        self.lock = lock
        self.ways = ways
        self.sets = slots // ways
        self.wait_s = wait_s
        self.stuck = False  # the last wait for the lock timed out (warned once until it is taken again)
        self._stuck_at = 0  # the holds count when that wait timed out
        self._shm: shared_memory.SharedMemory | None = None
        self._where: dict[str, tuple[int, int]] = {}  # tenant -> (key, first word of its entry)

    @classmethod
    def attach(cls, name: str, offset: int, lock: Any, workers: int, worker: int, **kw: Any) -> SharedTenants:
        """A worker's view of the supervisor's segment ``name``, from byte ``offset``."""
        shm = shared_memory.SharedMemory(name=name)  # (re-registered with the shared tracker: harmless)
        buf = shm.buf
        assert buf is not None
        view = buf[offset:]
        try:
            self = cls(view, workers, worker, lock, **kw)
        finally:
            view.release()
        self._shm = shm
        return self

    def close(self) -> None:
        self._q.release()
        self._d.release()
        if self._shm is not None:
            self._shm.close()

    # -- the lock -------------------------------------------------------------------------------

    def _hold(self) -> None:
        """Under the lock: count the acquisition and name this worker its holder."""
        h = self._holds
        self._q[h] = (self._q[h] // HOLDER_SPAN + 1) * HOLDER_SPAN + self.worker + 1

    def holder(self) -> int | None:
        """The worker index the holds word names as the lock's holder (read without the lock), or None."""
        who = self._q[self._holds] % HOLDER_SPAN
        return who - 1 if who else None

    def free_stuck(self, dead: int, wait_s: float = STUCK_S) -> bool:
        """The supervisor, after worker ``dead`` ended: if the lock cannot be taken within ``wait_s`` and
        the holds word names ``dead`` as its holder, or names no holder, release it for it. A holder the
        word names is never released unless it is ``dead`` (a live one descheduled, or frozen: see the
        module doc). No holder named: a hold of the in-flight table's (its address claim,
        ``SharedInFlight.slot``, tens of microseconds at 1,024 slots, and a pass's unmarks,
        ``drop_unlisted``; neither records a holder) held past ``wait_s`` right after a worker died; left
        held, every worker would block at its next new endpoint for good (review s26-rev-fixes26 F1). That
        holder may be a live worker descheduled that long: its release then finds the lock freed and lets
        it be, as ``release`` does (rev-a36 F5). True when it was freed."""
        lock = self.lock
        if lock.acquire(True, wait_s):
            lock.release()
            return False
        if self.holder() not in (dead, None):
            return False
        h = self._holds
        self._q[h] -= self._q[h] % HOLDER_SPAN  # (no holder; the count kept: the lock moved)
        with contextlib.suppress(ValueError):  # (let go in between: nothing to release)
            lock.release()
        return True

    def acquire(self) -> bool:
        lock, q = self.lock, self._q
        if self.stuck:
            # Once known stuck, no more waits (review s18-fixes-a L2: each request blocked the worker's
            # event loop ``wait_s`` in ``admit`` and again in ``enter``): one try without blocking ...
            if lock.acquire(False):
                self.stuck = False
                self._hold()
                return True
            if q[self._holds] == self._stuck_at:
                return False  # (the same hold as when the wait ran out: admitted unchecked)
            # ... while the same hold lasts: held by a later holder, the lock moves (review s18-fixes-c
            # I3: a microsecond hold by a live worker admitted this request unchecked): wait as usual.
            self.stuck = False
        if lock.acquire(True, self.wait_s):
            self._hold()
            return True
        self.stuck = True
        self._stuck_at = q[self._holds]
        log.warning(  # (once per episode: one starts here)
            "worker %d: the shared tenant table's lock was not free within %.0f ms; requests are "
            "admitted without the fleet-wide rate limits and concurrency cap (and flow control's queue "
            "limits on counts read without it) until it is",
            self.worker, self.wait_s * 1000,
        )  # fmt: skip
        return False

    def release(self) -> None:
        q, h = self._q, self._holds
        if q[h] % HOLDER_SPAN == self.worker + 1:  # (not if freed under us and taken by another since)
            q[h] -= self.worker + 1
        try:  # (not ``contextlib.suppress``: a context manager per request on the data path)  # noqa: SIM105
            self.lock.release()
        except ValueError:  # freed under us by the supervisor (``free_stuck_lock``): nothing to release
            pass

    # -- requests in flight (maxConcurrentRequests) ----------------------------------------------

    def clear_row(self, worker: int) -> None:
        """Zero a worker's in-flight count (the supervisor, at its death and before its restart)."""
        self._q[worker] = 0

    def inflight(self) -> int:
        """The fleet's requests in flight (every worker's row)."""
        q = self._q
        return sum(q[w] for w in range(self.workers))

    def enter(self, limit: int) -> bool:
        """Count a request in flight unless the fleet already has ``limit``; False: refused."""
        q = self._q
        me = self.worker
        if not self.acquire():
            q[me] += 1  # (admitted without the check: still counted, ``leave`` takes it out)
            return True
        try:
            total = 0
            for w in range(self.workers):
                total += q[w]
            if total >= limit:
                return False
            q[me] += 1
            return True
        finally:
            self.release()

    def leave(self) -> None:
        self._q[self.worker] -= 1  # (this worker's row: only it writes it, no lock)

    # -- tenant buckets (the caller holds the lock) ----------------------------------------------

    def bucket(self, tenant: str, now: float, rpm: float, tpm: float) -> int:
        """The first word of ``tenant``'s entry, refilled to ``now`` (claimed full if new)."""
        q, d = self._q, self._d
        got = self._where.get(tenant)
        if got is not None and q[got[1] + _KEY] == got[0]:
            key, b = got
        else:
            key = got[0] if got is not None else tenant_key(tenant)
            b = self._find(key)
            if len(tenant) <= _WHERE_NAME_MAX:
                if len(self._where) >= _WHERE_MAX:
                    self._where.clear()
                self._where[tenant] = (key, b)
            if q[b + _KEY] != key:  # new here: an empty entry, or the set's least recently seen
                q[b + _KEY] = key
                d[b + _REQ] = rpm
                d[b + _TOK] = tpm
                d[b + _AT] = now
                return b
        dt = max(0.0, now - d[b + _AT])
        d[b + _AT] = now
        if rpm:
            d[b + _REQ] = min(rpm, d[b + _REQ] + dt * rpm / 60)
        if tpm:
            d[b + _TOK] = min(tpm, d[b + _TOK] + dt * tpm / 60)
        return b

    def _find(self, key: int) -> int:
        """The entry holding ``key``, else the one to give it: the set's first empty entry (a set fills in
        order and entries are never emptied, so ``key`` is not past it), else its least recently seen."""
        q, d = self._q, self._d
        first = self.workers + 1 + (key % self.sets) * self.ways * _WORDS
        victim = first
        for b in range(first, first + self.ways * _WORDS, _WORDS):
            k = q[b + _KEY]
            if k == key or k == 0:
                return b
            if d[b + _AT] < d[victim + _AT]:
                victim = b
        return victim

    def levels(self, tenant: str) -> tuple[float, float] | None:
        """(requests, tokens) left in ``tenant``'s bucket as last refilled, None when not in the table."""
        key = tenant_key(tenant)
        b = self._find(key)
        if self._q[b + _KEY] != key:
            return None
        return self._d[b + _REQ], self._d[b + _TOK]


class SharedRateLimiter:
    """``tenants.RateLimiter``'s ``admit`` and ``charge`` on the fleet's shared buckets."""

    def __init__(
        self, table: SharedTenants, requests_per_minute: float, tokens_per_minute: float,
        clock: Callable[[], float],
    ) -> None:  # fmt: skip
        self.table = table
        self.rpm = requests_per_minute
        self.tpm = tokens_per_minute
        self.clock = clock

    def admit(self, tenant: str) -> float | None:
        """None when admitted; else seconds until the tenant may try again."""
        t = self.table
        if not t.acquire():
            return None  # (the lock is stuck: admitted unchecked, logged)
        try:
            rpm, tpm = self.rpm, self.tpm
            b = t.bucket(tenant, self.clock(), rpm, tpm)
            d = t._d
            if rpm and d[b + _REQ] < 1:
                return (1 - d[b + _REQ]) * 60 / rpm
            if tpm and d[b + _TOK] <= 0:
                return (1 - d[b + _TOK]) * 60 / tpm
            if rpm:
                d[b + _REQ] -= 1
            return None
        finally:
            t.release()

    def charge(self, tenant: str, tokens: int) -> None:
        if not (self.tpm and tokens > 0):
            return
        t = self.table
        if not t.acquire():
            return
        try:
            b = t.bucket(tenant, self.clock(), self.rpm, self.tpm)
            t._d[b + _TOK] -= tokens
        finally:
            t.release()
