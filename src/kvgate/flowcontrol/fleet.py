"""A fleet-wide queue order for flow control under ``kvgate serve --workers N``.

Each worker has its own flow controller, so strict priority and the fair share held per worker only: a
worker dispatched its held-back flood request (or a lower band's) into capacity that freed while a
request of a higher band, or of a flow under its share, waited in another worker's queue (session 15's
trace: ``docs/benchmarks/flowcontrol.md``, "Session 15"). Here every worker publishes, per pool, a
small mark of what its queue would send next, and each worker's gate consults the others' marks before
it lets a request through: it waits while another worker has a request waiting that its own queue
would send first.

The mark (``FIELDS``, float64 each): the time it was written (the dispatcher's clock: the gateway's is
``time.monotonic``, one clock for every process on the host), the pool's key, the priority of the
highest band with a request that can leave (the band's fairness choice, as ``FlowController.heads``;
requests with a subset hint and ones held out of selection do not count), whether that request is
held back by the fair-share headroom (``FlowController.held_back``), and how many wait. A worker defers
a request of band ``p`` while another worker's fresh mark names a band above ``p``, or band ``p`` with a
head that is not held back while its own request is held back: what one process's ``dispatch_ready``
does across its bands and flows. The highest such head never defers (no cycle), so the fleet does not
stall on marks; it waits on a head only as one process would (strict priority).

Bounded and lock-free: one row of ``POOLS`` marks per worker, written only by that worker (a reader may
see a mark mid-write: ordering for one gate check, never an invariant). Crash-safe: a mark older than
``MARK_TTL_S`` (or more than that ahead of the reader's clock: a zeroed row) is ignored (a worker that
died, or whose loop stalled, blocks no one for longer), a worker
publishes at every dispatch pass (``FlowDispatcher``: at most every ``recheck_interval`` while it has
requests queued) and a mark with nothing waiting once its queue is empty; the supervisor zeroes a
restarted worker's row. Time is injected (every call takes ``now``).
"""

from __future__ import annotations

import hashlib
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kvgate.flowcontrol.controller import FlowController
    from kvgate.scheduling.types import InferenceRequest

# stamp, pool key, top band's priority, its head held back (1.0) or not (0.0), requests waiting
FIELDS = 5
_STAMP, _KEY, _TOP, _HELD, _WAITING = range(FIELDS)
POOLS = 16  # marks per worker: pools beyond it keep their own order (no mark)
# A mark older than this is ignored: 12 dispatch passes at the default 20 ms recheck (a loaded event loop
# runs late), and the most a dead worker's last mark can hold the others back.
MARK_TTL_S = 0.25
NOTHING = -math.inf  # the top priority of a mark with no request that can leave


def segment_size(workers: int, pools: int = POOLS) -> int:
    return workers * pools * FIELDS * 8


def pool_key(name: str) -> float:
    """A pool's name as a float64 (52 bits of a hash, exact), the same in every worker; never 0 (a zeroed
    mark's key)."""
    digest = hashlib.blake2b(name.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    h = int.from_bytes(digest, "little")
    return float((h & ((1 << 52) - 1)) | 1)


class FleetMarks:
    """One worker's view of every worker's marks in ``buf`` (``segment_size`` bytes, zeroed at first:
    a shared-memory segment, or a ``bytearray`` in tests)."""

    def __init__(
        self, buf: memoryview, workers: int, worker: int, pools: int = POOLS, ttl: float = MARK_TTL_S
    ) -> None:
        self._m = memoryview(buf)[: segment_size(workers, pools)].cast("d")
        self.workers = workers
        self.worker = worker
        self.pools = pools
        self.ttl = ttl
        self.closed = False
        self._own: dict[float, int] = {}  # pool key -> its mark's index in this worker's row

    def close(self) -> None:
        """Release the buffer (a shared-memory segment cannot close while it is exported); marks handed
        out answer "no defer" from then on."""
        self.closed = True
        self._m.release()

    def clear_row(self, worker: int) -> None:
        """Zero ``worker``'s marks (the supervisor, before it restarts that worker)."""
        b = worker * self.pools * FIELDS
        for k in range(b, b + self.pools * FIELDS):
            self._m[k] = 0.0

    def pool(self, name: str) -> PoolMark | None:
        """This worker's mark for pool ``name`` (claimed in its row if new); None past ``POOLS`` pools."""
        key = pool_key(name)
        i = self._own.get(key)
        if i is None:
            if len(self._own) >= self.pools:
                return None
            i = self._own[key] = len(self._own)
            if not self.closed:  # claimed: the others find it (stamp 0: no mark yet), rows fill in order
                self._m[(self.worker * self.pools + i) * FIELDS + _KEY] = key
        return PoolMark(self, key, (self.worker * self.pools + i) * FIELDS)


class PoolMark:
    """One pool's mark in this worker's row, and the others' marks for the same pool."""

    __slots__ = ("_held", "_missed", "_others", "_top", "base", "fleet", "key")

    def __init__(self, fleet: FleetMarks, key: float, base: int) -> None:
        self.fleet = fleet
        self.key = key
        self.base = base
        # where the other workers' marks for this pool were last found (checked on every read)
        self._others: dict[int, int] = {}
        # the workers found without a mark for this pool: (how many pools their row held, when), so a
        # check reads one key (their next free slot) instead of the row, until they claim another pool
        # or MARK_TTL_S passes (a restarted worker refills its zeroed row, maybe in another order)
        self._missed: dict[int, tuple[int, float]] = {}
        self._top, self._held = NOTHING, 0.0  # what this worker last published

    def enqueued(self, ctl: FlowController, priority: int, now: float) -> None:
        """A request of band ``priority`` was queued: published unless the mark already names a higher
        band, or its band with a head not held back (the new one cannot change what goes first)."""
        if priority < self._top or (priority == self._top and self._held == 0.0):
            return
        self.publish(ctl, now)

    def publish(self, ctl: FlowController, now: float) -> None:
        """Write what ``ctl`` would send next: its highest band's choice without a subset hint (held
        back or not), and how many wait."""
        fleet = self.fleet
        if fleet.closed:
            return
        top, held = NOTHING, 0.0
        if len(ctl):
            for item in ctl.heads(now):
                if item.req.subset is None:
                    top = float(item.priority)
                    held = 1.0 if ctl.held_back(item.req, now, item.slo_deadline) else 0.0
                    break
        self._top, self._held = top, held
        m, b = fleet._m, self.base
        m[b + _KEY] = self.key
        m[b + _TOP] = top
        m[b + _HELD] = held
        m[b + _WAITING] = float(len(ctl))
        m[b + _STAMP] = now  # last: a mark with a fresh stamp has its fields (but for a torn read)

    def defers(self, req: InferenceRequest, ctl: FlowController, now: float) -> bool:
        """Should ``req`` wait because another worker has a request waiting that goes first: one of a
        higher band, or (``req`` held back by the headroom) one of its band that is not held back?"""
        fleet = self.fleet
        if fleet.closed or fleet.workers < 2:
            return False
        m, prio, held = fleet._m, req.priority, None
        for w in range(fleet.workers):
            if w == fleet.worker:
                continue
            b = self._find(w, now)
            if b is None:
                continue
            stamp = m[b + _STAMP]
            # (a stamp a little ahead of ``now``: written after this pass or arrival read its clock)
            if not (-fleet.ttl <= now - stamp <= fleet.ttl) or m[b + _WAITING] <= 0.0:
                continue
            top = m[b + _TOP]
            if top > prio:
                return True
            if top == prio and m[b + _HELD] == 0.0:
                if held is None:
                    held = ctl.held_back(req, now)
                if held:
                    return True
        return False

    def _find(self, worker: int, now: float) -> int | None:
        """The index of ``worker``'s mark for this pool, or None. A row fills from its first slot (keys
        written when claimed, zeroed only whole), so a scan stops at the first empty slot, and a miss is
        remembered (see ``_missed``)."""
        fleet, key = self.fleet, self.key
        m, pools = fleet._m, fleet.pools
        b = self._others.get(worker)
        if b is not None and m[b + _KEY] == key:
            return b
        row = worker * pools * FIELDS
        missed = self._missed.get(worker)
        if missed is not None:
            n, at = missed
            if 0.0 <= now - at <= fleet.ttl and (n >= pools or m[row + n * FIELDS + _KEY] == 0.0):
                return None
        self._others.pop(worker, None)
        for i in range(pools):
            b = row + i * FIELDS
            k = m[b + _KEY]
            if k == key:
                self._others[worker] = b
                self._missed.pop(worker, None)
                return b
            if k == 0.0:
                self._missed[worker] = (i, now)
                return None
        self._missed[worker] = (pools, now)
        return None
