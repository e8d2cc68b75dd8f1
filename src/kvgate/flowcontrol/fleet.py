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
band of the request that would leave first (``FlowController.heads``' first choice; requests with a
subset hint and ones held out of selection do not count), whether that request is held back by the
fair-share headroom (``FlowController.held_back``), how many wait, and that request's TTFT deadline where
its band orders ``slo-feasible`` (else inf). A worker defers a request while another worker's fresh mark
names one that one process would send first (``heads``): one not past its deadline before one past it
(``slo-feasible`` across bands: the overdue heads after every band's heads that can still make theirs;
judged at the reader's ``now``, so a head that missed since the mark was written counts as overdue),
then the higher band, then, in the same band, one not held back before one held back: what one
process's ``dispatch_ready`` does across its bands and flows (session 25; before, the marks ordered by
band alone, strict priority, and an overdue head in one worker held back a lower band's feasible one in
another: fc24b's tests). The first such head never defers (no cycle), so the fleet does not stall on
marks; it waits on a head only as one process would.

Bounded and lock-free: one row of ``POOLS`` marks per worker, written only by that worker (a reader may
see a mark mid-write: ordering for one gate check, never an invariant). Crash-safe: a mark older than
``MARK_TTL_S`` (or more than that ahead of the reader's clock: a zeroed row) is ignored (a worker that
died, or whose loop stalled, blocks no one for longer), a worker
publishes at every dispatch pass (``FlowDispatcher``: at most every ``recheck_interval`` while it has
requests queued) and a mark with nothing waiting once its queue is empty; the supervisor zeroes a
restarted worker's row. Time is injected (every call takes ``now``).

The held-back test and the running reserve on the fleet's counts (session 19, ``FleetShares``). The marks
order the workers' heads, but what one process's gate decides on was still each worker's half: whether a
flow is over its share (its requests in flight and queued, its arrivals, against the flows active) and how
many free running slots to keep for the requests not held back (the rates behind ``free_slots``, the
learned ``free_extra``). Session 18's trace (seed 44): the slow quiet requests waited while the pool was
full of flood and batch work that the *other* worker had not held back by its own counts (a flood with few
quiet flows active in that worker is not over "its share" there; a quiet tenant whose requests came to one
worker in a bunch was over its share there). So each worker also publishes, per pool, a share row
(``SHARE_FIELDS`` float64): its requests in flight and queued and its arrivals (decayed over
``LOAD_WINDOW_S``) per flow (``SHARE_FLOWS`` flows at most, those active first: the largest demands when
more are active), their totals, the reserve's rates (the dispatches of requests not held back, every
finish) and its ``free_extra``. Every ``SHARED_INFLIGHT_SYNC_S`` (the in-flight sync, not the data path) a
worker writes its row and folds the others' fresh rows into a snapshot; its controller's ``over_share``,
``rate_over``, fairness choice and ``free_reserve`` then add the snapshot to its own counts (exact for its
own, one sync stale for the others', as the endpoints' in-flight counts): one process's test on the
fleet's counts. A row is written under a sequence number (odd while written) and read again if it moved (a
torn row is skipped for that sync); one older than ``MARK_TTL_S`` is ignored, as a mark.

The adaptive headroom on the fleet's first tokens (session 22, ``FleetShares._steer``): with
``fairShareTTFTTarget`` each worker's headroom moved on its own first tokens only, so a quiet request's
miss at one worker left the other dispatching the flood as before. The share row also carries the
headroom's level, and a join vector of the moves behind it: per worker slot (``workers`` entries), the
moves its newest controller made (by version) and the best-known older one (a restart's, a reload's
predecessor: its own moves and the older one its total builds on, rebased on a newer one known). Each sync
merges the others' vectors, keeping per slot the newer parts, and moves the level by what that adds (one
process's stochastic approximation on every first token, clamped alike). Levels that meet (a controller
joining a running fleet, a worker found only after both moved: review s22-late F3) end at one level and
hold each move at most once, for any number of workers and any order (session 24; session 23's single join
record was exact for two workers only); the row is written after the sync's fold, so the vector it shows
holds the moves just folded (review s23-rev-flow23 F2).

The queue limits (session 21, ``FleetLimits``): ``maxRequests`` / ``maxBytes``, global and each band's,
bound the fleet's queue for a pool, as one process's. Each worker keeps, per pool, a limit row
(``LIMIT_FIELDS`` float64, exact integers): its controllers' queued requests and bytes for that pool, and
per band with a limit (``LIMIT_BANDS`` bands at most, keyed by priority) the band's. Every change of a
controller's ``count`` / ``bytes`` (queued, removed on any way out: dispatched, cancelled, expired, given up,
evicted; queued again by ``hold``) is added to its worker's row at once, so a request's place is given back
exactly once, when the controller's own count gives it back. An arrival is admitted on the sum of every
worker's row under the segment's lock and counted in its own row under the same hold (check and count are
one step for the fleet, as ``shared_tenants.SharedTenants.enter``); removals write the worker's own row
without the lock (only it writes it: a check meanwhile sees one request too many, never one too few).
No TTL: a live worker's queue counts however stale its marks; a dead worker's row is zeroed by the
supervisor as soon as it sees the death (``FleetMarks.clear_row``; not only at the restart, which may wait out
a backoff of up to a minute: review s21-wk M1), which is how its share is reclaimed.
Bounds on the excess, both short (no arrival is admitted until the fleet's queue is below the limit again):
``hold`` counts a request its pick turned back again without a check (taken and held in one synchronous
step, but another worker may admit into its place meanwhile: review s21-wk L2; a check could only refuse a
request that has already waited), so the fleet may hold up to ``workers - 1`` over a limit, one per other
worker in such a step at once; a lock found stuck (``LOCK_WAIT_S`` in ``shared_tenants``) admits on the
rows read without it (each worker counts its request right after its read), up to ``workers - 1`` over.
Past ``POOLS`` pools or ``LIMIT_BANDS`` limited bands a pool's (a band's) limits hold per worker, said once
in the log (review s21-wk L4)."""

from __future__ import annotations

import hashlib
import heapq
import logging
import math
from array import array
from collections.abc import Callable, Iterable
from itertools import compress
from operator import gt
from typing import TYPE_CHECKING, Any

from kvgate.flowcontrol.controller import (
    LOAD_WINDOW_S,
    PASS_OVER_MAX,
    PASS_OVER_MAX_HEADS,
    RATE_ACTIVE,
    RATE_OVERFLOW,
    queue_full,
    rate_key,
)

if TYPE_CHECKING:
    from kvgate.flowcontrol.controller import FlowController
    from kvgate.flowcontrol.policies import Band
    from kvgate.scheduling.types import InferenceRequest

log = logging.getLogger("kvgate.flowcontrol")

# stamp, pool key, top band's priority, its head held back (1.0) or not (0.0), requests waiting, the head's
# TTFT deadline where its band orders ``slo-feasible`` (inf: never overdue) and the time from which it
# ranks at its band's priority again though past it (its ``ages_at`` where the controller ages overdue
# heads, else inf; session 25), and its expiry there (TTL, or its own deadline; else inf): between aged heads
# the one that expires first goes (fc26b), compared as one process does, not rebuilt from the aging time
# (review s26-rev-fc26b F3: ``2 x ages - due`` rounds, and equal expiries broke ties by the rounding)
FIELDS = 8
_STAMP, _KEY, _TOP, _HELD, _WAITING, _DUE, _AGES, _EXPIRES = range(FIELDS)
POOLS = 16  # marks per worker: pools beyond it keep their own order (no mark)
# A mark older than this is ignored: 12 dispatch passes at the default 20 ms recheck (a loaded event loop
# runs late), and the most a dead worker's last mark can hold the others back.
MARK_TTL_S = 0.25
NOTHING = -math.inf  # the top priority of a mark with no request that can leave


# A share row (``FleetShares``): a head, then SHARE_FLOWS entries of (flow key, in flight + queued,
# arrivals decayed to the row's stamp). Written every sync by its worker only, under its sequence number.
# The head's last two: the adaptive headroom's level (NaN: a fixed headroom, nothing to join) and the
# layout's version (a row of another is not folded). The moves behind the level are in the row's join
# vector (below), written under the same sequence number.
SHARE_FLOWS = 64
# (1: session 22's 12-field head; 2: session 23's 16, with one join record; 3: the join vector; 4: its
# older part with its own moves and base; 5: each part with the oldest incarnation its total holds)
SHARE_VERSION = 5.0
_HEAD = 11
(_SEQ, _SSTAMP, _SKEY, _SN, _SDEMAND, _SARRIVED, _STAKE, _SGIVE, _SEXTRA, _SHLEVEL,
 _SVERSION) = range(_HEAD)  # fmt: skip
_ENTRY = 3
SHARE_FIELDS = _HEAD + SHARE_FLOWS * _ENTRY
# A flow's arrivals at least this (decayed) are published when the table is scanned (below RATE_ACTIVE:
# two workers' parts add up); the arrival table is scanned only while it holds at most SHARE_SCAN ids.
SHARE_MIN_ARRIVED = 0.05
SHARE_SCAN = 4 * SHARE_FLOWS

# A join vector (``FleetShares._steer``), one per share row: per worker slot (``workers`` entries: bounded
# by N), the moves of the adaptive headroom that this row's level holds from that slot's controllers. An
# entry: the newest controller ("incarnation": a restart's or a reload's is a new one) of the slot known,
# as it wrote itself (its epoch, its version: how many changes of these figures it has written, its own
# moves, its base: the older incarnations' moves it held, and the (epoch, version) of the older one that
# base is; its total is base + own; and the epoch of the oldest incarnation that total holds, its "root"),
# then the best-known older incarnation of the slot in the same seven fields, its base possibly rebased on
# an older one known better (review s24-rev-wk24 F1: with only its (epoch, version, total), a newer older
# one whose total lacked an older one's moves displaced it, and a move every live row held was lost), or
# added to where the other is wholly before its root (session 25: a chain whose first sync found no fresh
# row holds nothing before it, and a row that held an older one adds it). Epoch 0: none.
_VCUR = 7
_VE, _VQ, _VOWN, _VBTOT, _VBE, _VBQ, _VROOT = range(_VCUR)
_VENTRY = 2 * _VCUR
_VPE, _VPQ, _VPOWN, _VPBTOT, _VPBE, _VPBQ, _VPROOT = range(_VCUR, _VENTRY)


# A limit row (``FleetLimits``): this worker's queued requests and bytes for one pool, then LIMIT_BANDS
# entries of (claimed: 1.0, the band's priority, its queued requests, its bytes), claimed at ``attach`` (the
# configured limited bands, highest priority first: the same in every worker), else at first use.
LIMIT_BANDS = 16
_LHEAD = 2
_LCOUNT, _LBYTES = range(_LHEAD)
_LENTRY = 4
_LUSED, _LPRIO, _LBCOUNT, _LBBYTES = range(_LENTRY)
LIMIT_FIELDS = _LHEAD + LIMIT_BANDS * _LENTRY


# The segment's first 8 bytes, at a fixed offset whatever the layout after them: this layout's mark (a hash
# of the row sizes and ``LAYOUT_VERSION``), written by the supervisor (``FleetMarks``, worker -1) and checked
# by each worker at its start (``check_layout``): a worker spawned from code of another layout (an upgrade in
# place under a running supervisor, then a respawn) refuses to start instead of reading and writing the rows
# at another stride (review s25-rev-wk25 F1; as ``gateway.shared_responses``' table). Bump the version when a
# field's meaning changes but no size does (the in-flight table before this segment, whose size sets this
# segment's offset, is hashed in: ``layout_mark``, rev-a36 F4). 2: its row took
# ``certain_misses`` (wk33). 3: its addresses became pool + address keys (rev-c35 F2; rev-f35 F3). 4: it took
# a listed mark per worker and slot, and idle slots are reclaimed (rev-f35 F1).
LAYOUT_VERSION = 4
_LAYOUT_BYTES = 8


def layout_mark(pools: int = POOLS, table: tuple[Any, ...] = ()) -> int:
    """This code's layout mark for ``pools`` marks per worker: a signed int64, never 0 (a zeroed word).
    ``table``: the layout of what precedes this segment (``--workers``: the in-flight table's,
    ``gateway.shared_inflight.layout``), whose end is this segment's start (review rev-a36 F4: a row change
    there without a version bump moved every row here unnoticed)."""
    shape = (FIELDS, SHARE_FIELDS, LIMIT_FIELDS, _VENTRY, pools, LAYOUT_VERSION, table)
    digest = hashlib.blake2b(repr(shape).encode(), digest_size=8, person=b"kvgate-fleet").digest()
    return int.from_bytes(digest, "little", signed=True) or 1


def segment_size(workers: int, pools: int = POOLS) -> int:
    return _LAYOUT_BYTES + workers * pools * (FIELDS + SHARE_FIELDS + LIMIT_FIELDS + workers * _VENTRY) * 8


def check_layout(buf: memoryview, workers: int, pools: int = POOLS, table: tuple[Any, ...] = ()) -> None:
    """A worker's check of the supervisor's segment ``buf`` before it uses it: ValueError when the segment
    is smaller than this code's layout needs or its mark is not this code's (another kvgate's supervisor)."""
    want = segment_size(workers, pools)
    found = int.from_bytes(buf[:_LAYOUT_BYTES], "little", signed=True) if len(buf) >= want else 0
    mark = layout_mark(pools, table)
    if found != mark:
        raise ValueError(
            f"the flow-control fleet segment ({len(buf)} bytes) is not this kvgate's layout ({want} bytes, "
            f"mark {mark & (2**64 - 1):#x}, found {found & (2**64 - 1):#x}): a worker of "
            "another version under a running supervisor; restart the supervisor with the same version"
        )


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
        self, buf: memoryview, workers: int, worker: int, pools: int = POOLS, ttl: float = MARK_TTL_S,
        lock: Any = None, table: tuple[Any, ...] = (),
    ) -> None:  # fmt: skip
        if worker < 0:  # the supervisor's: this layout's mark (``check_layout``)
            with memoryview(buf) as head:
                mark = layout_mark(pools, table)
                head[:_LAYOUT_BYTES] = mark.to_bytes(_LAYOUT_BYTES, "little", signed=True)
        self._m = memoryview(buf)[_LAYOUT_BYTES : segment_size(workers, pools)].cast("d")
        self.workers = workers
        self.worker = worker
        self.pools = pools
        self.ttl = ttl
        # The segment's lock for the queue limits (``FleetLimits.admit``): ``acquire() -> bool`` (False:
        # found stuck) and ``release()``, as ``shared_tenants.SharedTenants``'s; None: admitted on the rows
        # read without it (tests of one process).
        self.lock = lock
        self.closed = False
        self._own: dict[float, int] = {}  # pool key -> its mark's index in this worker's row
        self._unmarked: set[str] = set()  # the pools past ``pools`` (said once each in the log)

    def close(self) -> None:
        """Release the buffer (a shared-memory segment cannot close while it is exported); marks handed
        out answer "no defer" from then on."""
        self.closed = True
        self._m.release()

    def clear_row(self, worker: int) -> None:
        """Zero ``worker``'s marks, share and limit rows (the supervisor, when it sees that worker die, and
        again before its successor starts)."""
        b = worker * self.pools * FIELDS
        for k in range(b, b + self.pools * FIELDS):
            self._m[k] = 0.0
        b = self.shares_at + worker * self.pools * SHARE_FIELDS
        for k in range(b, b + self.pools * SHARE_FIELDS):
            self._m[k] = 0.0
        b = self.limits_at + worker * self.pools * LIMIT_FIELDS  # (its queue is gone: its places given back)
        for k in range(b, b + self.pools * LIMIT_FIELDS):
            self._m[k] = 0.0
        n = self.workers * _VENTRY
        b = self.joins_at + worker * self.pools * n
        for k in range(b, b + self.pools * n):
            self._m[k] = 0.0

    @property
    def shares_at(self) -> int:
        """Where the share rows start (after every worker's marks)."""
        return self.workers * self.pools * FIELDS

    @property
    def limits_at(self) -> int:
        """Where the limit rows start (after every worker's share rows)."""
        return self.workers * self.pools * (FIELDS + SHARE_FIELDS)

    @property
    def joins_at(self) -> int:
        """Where the join vectors start (after every worker's limit rows)."""
        return self.workers * self.pools * (FIELDS + SHARE_FIELDS + LIMIT_FIELDS)

    def pool(self, name: str) -> PoolMark | None:
        """This worker's mark for pool ``name`` (claimed in its row if new); None past ``POOLS`` pools."""
        key = pool_key(name)
        i = self._own.get(key)
        if i is None:
            if len(self._own) >= self.pools:
                if name not in self._unmarked:  # (asked at every sync: said once)
                    self._unmarked.add(name)
                    log.warning(
                        "pool %r: past %d pools under --workers, its flow control keeps this worker's own "
                        "order and shares, and its maxRequests / maxBytes hold per worker (the gateway may "
                        "queue --workers times them)", name, self.pools,
                    )  # fmt: skip
                return None
            i = self._own[key] = len(self._own)
            if not self.closed:  # claimed: the others find it (stamp 0: no mark yet), rows fill in order
                self._m[(self.worker * self.pools + i) * FIELDS + _KEY] = key
        return PoolMark(self, key, (self.worker * self.pools + i) * FIELDS, name)


class PoolMark:
    """One pool's mark in this worker's row, and the others' marks for the same pool."""

    __slots__ = (
        "_ages", "_due", "_held", "_missed", "_others", "_top", "base", "fleet", "key", "limits", "name",
        "shares",
    )  # fmt: skip

    def __init__(self, fleet: FleetMarks, key: float, base: int, name: str = "") -> None:
        self.fleet = fleet
        self.key = key
        self.base = base
        self.name = name  # (the pool's: for the log)
        self.shares = FleetShares(self)  # the fleet's counts behind the held-back test and the reserve
        self.limits = FleetLimits(self)  # the fleet's queued counts behind maxRequests / maxBytes
        # where the other workers' marks for this pool were last found (checked on every read)
        self._others: dict[int, int] = {}
        # the workers found without a mark for this pool: (how many pools their row held, when), so a
        # check reads one key (their next free slot) instead of the row, until they claim another pool
        # or MARK_TTL_S passes (a restarted worker refills its zeroed row, maybe in another order)
        self._missed: dict[int, tuple[int, float]] = {}
        self._top, self._held = NOTHING, 0.0  # what this worker last published
        self._due = self._ages = math.inf

    def enqueued(self, ctl: FlowController, priority: int, now: float) -> None:
        """A request of band ``priority`` was queued: published unless the mark already names a higher
        band, or its band with a head not held back, with a head not past its deadline (the new one cannot
        change what goes first; past it, a lower band's new request may: ``slo-feasible``)."""
        late = self._due < now < self._ages  # (its head past its deadline: a lower band's may go first)
        if not late and (priority < self._top or (priority == self._top and self._held == 0.0)):
            return
        self.publish(ctl, now)

    def publish(self, ctl: FlowController, now: float) -> None:
        """Write what ``ctl`` would send next: its highest band's first choice without a subset hint (held
        back or not; the heads with one passed over as a dispatch pass does, so a band behind a pinned
        head is named: review s19-fc M2), and how many wait."""
        fleet = self.fleet
        if fleet.closed:
            return
        top, held, due, ages, expires = NOTHING, 0.0, math.inf, math.inf, math.inf
        if len(ctl):
            ctl.put_back()  # (nothing is passed over outside a dispatch pass)
            # (bounded as a pass's pass-overs: distinct subsets, heads; review s19-fixes-b L1)
            subsets: set[tuple[str, frozenset[str], int]] = set()
            try:
                for item in ctl.heads(now):
                    sub = item.req.subset
                    if sub is not None and ctl.passed < PASS_OVER_MAX_HEADS:
                        key = (item.req.model, sub, item.priority)
                        if key in subsets or len(subsets) < PASS_OVER_MAX:
                            subsets.add(key)
                            ctl.pass_over(item)  # (its band's next choice follows: review s19-fc M2)
                            continue
                    # (past the cap a dispatch pass ends there: its band goes first too)
                    top = float(ctl.slot_priority(item))  # (a swapped-in aged head: its slot's band, fc26b)
                    held = 1.0 if ctl.held_back(item.req, now, item.slo_deadline) else 0.0
                    if ctl.bands[item.priority].ordering == "slo-feasible":
                        due = item.slo_deadline
                        ages = getattr(item, "ages_at", math.inf)  # (where overdue heads age: fc25)
                        expires = item.deadline
                    break
            finally:
                ctl.put_back()
        self._top, self._held, self._due, self._ages = top, held, due, ages
        m, b = fleet._m, self.base
        m[b + _KEY] = self.key
        m[b + _TOP] = top
        m[b + _HELD] = held
        m[b + _WAITING] = float(len(ctl))
        m[b + _DUE] = due
        m[b + _AGES] = ages
        m[b + _EXPIRES] = expires
        m[b + _STAMP] = now  # last: a mark with a fresh stamp has its fields (but for a torn read)

    def defers(self, req: InferenceRequest, ctl: FlowController, now: float) -> bool:
        """Should ``req`` wait because another worker has a request waiting that goes first, by one
        process's order (``FlowController.heads``): a head not past its SLO deadline before one past it
        (``slo-feasible``: the overdue heads after every band's heads that can still make theirs; any other
        ordering is never overdue), then the higher band, then (``req`` held back by the headroom) one of
        its band that is not held back? Overdue is judged at ``now``, on the deadline the mark names."""
        fleet = self.fleet
        if fleet.closed or fleet.workers < 2:
            return False
        m, prio, held, late = fleet._m, req.priority, None, None
        mine, asked = None, False  # (``req``'s expiry when past its aging time: fc26b)
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
            if top <= 0 and prio <= 0 and m[b + _DUE] < now and m[b + _AGES] <= now:
                # (theirs past its aging time at or below the default band: between two such heads, the
                # one that expires first, as ``FlowController._sooner_aged``: on a tie the higher band)
                if not asked:
                    mine, asked = ctl.aged_expiry(req, now), True
                if mine is not None:
                    theirs = m[b + _EXPIRES]
                    if theirs < mine or (theirs == mine and top > prio):
                        return True
                    if top != prio:
                        continue
            if m[b + _DUE] < now < m[b + _AGES]:  # (theirs past its deadline: after every feasible head)
                if top < prio:
                    continue
                if late is None:
                    late = _overdue(ctl, req, now)
                if not late:
                    continue
            elif top < prio:  # (theirs can still make its deadline: before ``req`` only if ``req`` cannot)
                if top == NOTHING:  # (nothing there can leave)
                    continue
                if late is None:
                    late = _overdue(ctl, req, now)
                if late:
                    return True
                continue
            elif top == prio:
                if late is None:
                    late = _overdue(ctl, req, now)
                if late:
                    return True
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


KEY_CACHE = 4096  # a flow's arrival-table key -> its keys, kept for this many (then started over)


class FleetShares:
    """One pool's share rows: this worker's, written by ``sync``, and a snapshot of the other workers'
    (folded by ``sync``, every ``SHARED_INFLIGHT_SYNC_S``), which the controller's held-back test and
    reserve add to its own counts (``FlowController.fleet``, set while another worker's row is fresh).
    The snapshot holds per flow key the others' requests in flight + queued (``demand``) and their
    arrivals (``arrived``: decayed values as of the sync, ``at``), the totals, the flows active (or
    sending) at another worker only (counted once with this worker's), the others' reserve rates and
    ``free_extra``."""

    def __init__(self, mark: PoolMark) -> None:
        self.mark = mark
        self.demand: dict[float, float] = {}
        self.demand_total = 0.0
        self.active_extra = 0  # flows with requests in flight or queued at another worker only
        self._unlisted: set[float] | None = None  # keys of the flows active here left out of its row
        self.arrived: dict[float, float] = {}  # the others' arrivals per flow key, as of ``at``
        self.arrived_total = 0.0
        self.rate_extra = 0  # flows sending (RATE_ACTIVE) by the fleet's arrivals, not by this worker's
        self.take = 0.0  # the others' dispatches not held back and finishes (decayed counts, as of ``at``)
        self.give = 0.0
        self.extra_sum = 0.0  # the others' ``free_extra``, and how many
        self.extra_n = 0
        self.at = 0.0
        self._scale: tuple[float | None, float] = (None, 1.0)  # (the controller's arrival base, factor)
        # rate_key(flow) -> (its key, itself): by the rate key, at most RATE_KEY_MAX characters whatever the
        # client's id (review s28-qa Q6; a short id is its own rate key, so ``_keys.get(flow)`` finds it)
        self._keys: dict[str, tuple[float, str]] = {}
        self._seq = 0.0
        # The adaptive headroom (``fairShareTTFTTarget``) on the fleet's first tokens: this incarnation's
        # epoch (set at its first sync), the sum of its own moves of its controller's headroom, the
        # controller and its headroom after the last sync (what moved since is this worker's own), the
        # join vector its level holds (``_steer``; its own slot's entry is written at ``_publish``), what
        # each slot adds to the level now, and each other row's vector as last merged (unchanged: skipped).
        self._epoch = 0.0
        self._moved = 0.0
        self._hr_after: tuple[FlowController, float] | None = None
        n = mark.fleet.workers
        self._vec = [0.0] * (n * _VENTRY)
        self._counted = [0.0] * n
        self._version = 0.0  # (changes of this incarnation's own (moves, total) written so far)
        self._vseen: dict[int, list[float]] = {}
        self._at: dict[int, tuple[int, int]] = {}  # a mark -> its share row and join vector (``_read``)

    def key(self, flow: str) -> float:
        """``flow``'s key in the rows (its arrival-table key's hash: ``rate_key``)."""
        got = self._keys.get(flow)
        return (got or self._key(flow))[0]

    def _key(self, flow: str) -> tuple[float, str]:
        if len(self._keys) >= KEY_CACHE:
            self._keys.clear()
        rk = rate_key(flow)
        got = self._keys[rk] = (pool_key(rk), rk)
        return got

    # -- the sync (every SHARED_INFLIGHT_SYNC_S) --------------------------------------------------

    def sync(self, ctl: FlowController, now: float) -> None:
        """Write this worker's row from ``ctl`` and fold the others' fresh rows; ``ctl.fleet`` is this
        while at least one is fresh (else None: one process's test on this worker's own counts)."""
        fleet = self.mark.fleet
        if fleet.closed or fleet.workers < 2:
            ctl.fleet = None
            return
        own, flat, scale = self._gather(ctl, now)
        self._own_moves(ctl, now)
        folded = self._fold(ctl, now, own)
        # Written after the fold (review s23-rev-flow23 F2): the level a joiner reads holds the moves this
        # worker folded in now, else a new controller (a reload's, a restart's) joining within one interval
        # takes a level without them and the two workers stay apart by them.
        self._publish(ctl, now, flat, scale)
        ctl.fleet = self if folded else None
        ctl._reserve_cache = (None, 0)  # (asked again at the same instant: on the new counts)

    def _row(self, worker_mark: int) -> int:
        fleet = self.mark.fleet
        return fleet.shares_at + (worker_mark // FIELDS) * SHARE_FIELDS

    def _gather(
        self, ctl: FlowController, now: float
    ) -> tuple[dict[float, tuple[float, float]], array[float], float]:
        """What this worker's row will say of its flows: flow key -> (in flight + queued, arrivals as of
        ``now``), the same flattened, and the arrivals' scale to ``now``."""
        base = ctl._arrived_base
        scale = 0.0 if base is None else math.exp(-(now - base) / LOAD_WINDOW_S)
        arrived, inflight, queued = ctl._arrived, ctl.inflight, ctl.queued
        own: dict[float, tuple[float, float]] = {}
        keys, key = self._keys, self._key
        places: Iterable[str] = ctl._places
        self._unlisted = None
        if len(ctl._places) > SHARE_FLOWS:  # the largest demands (ties: the most arrivals), so a flood
            # is never left out by the order the flows became active (review s19-fc L4); the rest are
            # still counted once with the others' flows active (``active_extra``)
            def size(f: str) -> tuple[int, float]:
                return inflight.get(f, 0) + queued.get(f, 0), arrived.get((keys.get(f) or key(f))[1], 0.0)

            places = heapq.nlargest(SHARE_FLOWS, ctl._places, key=size)
            listed = set(places)
            self._unlisted = {(keys.get(f) or key(f))[0] for f in ctl._places if f not in listed}
        for flow in places:  # the flows active here first
            k, rk = keys.get(flow) or key(flow)
            own[k] = (float(inflight.get(flow, 0) + queued.get(flow, 0)), arrived.get(rk, 0.0) * scale)
        if scale and len(arrived) <= SHARE_SCAN:
            floor = SHARE_MIN_ARRIVED / scale
            for rk, a in arrived.items():
                if len(own) >= SHARE_FLOWS:
                    break
                if a >= floor:
                    k = (keys.get(rk) or key(rk))[0]  # (a rate key is its own rate key)
                    if k not in own:
                        own[k] = (0.0, a * scale)
        flat = array("d")
        for k, (d, a) in own.items():
            flat.extend((k, d, a))
        return own, flat, scale

    def _own_moves(self, ctl: FlowController, now: float) -> None:
        """Add this worker's own moves of the headroom since its last sync (before the fold adds the
        others')."""
        if not self._epoch:
            self._epoch = now
        after = self._hr_after
        if after is None:  # (its moves before its first sync: the target's headroom starts at 0)
            if ctl.cfg.fair_share_ttft_target:
                self._moved = ctl.headroom
        elif after[0] is ctl:
            self._moved += ctl.headroom - after[1]

    def _publish(self, ctl: FlowController, now: float, flat: array[float], scale: float) -> None:
        """This worker's row (``_gather``'s flows, the counts, the headroom after the fold)."""
        m, b = self.mark.fleet._m, self._row(self.mark.base)
        seq = self._seq
        m[b + _SEQ] = seq + 1.0  # odd: being written
        m[b + _HEAD : b + _HEAD + len(flat)] = flat
        m[b + _SN] = float(len(flat) // _ENTRY)
        m[b + _SKEY] = self.mark.key
        m[b + _SDEMAND] = float(ctl.inflight_total + ctl.queued_total)
        m[b + _SARRIVED] = ctl._arrived_total * scale
        m[b + _STAKE] = ctl._decayed(ctl._rate, ctl._rate_at, now)
        m[b + _SGIVE] = ctl._decayed(ctl._finished, ctl._finished_at, now)
        m[b + _SEXTRA] = ctl.free_extra
        # (NaN without the target: a fixed headroom is no adaptive level to join; review s22-late F1)
        m[b + _SHLEVEL] = ctl.headroom if ctl.cfg.fair_share_ttft_target else math.nan
        vec, o = self._vec, self.mark.fleet.worker * _VENTRY  # (this incarnation's own entry)
        cur = [
            self._epoch,
            self._version,
            self._moved,
            vec[o + _VPBTOT] + vec[o + _VPOWN],  # (its base: the best-known older incarnation's total)
            vec[o + _VPE],
            vec[o + _VPQ],
            vec[o + _VPROOT] if vec[o + _VPE] else self._epoch,  # (the oldest incarnation its total holds)
        ]
        if vec[o : o + _VCUR] != cur:  # (a new version only when its figures change: an unchanged vector
            self._version += 1.0  # is skipped by the others' merge)
            cur[_VQ] = self._version
            vec[o : o + _VCUR] = cur
        v = self._vec_at(self.mark.base)
        m[v : v + len(vec)] = array("d", vec)
        m[b + _SVERSION] = SHARE_VERSION
        m[b + _SSTAMP] = now
        m[b + _SEQ] = seq + 2.0
        self._seq = seq + 2.0

    def _vec_at(self, worker_mark: int) -> int:
        """The join vector of the worker and pool whose mark starts at ``worker_mark``."""
        fleet = self.mark.fleet
        return fleet.joins_at + (worker_mark // FIELDS) * fleet.workers * _VENTRY

    def _read(self, m: memoryview[float], mb: int, nv: int) -> tuple[list[float], list[float]] | None:
        """The share row and the first ``nv`` fields of the join vector (all of it, or none) of the mark at
        ``mb`` as one consistent copy (its sequence number even and unchanged), or None."""
        at = self._at.get(mb)
        if at is None:
            at = self._at[mb] = (self._row(mb), self._vec_at(mb))
        b, v = at
        for _ in range(2):
            seq = m[b + _SEQ]
            if seq % 2.0:
                continue
            n = max(0, min(SHARE_FLOWS, int(m[b + _SN])))
            row: list[float] = m[b : b + _HEAD + n * _ENTRY].tolist()  # type: ignore[assignment]
            vec: list[float] = m[v : v + nv].tolist()  # type: ignore[assignment]
            if m[b + _SEQ] == seq:
                return row, vec
        return None

    def _fold(self, ctl: FlowController, now: float, own: dict[float, tuple[float, float]]) -> bool:
        fleet = self.mark.fleet
        m, ttl = fleet._m, fleet.ttl
        demand: dict[float, float] = {}
        arrived: dict[float, float] = {}
        demand_total = arrived_total = take = give = extra = 0.0
        extra_n = 0
        vecs: list[list[float]] = []  # the fresh rows' join vectors (``_steer``), if the level adapts
        adapt = bool(ctl.cfg.fair_share_ttft_target)
        nv = fleet.workers * _VENTRY if adapt else 0
        for w in range(fleet.workers):
            if w != fleet.worker:
                mb = self.mark._find(w, now)
            elif not self._seq:  # (this worker's own row before its first write: a reload's predecessor's)
                mb = self.mark.base
            else:
                continue
            if mb is None:
                continue
            got = self._read(m, mb, nv)
            if got is None:
                continue
            row, vec = got
            stamp = row[_SSTAMP]
            if not (-ttl <= now - stamp <= ttl) or row[_SKEY] != self.mark.key:
                continue
            if row[_SVERSION] != SHARE_VERSION:  # (another layout: its fields are not these)
                continue
            # (not NaN: that worker adapts its headroom; a vector changed since its last merge only)
            if adapt and row[_SHLEVEL] == row[_SHLEVEL] and self._vseen.get(mb) != vec:
                self._vseen[mb] = vec
                vecs.append(vec)
            if w == fleet.worker:  # (its predecessor's counts are this worker's own: only its vector)
                continue
            down = math.exp(-max(0.0, now - stamp) / LOAD_WINDOW_S)  # (to ``now``)
            for i in range(_HEAD, len(row), _ENTRY):
                k, d, a = row[i], row[i + 1], row[i + 2]
                if d:
                    demand[k] = demand.get(k, 0.0) + d
                if a:
                    arrived[k] = arrived.get(k, 0.0) + a * down
            demand_total += row[_SDEMAND]
            arrived_total += row[_SARRIVED] * down
            take += row[_STAKE] * down
            give += row[_SGIVE] * down
            extra += row[_SEXTRA]
            extra_n += 1
        if adapt:
            self._steer(ctl, vecs)
        if not extra_n:
            return False
        none = (0.0, 0.0)
        unlisted = self._unlisted or ()  # (active here too, past this worker's row)
        self.active_extra = sum(
            1 for k, d in demand.items() if d > 0.0 and not own.get(k, none)[0] and k not in unlisted
        )
        rate_extra = 0
        for k, a in arrived.items():
            mine = own.get(k, none)[1]
            if mine < RATE_ACTIVE <= mine + a:
                rate_extra += 1
        self.demand, self.demand_total = demand, demand_total
        self.arrived, self.arrived_total, self.rate_extra = arrived, arrived_total, rate_extra
        self.take, self.give, self.extra_sum, self.extra_n = take, give, extra, extra_n
        self.at = now
        self._scale = (None, 1.0)
        return True

    def _steer(self, ctl: FlowController, vecs: list[list[float]]) -> None:
        """The adaptive headroom as one process's on the fleet's first tokens: each worker moves its own
        on its own first tokens (``FlowController.observe_first_token``) and adds the others' moves here,
        so a quiet request's miss at one worker raises the headroom that holds the flood back at every
        worker (per worker, each steered on half the misses, and a worker whose quiet requests met no miss
        kept dispatching the flood into the slots the other's quiet requests needed). Clamped as one
        process's: levels that drift apart meet at a bound.

        The moves are counted by a join vector (a grow-only counter per worker slot, as a version vector;
        session 24): this level holds, per slot, the moves of the newest controller of that slot it knows
        (at its newest version) plus the total of the best-known older one (a restart's, a reload's
        predecessor: its own moves on the base it names, the older one its total holds). Merging another
        row's vector (``vecs``: the fresh rows' whose vector changed, this worker's own row too, where a
        reload's predecessor left its vector) keeps, per slot, the newer of each part, an older part's base
        rebased on an older incarnation known here and newer than it (``_older``: review s24-rev-wk24 F1, a
        restart whose first sync found no fresh row, then a reload, displaced a move every live row held);
        the level moves by what the slots' parts add up to now minus what they did. Any order of syncs,
        stalls, restarts and reloads of any number of workers leaves every level at the same sum once the
        rows have been read round (until a clamp), each move at most once, and every move kept whose
        controller's row every live worker had read before it was replaced (the property tests). Lost: a
        controller's moves no live row took (as one process's restart loses them), and an older one's that
        falls in a gap inside a chain (between the root and the newest: known only to rows that missed the
        replacements on both sides of it) or was added below a base that a newer version of that base then
        displaced; a chain's gap below its root is filled (session 25: the rows that missed two later
        replacements, fixwk24's limit). Sessions 22-23 kept one join record per row instead: exact for two
        workers, and past two a move could be counted twice (up to 2x) or the levels stay apart until a clamp
        (``scripts/fc_fleet_join_orders.py``)."""
        fleet = self.mark.fleet
        me, n = fleet.worker, fleet.workers
        held, counted = self._vec, self._counted
        o = me * _VENTRY
        if not self._seq:  # (not written yet: an epoch after any of this slot's predecessors')
            for vec in vecs:
                for e in (vec[o + _VE], vec[o + _VPE]):
                    if e >= self._epoch:
                        self._epoch = math.nextafter(e, math.inf)
        epoch = self._epoch
        moved = False
        for vec in vecs:
            # The steady state, in C: the same controllers as held in every slot and no older one named;
            # only the slots written since (a newer version) are taken.
            if vec[_VE::_VENTRY] == held[_VE::_VENTRY] and not any(vec[_VPE::_VENTRY]):
                for s in compress(range(n), map(gt, vec[_VQ::_VENTRY], held[_VQ::_VENTRY])):
                    if s != me:
                        i = s * _VENTRY
                        held[i : i + _VCUR] = vec[i : i + _VCUR]
                        moved = True
                continue
            for i in range(0, n * _VENTRY, _VENTRY):
                e, pe = vec[i + _VE], vec[i + _VPE]
                older = None  # an older incarnation's entry met now (as it wrote itself)
                if i == o:  # this slot's older incarnations: the best one is the base of this one's total
                    e0 = epoch
                    if 0.0 < e < e0:
                        older = vec[i : i + _VCUR]
                    elif not 0.0 < pe < e0:  # (this controller's own entry: nothing older)
                        continue
                else:
                    e0 = held[i + _VE]
                    if e > e0 or (e == e0 and vec[i + _VQ] > held[i + _VQ]):  # the slot's newest, newer
                        if e > e0 and e0:  # (the one it replaces is an older incarnation now)
                            older = held[i : i + _VCUR]
                        held[i : i + _VCUR] = vec[i : i + _VCUR]
                        e0, moved = e, True
                    elif 0.0 < e < e0:
                        older = vec[i : i + _VCUR]
                if 0.0 < pe < e0:
                    moved |= self._older(i, vec[i + _VCUR : i + _VENTRY])
                if older is not None:
                    moved |= self._older(i, older)
        if moved:
            h = ctl.headroom
            for s in range(n):  # (this worker's own moves are in the headroom already)
                i = s * _VENTRY
                now_s = held[i + _VPBTOT] + held[i + _VPOWN] + (0.0 if i == o else held[i + _VOWN])
                h += now_s - counted[s]
                counted[s] = now_s
            if h != ctl.headroom:
                ctl.headroom = min(ctl.cfg.fair_share_headroom, max(0.0, h))
        self._hr_after = (ctl, ctl.headroom)

    def _older(self, i: int, got: list[float]) -> bool:
        """Merge an older incarnation ``got`` (seven fields, as an entry's newest part) into the best-known
        older one of the slot whose entry starts at ``i``: the newer of the two (by epoch, version) is kept,
        its base rebased on the other when the other is an older incarnation newer than that base (each
        incarnation's own moves counted once: a base holds only incarnations before it; the old base is
        kept beside it when it lies wholly before the other's root), or the other added to its base when
        the other lies wholly before its root (disjoint epochs: no move twice). The same incarnation: its
        newer version's moves on the newer of the two bases. Kept or changed: True."""
        held = self._vec
        p = i + _VCUR
        had = held[p : p + _VCUR]
        if not got[_VE] or got == had:
            return False
        new, old = (list(got), had) if (got[_VE], got[_VQ]) > (had[_VE], had[_VQ]) else (list(had), got)
        if 0.0 < old[_VE] < new[_VE]:
            base = old[_VBTOT] + old[_VOWN]  # (old: an incarnation before ``new``)
            if (old[_VE], old[_VQ], base) > (new[_VBE], new[_VBQ], new[_VBTOT]):
                if new[_VBE] and new[_VBE] < old[_VROOT]:  # (new's base wholly before old's oldest: both)
                    base += new[_VBTOT]
                else:
                    new[_VROOT] = old[_VROOT]
                new[_VBTOT], new[_VBE], new[_VBQ] = base, old[_VE], old[_VQ]
            elif old[_VE] < new[_VROOT]:  # (old wholly before the oldest that new's total holds: added)
                new[_VBTOT] += base
                new[_VROOT] = old[_VROOT]
        elif (
            old[_VE] == new[_VE]
            and old[_VBE : _VBQ + 1] + old[_VBTOT:_VBE] > new[_VBE : _VBQ + 1] + new[_VBTOT:_VBE]
        ):
            new[_VBTOT:] = old[_VBTOT:]  # (the same incarnation: base total, its epoch, version and root)
        if new == had:
            return False
        held[p : p + _VCUR] = new
        return True

    # -- the controller's tests on the fleet's counts -----------------------------------------------

    def _factor(self, ctl: FlowController) -> float:
        """The snapshot's arrivals (as of ``at``) in ``ctl``'s arrival scale (its base time)."""
        base = ctl._arrived_base
        cached, f = self._scale
        if cached != base or cached is None:
            f = 0.0 if base is None else math.exp((self.at - base) / LOAD_WINDOW_S)
            self._scale = (base, f)
        return f

    def over_share(self, ctl: FlowController, flow: str, factor: float | None = None) -> bool:
        """``FlowController.over_share`` on the fleet's counts: ``flow``'s requests in flight and queued
        in every worker against the mean over the flows active in any."""
        mine = ctl.inflight.get(flow, 0) + ctl.queued.get(flow, 0) + self.demand.get(self.key(flow), 0.0)
        total = ctl.inflight_total + ctl.queued_total + self.demand_total
        n = len(ctl._places) + self.active_extra
        return mine > 0.0 and mine * n > (ctl._over_factor if factor is None else factor) * total

    def rate_over(self, ctl: FlowController, flow: str) -> bool:
        """``FlowController.rate_over`` on the fleet's arrivals (each worker's, decayed alike)."""
        arrived = ctl._arrived
        key = rate_key(flow)
        mine = arrived.get(key, 0.0)
        if not mine and key not in arrived:
            mine = arrived.get(RATE_OVERFLOW, 0.0)
        f = self._factor(ctl)
        mine += self.arrived.get(self.key(flow), 0.0) * f
        if not mine:
            return False
        flows = max(1, ctl._rate_flows + self.rate_extra)
        return mine * flows > ctl._over_factor * (ctl._arrived_total + self.arrived_total * f)

    def under_share(self, ctl: FlowController) -> Callable[[str], bool]:
        """``FlowController._under_share`` on the fleet's counts."""
        over = self.over_share
        if ctl.cfg.fair_share_running_reserve:
            rate_over = self.rate_over
            return lambda f: not over(ctl, f, 1.0) and not rate_over(ctl, f)
        return lambda f: not over(ctl, f, 1.0)

    def rates(self, ctl: FlowController, now: float) -> tuple[float, float]:
        """``FlowController.rates`` of the fleet: this worker's and the others' (as of the sync, decayed
        on to ``now``)."""
        take, give = ctl.rates(now)
        down = math.exp(-max(0.0, now - self.at) / LOAD_WINDOW_S) / LOAD_WINDOW_S
        return take + self.take * down, give + self.give * down

    def free_extra(self, ctl: FlowController) -> float:
        """The reserve's learned free slots: the mean of every fresh worker's (each learns on its own
        first tokens, about 1 / N of the fleet's)."""
        return (ctl.free_extra + self.extra_sum) / (1 + self.extra_n)


class FleetLimits:
    """One pool's limit rows: this worker's (what its controllers of the pool have queued, added to at every
    change: ``add``) and the others', summed under the segment's lock when a request arrives (``admit``)."""

    __slots__ = ("_mine", "_theirs", "fleet", "mark", "own")

    def __init__(self, mark: PoolMark) -> None:
        self.mark = mark
        self.fleet = mark.fleet
        self.own = self._row(mark.base)
        # priority -> its entry in this worker's row (-1: none left); stable while this process lives (only
        # the supervisor zeroes the row, for the worker's next process)
        self._mine: dict[int, int] = {}
        self._theirs: dict[tuple[int, int], int] = {}  # (row, priority) -> its entry, where last found

    def _row(self, mark_base: int) -> int:
        """The limit row of the worker and pool whose mark starts at ``mark_base``."""
        return self.fleet.limits_at + (mark_base // FIELDS) * LIMIT_FIELDS

    def _claim(self, priority: int) -> int:
        """Band ``priority``'s entry in this worker's row, claimed if new; -1 when none is left (more than
        ``LIMIT_BANDS`` bands with a limit: that band's limit holds per worker)."""
        m, row = self.fleet._m, self.own
        e = -1
        for at in range(row + _LHEAD, row + LIMIT_FIELDS, _LENTRY):
            if m[at + _LUSED] != 1.0:  # (entries fill in order, zeroed only with the whole row)
                m[at + _LPRIO] = float(priority)
                m[at + _LBCOUNT] = m[at + _LBBYTES] = 0.0
                m[at + _LUSED] = 1.0  # (last: a reader meets a claimed entry whole)
                e = at
                break
            if m[at + _LPRIO] == priority:  # (another controller of this worker's claimed it)
                e = at
                break
        self._mine[priority] = e
        if e < 0:  # (once per band: ``_mine`` keeps the -1)
            log.warning(
                "pool %r: priority band %d's maxRequests / maxBytes hold per worker under --workers (the "
                "gateway may queue --workers times them): more than %d bands of the pool have a limit, and "
                "the fleet-wide count keeps %d, the highest bands configured first",
                self.mark.name, priority, LIMIT_BANDS, LIMIT_BANDS,
            )  # fmt: skip
        return e

    def _entry(self, row: int, priority: int) -> int:
        """Band ``priority``'s entry in another worker's ``row``, -1 when it has none."""
        m = self.fleet._m
        e = self._theirs.get((row, priority), -1)
        if e >= 0 and m[e + _LUSED] == 1.0 and m[e + _LPRIO] == priority:
            return e
        for e in range(row + _LHEAD, row + LIMIT_FIELDS, _LENTRY):
            if m[e + _LUSED] != 1.0:
                return -1
            if m[e + _LPRIO] == priority:
                if len(self._theirs) >= 4 * LIMIT_BANDS * self.fleet.workers:
                    self._theirs.clear()
                self._theirs[(row, priority)] = e
                return e
        return -1

    def attach(self, ctl: FlowController) -> None:
        """Count ``ctl``'s queue (what it holds now, every change from now on) in this worker's row, and
        check its arrivals on the fleet's counts (``ctl.fleet_limits``)."""
        if ctl.fleet_limits is not None or self.fleet.closed:
            return
        # The configured limited bands claim their entries first, highest priority first: every worker
        # claims the same ones whatever its arrival order (past ``LIMIT_BANDS``, the same bands hold per
        # worker in every worker: review s21-wk L4), and the ones past them are said in the log now.
        for bc in sorted(ctl.cfg.bands.values(), key=lambda b: -b.priority):
            if (bc.max_requests or bc.max_bytes) and bc.priority not in self._mine:
                self._claim(bc.priority)
        for band in ctl.bands.values():
            self.add(band, band.count, band.bytes, total=False)
        m, b = self.fleet._m, self.own
        m[b + _LCOUNT] += ctl.count
        m[b + _LBYTES] += ctl.bytes
        ctl.fleet_limits = self

    def add(self, band: Band, n: int, size: int, total: bool = True) -> None:
        """``n`` requests of ``size`` bytes in all queued (or, negative, gone) in ``band`` of a controller
        of this worker's (its band entry only when the band has a limit; ``total``: the row's totals too).
        This worker's row only: no lock."""
        fleet = self.fleet
        if fleet.closed:
            return
        m, b = fleet._m, self.own
        if total:
            m[b + _LCOUNT] += n
            m[b + _LBYTES] += size
        if band.max_requests or band.max_bytes:
            e = self._mine.get(band.priority)
            if e is None:
                e = self._claim(band.priority)
            if e >= 0:
                m[e + _LBCOUNT] += n
                m[e + _LBBYTES] += size

    def admit(self, ctl: FlowController, band: Band, size: int, now: float) -> str:
        """``controller.queue_full`` on the fleet's queued counts; "" when admitted, and then counted in this
        worker's row (check and count under one hold of the segment's lock). ``now``: to find the others'
        rows (``PoolMark._find``)."""
        fleet = self.fleet
        if fleet.closed:  # (the worker is stopping: its own counts)
            return queue_full(ctl.cfg, band, size, ctl.count, ctl.bytes, band.count, band.bytes)
        lock = fleet.lock
        locked = lock is not None and lock.acquire()
        try:
            m, b, prio = fleet._m, self.own, band.priority
            count, nbytes = m[b + _LCOUNT], m[b + _LBYTES]
            limited = band.max_requests or band.max_bytes
            bcount = bbytes = 0.0
            mine = -1
            if limited:
                got = self._mine.get(prio)
                mine = self._claim(prio) if got is None else got
                if mine >= 0:
                    bcount, bbytes = m[mine + _LBCOUNT], m[mine + _LBBYTES]
                else:  # (no entry left in this worker's row: its own band only)
                    bcount, bbytes = band.count, band.bytes
            me, find, at = fleet.worker, self.mark._find, fleet.limits_at
            for w in range(fleet.workers):
                if w == me:
                    continue
                mb = find(w, now)
                if mb is None:
                    continue
                b = at + (mb // FIELDS) * LIMIT_FIELDS  # (``_row``)
                count += m[b + _LCOUNT]
                nbytes += m[b + _LBYTES]
                if mine >= 0:
                    e = self._entry(b, prio)
                    if e >= 0:
                        bcount += m[e + _LBCOUNT]
                        bbytes += m[e + _LBBYTES]
            why = queue_full(ctl.cfg, band, size, count, nbytes, bcount, bbytes)
            if not why:
                self.add(band, 1, size)
            return why
        finally:
            if locked:
                lock.release()


def _overdue(ctl: FlowController, req: InferenceRequest, now: float) -> bool:
    """Is ``req`` in ``FlowController.heads``' late tier (past its TTFT deadline in a band ordered
    ``slo-feasible``: one process asks it after every band's heads that can still make theirs)? A head
    ``heads`` gives in a pass's first part is not, whatever its deadline (one it does not defer: where
    the controller ages overdue heads, fc25, an aged one ranks at its band there); the gate is given the
    request, not its queue entry, so the pass's part tells it. Never "overdue" where its own controller
    does not defer it: a worker's gate and its mark then judge its head alike, so two workers' heads
    cannot each wait for the other's (counted higher, a head at worst goes a little early). Asked with
    nothing queued (``arrive``'s fast path: no pass, so nothing deferred), by its deadline, as ``heads``
    judges a fresh head (review s25-rev-wk25 F3: the band, gone when empty, or the last pass's part left
    over, said "not overdue")."""
    band = ctl.bands.get(req.priority)
    if (ctl.cfg.band(req.priority) if band is None else band).ordering != "slo-feasible":
        return False
    if ctl.count and ctl.in_first_part():  # (a pass's first part: the heads ``heads`` does not defer)
        return False
    return ctl.slo_deadline(req, now) < now
