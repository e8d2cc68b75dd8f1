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
  are a load estimate, never an invariant).

Bounded: ``slots`` endpoints at most (1,024 by default); past that an endpoint just stays local.

After the counts, ``extra`` bytes (zeroed) for the flow controllers' queue marks
(``flowcontrol.fleet``): the same segment, so one owner creates and unlinks both.
"""

from __future__ import annotations

import hashlib
import logging
import struct
from collections.abc import Iterable, Sequence
from multiprocessing import shared_memory
from typing import Any

from kvgate.datalayer.endpoint import Endpoint, InFlight

log = logging.getLogger(__name__)
# A key the full table refused is tried again after this many asks (~10 s of 5 ms passes), not at every
# pass: each try scans every slot under the lock the tenants' request path takes too (~0.3 ms at 1,024
# slots; rev-f35 F1).
FULL_RETRY_ASKS = 2000

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
_Q = struct.Struct("<q")
DEFAULT_SLOTS = 1024


def segment_size(workers: int, slots: int) -> int:
    return slots * ADDR_BYTES + workers * slots * _NF * 8


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
        self.workers = workers
        self.worker = worker
        self.slots = slots
        self.owner = owner
        buf = shm.buf
        assert buf is not None
        self._buf: memoryview = buf
        self._counts = buf[slots * ADDR_BYTES : segment_size(workers, slots)].cast("q")
        end = segment_size(workers, slots)
        self.extra = buf[end : end + extra]  # (``flowcontrol.fleet``'s marks)
        self._slot: dict[str, int] = {}
        self._refused: dict[str, int] = {}  # key -> asks left before the full table is tried again
        self._full_warned = False
        # address -> the other workers' counts last folded into that endpoint's InFlight
        self._remote: dict[str, list[int]] = {}
        # address -> (the InFlight, its running totals, ``_TOTALS`` order) after the last fold: what it
        # added since is the increase, or all of a fresh InFlight's
        self._sent: dict[str, tuple[InFlight, list[int]]] = {}
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
        """The table slot of ``address`` (claimed if new), None if the table is full or it is too long."""
        got = self._slot.get(address)
        if got is not None:
            return got
        key = address.encode()
        if not key or len(key) > ADDR_BYTES:
            return None
        left = self._refused.get(address)
        if left:
            self._refused[address] = left - 1
            return None
        start = hash(key) % self.slots  # str/bytes hashes differ per process: probe from any start
        with self.lock:
            free = None
            for k in range(self.slots):
                i = (start + k) % self.slots
                cur = self._read_addr(i)
                if cur == key:
                    self._slot[address] = i
                    return i
                if not cur and free is None:
                    free = i
            if free is None:
                if address not in self._refused and len(self._refused) >= self.slots:
                    del self._refused[next(iter(self._refused))]  # (bounded)
                self._refused[address] = FULL_RETRY_ASKS
                if not self._full_warned:
                    self._full_warned = True
                    log.warning(
                        "worker %d: the shared in-flight table is full (%d entries, one per pool and "
                        "address ever seen, never freed): %r and later new endpoints are counted per "
                        "worker only until the gateway restarts",
                        self.worker,
                        self.slots,
                        address,
                    )
                return None
            self._buf[free * ADDR_BYTES : free * ADDR_BYTES + len(key)] = key
        self._slot[address] = free
        self._refused.pop(address, None)
        return free

    # -- counts ---------------------------------------------------------------------------------

    def _base(self, worker: int, slot: int) -> int:
        return (worker * self.slots + slot) * _NF

    def totals(self, address: str, exclude: int | None = None) -> list[int]:
        """Sum of every worker's published counts for ``address`` (except worker ``exclude``)."""
        out = [0] * _NF
        i = self.slot(address)
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
        if len(key.encode()) <= ADDR_BYTES:
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
        c = self._counts
        me = self.worker
        seen = self._sent.get(key)
        prev = seen[1] if seen is not None and seen[0] is inf else None  # None: a fresh InFlight
        # (a fresh InFlight, e.g. an endpoint removed and back, holds no other worker's counts yet:
        # all of it is this worker's own)
        old = self._remote.get(key, _ZEROS) if prev is not None else _ZEROS
        cur = [getattr(inf, f) for f in FIELDS]
        mine = [max(0, v - r) for v, r in zip(cur, old, strict=True)]
        b = self._base(me, i)
        for k, f in enumerate(_TOTALS):
            since = cur[f] if prev is None else cur[f] - prev[k]
            mine[f] = c[b + f] + max(0, since)  # its row's total only grows
        for f in range(_NF):
            c[b + f] = mine[f]
        remote = self.totals(key, exclude=me)
        for f, name in enumerate(FIELDS):
            setattr(inf, name, mine[f] + remote[f])
        if prev is None:
            # A fresh InFlight's first fold brings in the fleet's lifetime totals: before any page
            # this process read (its own sends and starts since it was made stay "since").
            for f, base in _TOTALS.items():
                setattr(inf, base, getattr(inf, base) + mine[f] + remote[f] - cur[f])
        self._remote[key] = remote
        self._sent[key] = (inf, [mine[f] + remote[f] for f in _TOTALS])

    def drop_unlisted(self) -> None:
        """End of a pass of ``sync`` over all the worker's pools: an entry synced in the previous pass and
        not in this one is gone from its store (a departed one only once idle), so nothing of this worker
        runs there. Its last changes are published (running totals) and its own counts zeroed: a finish
        after its last sync stayed in the other workers' view for good (rev-c35 F3)."""
        for key in self._listed_before - self._listed:
            seen = self._sent.get(key)
            i = self._slot.get(key)
            if seen is not None and i is not None:
                self._sync_one(key, seen[0])  # (its InFlight as last synced: only the changes since)
                b = self._base(self.worker, i)
                for f in range(_NF):
                    if f not in _TOTALS:
                        self._counts[b + f] = 0
            self._sent.pop(key, None)
            self._remote.pop(key, None)
        self._listed_before, self._listed = self._listed, set()

    def clear_row(self, worker: int) -> None:
        """Zero a worker's published counts (the supervisor, at its death and before its restart), except its
        running totals (tokens sent, first tokens), which the restarted worker continues."""
        b = worker * self.slots * _NF
        c = self._counts
        for k in range(b, b + self.slots * _NF):
            if (k - b) % _NF not in _TOTALS:
                c[k] = 0

    def local(self, inflight: InFlight, address: str, pool: str = "") -> list[int]:
        """This worker's own share of ``inflight`` (what it last published plus changes since)."""
        key = self.key(address, pool)
        seen = self._sent.get(key)
        old = self._remote.get(key, _ZEROS) if seen is not None and seen[0] is inflight else _ZEROS
        return [max(0, getattr(inflight, f) - r) for f, r in zip(FIELDS, old, strict=True)]
