"""In-flight counts shared between ``--workers`` processes through one shared-memory segment.

With N workers each worker's picker only sees what *it* dispatched; its lag-free load signal
(``Endpoint.inflight``) would show 1/N of the truth. Here every worker publishes its own counts per
endpoint into its own row of a shared table and, every ``interval`` seconds, folds the other workers'
rows into its endpoints' ``InFlight``: the picker keeps reading the same fields, now fleet-wide (at
most one interval stale for other workers' dispatches, exact for its own).

Layout (one ``multiprocessing.shared_memory`` segment, created by the supervisor):
- an address table: ``slots`` entries of ``ADDR_BYTES`` (NUL-padded UTF-8 ``ip:port``, then NUL and the
  gateway pool's name: one server in two pools is two entries, ``SharedInFlight.key``), claimed under
  a lock the first time any worker sees an endpoint (rare; never on the data path);
- counts: ``workers x slots x FIELDS`` signed 64-bit ints; row ``w`` is written by worker ``w`` only,
  so the data path takes no lock (a reader may see one field a moment before its neighbour: counts
  are a load estimate, never an invariant);
- listed marks: ``workers x slots`` bytes (rounded up to 8), 1 where worker ``w`` lists the slot. Set under
  the lock when the worker caches the slot (``slot``), cleared under the lock when it drops it
  (``drop_unlisted``), and by the supervisor for a dead worker (``clear_row``). So a worker's cached slot
  index is always marked, and a slot no worker marks is cached by none: a claim on a full table may
  reclaim it (its key rewritten, every row's counts zeroed, running totals included: no ``InFlight``
  anywhere follows that entry any more, and one that comes back to it is fresh and takes the totals it
  finds as its base). Review rev-f35 F1: before, a slot was never freed (pod churn filled the table);
- a freed-slots counter (int64): bumped at each unmark. While it stands still no address in the table can
  change (a rewrite needs a never-used slot, or an unmarked one: an unmark bumps it). So a worker whose
  claim the full table refused keeps that table's keys (``_Full``) and answers the next keys it does not
  hold from them without the lock, until the counter moves (a rollout's new pod while the old one goes):
  one scan per counter value, not one per refused key (review rev-a36 F1, F3).

Bounded: ``slots`` endpoints listed at once at most (1,024 by default); past that an endpoint stays local.

After the counts, ``extra`` bytes (zeroed) for the flow controllers' queue marks
(``flowcontrol.fleet``): the same segment, so one owner creates and unlinks both.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import operator
import struct
from collections.abc import Iterable, Sequence
from multiprocessing import shared_memory
from typing import Any, NamedTuple

from kvgate.datalayer.endpoint import Endpoint, InFlight

log = logging.getLogger(__name__)
# A full table's keys (``_Full``) answer refusals until a slot is freed (the freed-slots counter), or anyway
# for this many passes (~10 s of 5 ms passes: a bump lost to two unlocked writers is late, not lost): not a
# scan per refused key under the lock the tenants' request path takes too (rev-f35 F1, rev-a36 F1).
FULL_RETRY_PASSES = 2000

ADDR_BYTES = 64
# ``sent_tokens`` and ``started`` are running totals (each worker publishes its own; the sum is the
# fleet's) that never go down: the utilization detector takes their increase since a page as tokens
# sent and first tokens seen since. A worker's published totals survive the worker's restart
# (``clear_row`` keeps them, the new process continues them) and the endpoint's removal from and return
# to a worker's store (a fresh ``InFlight``, whose first fold's intake is kept as its ``*_base``).
FIELDS = (
    "requests",
    "pending_prefill_tokens",
    "pending_decode_tokens",
    "decoding",
    "sent_tokens",
    "unstarted_tokens",
    "started",
    "calls",
    "certain_misses",
)
_NF = len(FIELDS)
_ZEROS: Sequence[int] = (0,) * _NF
# field index -> the ``InFlight`` attribute that keeps what a fresh ``InFlight``'s first fold brought in
_TOTALS = {FIELDS.index("sent_tokens"): "sent_base", FIELDS.index("started"): "started_base"}
# One worker's counts for one slot. Native, as the ``q`` cast view: each field is read and written whole (one
# 8-byte copy; "<" would go byte by byte, and a reader could see half of a write).
_ROW = struct.Struct(f"{_NF}q")
_fields = operator.attrgetter(*FIELDS)  # an ``InFlight``'s counts, one tuple
DEFAULT_SLOTS = 1024


class _Folded(NamedTuple):
    """One key's last fold: ``inf`` is the ``InFlight`` it set to ``set_to`` (``FIELDS`` order), having read
    ``others`` (each other worker's row, as read) and summed them to ``remote``."""

    inf: InFlight
    set_to: tuple[int, ...]
    others: list[tuple[int, ...]]
    remote: Sequence[int]


class _Full(NamedTuple):
    """The table as a claim found it full: ``keys`` (each slot's padded address -> its index) stays true
    while the freed-slots counter reads ``freed``; trusted before pass ``until`` only."""

    freed: int
    keys: dict[bytes, int]
    until: int


class _Held:
    """``with`` the shared lock, whose release tolerates a lock the supervisor freed under this holder
    (``SharedTenants.free_stuck`` frees a lock that names no holder after a worker died; a live holder
    descheduled that long then finds it released: rev-a36 F5, as ``SharedTenants.release``). Not on the
    data path (claims and a pass's unmarks only)."""

    __slots__ = ("lock",)

    def __init__(self, lock: Any) -> None:
        self.lock = lock

    def __enter__(self) -> None:
        self.lock.__enter__()

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(ValueError):  # (released too many times: freed under us; nothing to release)
            self.lock.__exit__(*exc)


def _counts_end(workers: int, slots: int) -> int:
    return slots * ADDR_BYTES + workers * slots * _NF * 8


def segment_size(workers: int, slots: int) -> int:
    return _freed_at(workers, slots) + 8


def _freed_at(workers: int, slots: int) -> int:
    return _counts_end(workers, slots) + (workers * slots + 7) // 8 * 8  # (after the marks, aligned)


def layout() -> tuple[Any, ...]:
    """This table's layout, for the fleet segment's mark after it (``fleet.layout_mark``: rev-a36 F4)."""
    return (FIELDS, ADDR_BYTES, segment_size(1, 8), segment_size(2, 8))


def _aligned(table: bytes, pattern: bytes) -> int | None:
    """The first slot of ``table`` that holds exactly ``pattern`` (``ADDR_BYTES`` long)."""
    at = table.find(pattern)
    while at >= 0 and at % ADDR_BYTES:
        at = table.find(pattern, at + 1)
    return None if at < 0 else at // ADDR_BYTES


class SharedInFlight:
    """One worker's view of the shared table (or the supervisor's, ``worker`` = -1, to own it)."""

    def __init__(
        self,
        shm: shared_memory.SharedMemory,
        lock: Any,
        workers: int,
        worker: int,
        slots: int = DEFAULT_SLOTS,
        owner: bool = False,
        extra: int = 0,
    ) -> None:
        self.shm = shm
        self.lock = lock
        self._held = _Held(lock)
        self.workers = workers
        self.worker = worker
        self.slots = slots
        self.owner = owner
        buf = shm.buf
        assert buf is not None
        self._buf: memoryview = buf
        counts_end = _counts_end(workers, slots)
        self._counts = buf[slots * ADDR_BYTES : counts_end].cast("q")
        self._marks = buf[counts_end : counts_end + workers * slots]  # row w: the slots worker w lists
        at = _freed_at(workers, slots)
        self._freed = buf[at : at + 8].cast("q")  # slots unmarked so far (a lost bump: ~10 s late, no harm)
        end = segment_size(workers, slots)
        self.extra = buf[end : end + extra]  # (``flowcontrol.fleet``'s marks)
        self._slot: dict[str, int] = {}
        counts_at = slots * ADDR_BYTES
        # each other worker's row of counts, as a byte offset in the segment (``_ROW`` per slot)
        self._others = [counts_at + w * slots * _ROW.size for w in range(workers) if w != worker]
        self._mine = counts_at + worker * slots * _ROW.size
        # the table as the last refused claim found it (None: not full, or moved since)
        self._full: _Full | None = None
        self._passes = 0  # (``drop_unlisted`` calls: the end of each pass)
        self._full_warned = False
        # key -> its last fold: what the InFlight added since is the increase (all of a fresh InFlight's),
        # and a pass that finds neither it nor the other rows changed skips the key
        self._sent: dict[str, _Folded] = {}
        # the keys synced in this pass and in the previous one (``drop_unlisted``)
        self._listed: set[str] = set()
        self._listed_before: set[str] = set()

    @classmethod
    def create(cls, workers: int, lock: Any, slots: int = DEFAULT_SLOTS, extra: int = 0) -> SharedInFlight:
        size = segment_size(workers, slots) + extra
        shm = shared_memory.SharedMemory(create=True, size=size)
        buf = shm.buf
        assert buf is not None
        buf[:size] = bytes(size)
        return cls(shm, lock, workers, -1, slots, owner=True, extra=extra)

    @classmethod
    def attach(
        cls, name: str, lock: Any, workers: int, worker: int, slots: int = DEFAULT_SLOTS, extra: int = 0
    ) -> SharedInFlight:
        # The supervisor owns (and unlinks) the segment. Spawned workers share its resource tracker, so
        # attaching registers the same name again: harmless (Python 3.13 adds ``track=False`` for it).
        shm = shared_memory.SharedMemory(name=name)
        return cls(shm, lock, workers, worker, slots, extra=extra)

    @property
    def name(self) -> str:
        return self.shm.name

    def close(self) -> None:
        """(Views of ``extra`` taken by others must be released first.)"""
        self._counts.release()
        self._marks.release()
        self._freed.release()
        self.extra.release()
        del self._buf
        self.shm.close()
        if self.owner:
            self.shm.unlink()

    # -- address table --------------------------------------------------------------------------

    def _read_addr(self, i: int) -> bytes:
        raw = bytes(self._buf[i * ADDR_BYTES : (i + 1) * ADDR_BYTES])
        return raw.rstrip(b"\0")

    def slot(self, address: str) -> int | None:
        """The table slot of ``address`` (claimed if new, marked as listed by this worker), None if every
        slot is listed by some worker or the key is too long. Its caller lists ``address`` (``sync``)."""
        got = self._slot.get(address)
        if got is not None:
            return got
        key = address.encode()
        if not key or len(key) > ADDR_BYTES:
            return None
        padded = key.ljust(ADDR_BYTES, b"\0")
        full = self._full
        if full is not None:
            if full.freed == self._freed[0] and self._passes < full.until:
                if padded not in full.keys:
                    return None  # (no slot freed since: the table is as that claim found it, full)
                # (another worker listed it: found, marked, cached below; the table unchanged)
            else:
                self._full = None
        with self._held:
            # (read before the scan: an unmark the scan misses bumps it after, so the refusal is retried)
            freed = self._freed[0]
            table = bytes(self._buf[: self.slots * ADDR_BYTES])  # (one copy, then ``find``: ~us, not 0.3 ms)
            i = _aligned(table, padded)
            if i is None:
                i = _aligned(table, bytes(ADDR_BYTES))  # never used
                if i is None:
                    i = self._reclaimable()
                if i is not None and self._read_addr(i) != key:
                    self._buf[i * ADDR_BYTES : (i + 1) * ADDR_BYTES] = padded
            if i is not None and self.worker >= 0:
                self._marks[self.worker * self.slots + i] = 1
        if i is None:
            a = ADDR_BYTES
            keys = {table[k * a : (k + 1) * a]: k for k in range(self.slots)}  # (bounded: ``slots``)
            self._full = _Full(freed, keys, self._passes + FULL_RETRY_PASSES)
            if not self._full_warned:
                self._full_warned = True
                log.warning(
                    "worker %d: the shared in-flight table is full (%d entries, each listed by a worker "
                    "now): %r and later new endpoints are counted per worker only while it stays full",
                    self.worker,
                    self.slots,
                    address,
                )
            return None
        if self.worker >= 0:  # (the supervisor's view marks nothing, so it caches nothing either)
            self._slot[address] = i
        return i

    def _reclaimable(self) -> int | None:
        """(Lock held.) A slot no worker lists and whose counts other than the running totals are zero in
        every row, its counts all zeroed for its next key; None if there is none."""
        s, c = self.slots, self._counts
        listed = 0
        for w in range(self.workers):
            listed |= int.from_bytes(self._marks[w * s : (w + 1) * s], "little")
        free = listed.to_bytes(s, "little")
        at = free.find(b"\0")
        while at >= 0:
            bases = [self._base(w, at) for w in range(self.workers)]
            if not any(c[b + f] for b in bases for f in range(_NF) if f not in _TOTALS):
                for b in bases:
                    for f in range(_NF):
                        c[b + f] = 0  # (the old key's totals: nobody follows them any more)
                return at
            at = free.find(b"\0", at + 1)
        return None

    # -- counts ---------------------------------------------------------------------------------

    def _base(self, worker: int, slot: int) -> int:
        return (worker * self.slots + slot) * _NF

    def totals(self, address: str, exclude: int | None = None) -> list[int]:
        """Sum of every worker's published counts for ``address`` (except worker ``exclude``)."""
        out = [0] * _NF
        i = self._slot.get(address)  # (never a claim: a claim marks the slot listed, and only ``sync`` lists)
        if i is None:
            return out
        c = self._counts
        for w in range(self.workers):
            if w == exclude:
                continue
            b = self._base(w, i)
            for f in range(_NF):
                out[f] += c[b + f]
        return out

    @staticmethod
    def key(address: str, pool: str = "") -> str:
        """The table key of ``address`` in gateway pool ``pool``: one server in two pools is two entries
        (each pool counts only its own requests, as in one process; rev-c35 F2: one slot for both made
        each pool's sync publish the other's folded counts as its own, growing every tick)."""
        if not pool:
            return address
        key = f"{address}\0{pool}"
        if len(key) <= ADDR_BYTES and (key.isascii() or len(key.encode()) <= ADDR_BYTES):
            return key
        return "#" + hashlib.blake2b(key.encode(), digest_size=24).hexdigest()  # (the same in every process)

    def sync(self, endpoints: Iterable[Endpoint], pool: str = "") -> None:
        """Publish this worker's own counts and fold the other workers' into each ``InFlight`` (the
        endpoints of gateway pool ``pool``)."""
        for ep in endpoints:
            key = self.key(ep.address, pool)
            self._listed.add(key)
            self._sync_one(key, ep.inflight)

    def _sync_one(self, key: str, inf: InFlight) -> None:
        i = self.slot(key)
        if i is None:
            return
        at = i * _ROW.size
        others = [_ROW.unpack_from(self._buf, row + at) for row in self._others]
        cur = _fields(inf)
        prev = self._sent.get(key)
        if prev is not None and prev.inf is not inf:
            prev = None  # a fresh InFlight
        elif prev is not None and cur == prev.set_to and others == prev.others:
            # (same inputs, same fold: it would write the values its row and the InFlight hold already,
            # its row being written by this worker only. Most keys of a steady pass: session 36.)
            return
        # (a fresh InFlight, e.g. an endpoint removed and back, holds no other worker's counts yet:
        # all of it is this worker's own)
        old = _ZEROS if prev is None else prev.remote
        mine = [v - r if v > r else 0 for v, r in zip(cur, old, strict=True)]
        c = self._counts
        b = self._base(self.worker, i)
        for f in _TOTALS:
            since = cur[f] if prev is None else cur[f] - prev.set_to[f]
            mine[f] = c[b + f] + max(0, since)  # its row's total only grows
        _ROW.pack_into(self._buf, self._mine + at, *mine)
        remote = others[0] if len(others) == 1 else tuple(map(sum, zip(*others, strict=True))) or _ZEROS
        set_to = tuple(map(operator.add, mine, remote))
        for name, v in zip(FIELDS, set_to, strict=True):
            setattr(inf, name, v)
        if prev is None:
            # A fresh InFlight's first fold brings in the fleet's lifetime totals: before any page
            # this process read (its own sends and starts since it was made stay "since").
            for f, base in _TOTALS.items():
                setattr(inf, base, getattr(inf, base) + set_to[f] - cur[f])
        self._sent[key] = _Folded(inf, set_to, others, remote)

    def drop_unlisted(self) -> None:
        """End of a pass of ``sync`` over all the worker's pools: an entry synced in the previous pass and
        not in this one is gone from its store (a departed one only once idle), so nothing of this worker
        runs there. Its last changes are published (running totals) and its own counts zeroed: a finish
        after its last sync stayed in the other workers' view for good (rev-c35 F3)."""
        gone = []
        for key in self._listed_before - self._listed:
            seen = self._sent.get(key)
            i = self._slot.get(key)
            if i is not None:
                if seen is not None:
                    self._sync_one(key, seen.inf)  # (its InFlight as last synced: only the changes since)
                del self._slot[key]
                gone.append(i)
            self._sent.pop(key, None)
        if gone:
            # Zeroed, then unmarked, under the lock: a claim that finds the slot unmarked finds it idle, and
            # this worker, its cached index gone, claims again (a scan) if the key comes back.
            with self._held:
                for i in gone:
                    b = self._base(self.worker, i)
                    for f in range(_NF):
                        if f not in _TOTALS:
                            self._counts[b + f] = 0
                    self._marks[self.worker * self.slots + i] = 0
                self._freed[0] += 1
        self._listed_before, self._listed = self._listed, set()
        self._passes += 1

    def clear_row(self, worker: int) -> None:
        """Zero a worker's published counts (the supervisor, at its death and before its restart), except its
        running totals (tokens sent, first tokens), which the restarted worker continues."""
        b = worker * self.slots * _NF
        c = self._counts
        for k in range(b, b + self.slots * _NF):
            if (k - b) % _NF not in _TOTALS:
                c[k] = 0
        self._marks[worker * self.slots : (worker + 1) * self.slots] = bytes(self.slots)  # (after its counts)
        self._freed[0] += 1  # (without the lock, which the dead worker may hold: a lost bump is ~10 s late)

    def local(self, inflight: InFlight, address: str, pool: str = "") -> list[int]:
        """This worker's own share of ``inflight`` (what it last published plus changes since)."""
        key = self.key(address, pool)
        seen = self._sent.get(key)
        old = seen.remote if seen is not None and seen.inf is inflight else _ZEROS
        return [max(0, getattr(inflight, f) - r) for f, r in zip(FIELDS, old, strict=True)]
