"""The flow controller: where requests wait in the EPP while the pool is saturated.

Pure data structure on an injected ``now`` (no asyncio, no clock of its own), so the front doors'
asyncio dispatcher (``dispatcher.FlowDispatcher``) and the virtual-clock benchmark drive the same code.

- strict priority bands: a band dispatches only when every higher band is empty (or blocked); with
  ``slo-feasible`` ordering, among the heads not yet past their TTFT SLO deadline (a head past it, a
  certain miss, is asked after the lower bands' heads that are not, ``heads``, until its aging time,
  ``aging_time``: halfway from its deadline to its TTL, or in a band above the default one of its own SLO
  past its deadline when that is sooner, fc26); an aged head of a band at or below the default gives
  its slot to a lower band's aged request that expires sooner, the lower band owed that slot back for a
  request that can still make its SLO (``_sooner_aged``, ``_owed_choice``: earliest expiry first among
  certain misses, fc26b);
- inside a band, the fairness policy picks the flow (fairness id) and the ordering policy the request
  (``policies``);
- limits per band and global, in requests and bytes: over a limit, ``enqueue`` raises ``ShedError``
  (429, as the reference's capacity rejection);
- TTL: ``expire(now)`` removes the requests queued longer than the TTL; the caller fails them (503, as
  the reference: "flow-control TTL expiry");
- ``cancel`` removes a request whose client left; removal is O(1) (entries are dropped lazily from
  the heaps), so a burst of cancellations costs nothing until those entries reach a head;
- ``hold`` puts back a request taken for dispatch whose pick said "not now" (a sheddable request
  predicted to miss its SLO): it stays queued (limits, TTL, cancel) but out of its band's selection
  until ``until``, so it does not block the requests behind it.
- with ``sloAdmission``, a sheddable request has a give-up time (``give_up``): its SLO deadline from
  the start when the latency model knows its endpoints (``slo_known``; else none until a prediction
  gives one), earlier once the model says how long it needs at best. ``give_ups(now)`` removes
  the ones past it (the caller sheds them: 429, ``RejectedPredictedMiss``), before their TTL.
- in-flight requests per flow (``started`` / ``ended``, told by the Director from dispatch to finish,
  whether or not the request waited) and queued ones, each weighed as its sequences (``seqs_of``: ``n``
  choices x a batch's prompts, what a server's running slots count): ``over_share`` says whether a
  flow's demand (in flight + queued) is more than its fair share of all of it
  (``flowControl.fairShareHeadroom``).
  The queued part matters at the start of a burst: the pool is already full of other flows' requests,
  so a flood's excess is in the queue, not yet in flight.
- with ``fairShareSLOFirst``, a request the headroom holds back is let through the whole gate once
  its TTFT deadline is near (``SLO_FIRST_MARGIN`` dispatch-to-first-token p90s away) while it can still
  make it, whichever flow's turn it is (``due_head``): the headroom does not cost the head of a flow
  its SLO.
- with ``fairShareTTFTTarget``, ``observe_first_token`` adapts that headroom (``headroom``) to the
  TTFTs of the flows at or under their share: up on a miss of the target, down on a hit, so that the
  share ``aim`` misses it, within ``[0, fairShareHeadroom]``: the target bounds a p90, so ``aim`` is
  under one in ten by the binomial margin a window of ``AIM_WINDOW_S`` of such requests needs
  (``aim_miss``; since session 11, one in ten before).
- with ``fairShareRunningReserve``, a request the headroom holds back is dispatched only while more
  than ``free_reserve`` running slots are free (``reserve_full``): F, the fewest free slots with which
  a request not held back finds none free at most ``reserve_miss`` of the time, its kind taking free
  slots at their measured dispatch rate and every request's finish giving one back at the pool's
  measured finish rate (``free_slots``), plus what the measured misses by waiting add
  (``free_extra``, with ``fairShareTTFTTarget``); with that target the share is what the engine's own
  measured misses (``engine_miss``) leave of the p90's tail. A flow is also over its share when its
  arrivals over the last ``LOAD_WINDOW_S`` are (``rate_over``), so a flood's next burst is held back
  from its first request, not once its demand has piled up. (Until session 10 the reserve was R
  running slots for the others, in use or not, sized by Erlang C on their load: while they used fewer
  than R, the rest stayed idle under a held-back backlog, at every load.)
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from kvgate.boundedkey import KEY_MAX, bounded_key
from kvgate.flowcontrol.config import FlowControlConfig
from kvgate.flowcontrol.metrics import FlowMetrics
from kvgate.flowcontrol.policies import SLO_TTFT_HEADERS, Band, header_ms
from kvgate.scheduling.types import InferenceRequest, ShedError, prompt_tokens

if TYPE_CHECKING:
    from kvgate.flowcontrol.fleet import FleetLimits, FleetShares

LLMD_FAIRNESS_HEADER = "x-llm-d-inference-fairness-id"
DEFAULT_OUTPUT_TOKENS = 128  # expected output when a request sets no max_tokens (service accounting)
# fairShareTTFTTarget: the headroom's step per observed first token, as a share of the most it may take
# (a miss raises it by HEADROOM_GAIN x (1 - aim), a hit lowers it by HEADROOM_GAIN x aim: at equilibrium
# the share ``aim`` of them miss, 7-9 %); 0.05 crosses the whole range in about 22 misses in a row, or
# 250-300 hits.
HEADROOM_GAIN = 0.05
TARGET_QUANTILE = 0.9


def aim_miss(bound: float, sample: float, z: float) -> float:
    """The share of misses to aim at so that the share measured over ``sample`` requests stays at or
    under ``bound`` with the one-sided confidence ``z`` (a normal quantile): the p solving
    p + z * sqrt(p (1 - p) / sample) = bound (the binomial's normal bound, as Wilson's interval)."""
    k = z * z / sample
    b = 2.0 * bound + k
    return (b - math.sqrt(max(0.0, b * b - 4.0 * (1.0 + k) * bound * bound))) / (2.0 * (1.0 + k))


# The target is a bound on a p90 (the goal: p90 <= target), judged on the requests of a window, not a
# setpoint: a controller that settles one request in ten over the target puts a window's p90 on either
# side of it, over it about half the time (session 10: the quiet tenants at 1.54-1.62x calm on some
# seeds, with a 0.05 s target at 1.47x). So both controllers (the headroom, the reserve's miss budget)
# aim at the share of misses (``aim``) that keeps a window of AIM_WINDOW_S at or under 1 - TARGET_QUANTILE
# 19 times in 20 (AIM_Z, one-sided), on the number of requests such a window holds, measured (their
# first tokens, decayed over AIM_WINDOW_S; at least AIM_MIN_SAMPLE): a few requests a second (a small
# fleet) need a wide margin (300 a minute: 7.5 %), thousands little (3,000: 9.1 %).
AIM_WINDOW_S = 60.0
# The decayed count holds 1 - exp(-T / AIM_WINDOW_S) of a full window's requests T seconds after the
# first (63 % after one window): ``window_sample`` divides that out once AIM_FILL_S have passed (before,
# the count as it is: a rate from a few seconds is too rough to extrapolate).
AIM_FILL_S = 5.0
# The extrapolation assumes the rate since the first is the rate: a burst at the start (a restart under
# load: the backlog's first batch) would be multiplied with it (x12 at 5 s; review s12-fc F1). So it is
# capped by what the count can become: the first tokens seen so far plus the rest of the window at the
# rate now, the last AIM_RECENT_S's (first tokens decayed over it, read before the one being counted:
# review s12-late L1). A burst has left it within seconds; it is noisy, but a rate under-read only widens
# the margin. (7f45f42 took the larger of it and the rate since AIM_FILL_S; that average lags, and a
# drained backlog was extrapolated again: review s12-late M1. A longer AIM_RECENT_S keeps a burst in.)
AIM_RECENT_S = 1.0
AIM_Z = 1.645  # (the default of flowControl.fairShareTTFTConfidence)
AIM_MIN_SAMPLE = 50.0


def window_sample(decayed: float, elapsed: float, seen: float = math.inf, recent: float = math.inf) -> float:
    """The requests a window of ``AIM_WINDOW_S`` holds at the rate a count decayed over it measured,
    ``elapsed`` seconds after its first request: the count, less the first's weight (it starts the
    clock, so is no part of the rate: review s12-fc F2), over the part of a full window's weight that
    ``elapsed`` seconds give (1 - exp(-elapsed / window), the exponential average's start-up bias), so a
    minute of five requests a second is 300 from the first seconds on, not the 118 the count holds
    after 30 s (session 12: in the 60 s flood benchmark the count never filled, and the 2 x 16 fleet's
    ``aim`` came out near 6 % where 300 a minute gives 7.5 %). At most ``seen`` (the requests counted
    since the first, it included) plus the rest of the window at ``recent`` a second (AIM_RECENT_S):
    a burst at the start is counted once, not extrapolated. Before ``AIM_FILL_S``: the count as it is
    (the widest margin)."""
    if not (elapsed >= AIM_FILL_S):
        return decayed
    first = math.exp(-elapsed / AIM_WINDOW_S)
    whole = (decayed - first) / -math.expm1(-elapsed / AIM_WINDOW_S)
    return min(whole, seen + recent * max(0.0, AIM_WINDOW_S - elapsed))


ADAPTIVE_OVER_SHARE = 2.0
# slo-feasible: a request is overdue once its deadline is nearer than the p90 of the last this many
# dispatch -> first token times (recomputed every SERVICE_REFRESH samples).
SERVICE_WINDOW = 512
SERVICE_REFRESH = 32
# fairShareSLOFirst: a held-back request goes through the whole gate once its TTFT deadline is within
# this many dispatch -> first token p90s (``service_ttft``): time to pass the gate, then be served.
SLO_FIRST_MARGIN = 5.0
# fairShareRunningReserve: the share of the requests not held back allowed to find every slot of
# their reserve busy: half of what a p90 goal leaves (the rest is for the engine's own variations).
RESERVE_MISS = (1.0 - TARGET_QUANTILE) / 2
# With fairShareTTFTTarget the split is measured: the waits get what the engine's own misses leave of
# the p90's tail (``reserve_miss``), at least RESERVE_MISS_FLOOR; the engine's share is an EWMA with
# this gain over the requests not held back (about the last 50).
RESERVE_MISS_FLOOR = 0.01
ENGINE_MISS_GAIN = 0.02
LOAD_WINDOW_S = 5.0  # their dispatch rate, the finish rate: exponentially decayed counts over this
# fairShareRunningReserve: each flow's arrivals, decayed over LOAD_WINDOW_S; the decayed sums are kept
# scaled to a base time (so flows compare without decaying each), re-based once an id's single arrival
# has decayed below RATE_PRUNE (ln(1 / RATE_PRUNE) windows, ~23 s) or when more than RATE_FLOWS flows are
# kept, or twice as many as the last re-base kept (those with less than RATE_PRUNE arrivals left are
# dropped). At most RATE_FLOWS_MAX ids are kept: the arrivals of ids beyond it go to one shared entry
# (RATE_OVERFLOW; an HTTP header value holds no NUL), by which those ids are judged (as a group).
RATE_PRUNE = 0.01
RATE_REBASE_WINDOWS = math.log(1.0 / RATE_PRUNE)
RATE_FLOWS = 4096
RATE_FLOWS_MAX = 4 * RATE_FLOWS
RATE_OVERFLOW = "\x00overflow"
# An id's key in the arrival table (``rate_key``): itself up to RATE_KEY_MAX characters, else its first 200
# and a hash of the whole (client-supplied ids of any length; review s10-fc-a F3): the tenant buckets' rule.
RATE_KEY_MAX = KEY_MAX
rate_key = bounded_key
RATE_ACTIVE = 0.5
# The flows sending now (at least RATE_ACTIVE arrivals left after decay) are recounted by a scan of the
# table at most once per RATE_FLOWS_EVERY_S, and only after 1 / RATE_RECOUNT_SHARE of the table's size
# in arrivals, or RATE_RECOUNT_MAX_S after the last count (and at each re-base).
RATE_FLOWS_EVERY_S = 0.1
RATE_RECOUNT_SHARE = 64
RATE_RECOUNT_MAX_S = 1.0
# fairShareRunningReserve with fairShareTTFTTarget: the free slots added to the model's (``free_extra``)
# move by this much per first token of a request not held back: up by FREE_GAIN x (1 - m) when it missed
# the target by waiting (its time from dispatch within the target), down by FREE_GAIN x m otherwise, so
# that such misses settle at the share m (``reserve_miss``) the model was sized for.
FREE_GAIN = 0.5

# Outcomes, as the reference's QueueOutcome names them.
DISPATCHED = "Dispatched"
REJECTED_CAPACITY = "RejectedCapacity"
EVICTED_TTL = "EvictedTTL"
EVICTED_CANCELLED = "EvictedContextCancelled"
# kvgate's: the request's own deadline (``kvgate serve``'s requestTimeoutSeconds, ``enqueue``'s ``bound``)
# ended its wait before the TTL (504). The reference has no outcome of its own for it (GIE counts a request
# context's deadline under EvictedContextCancelled, beside the client leaving).
EVICTED_REQUEST_TIMEOUT = "EvictedRequestTimeout"
# The reference's outcome of a request still queued when its flow controller stops (its processor's
# ``evictAll``: ErrFlowControllerNotRunning): here ``kvgate serve``'s drain deadline (``evict_all``).
EVICTED_OTHER = "EvictedOther"
HELD = "HeldPredictedMiss"  # an attempt to leave that its pick turned back (the request stays queued)
REJECTED_PREDICTED_MISS = "RejectedPredictedMiss"  # sloAdmission: shed, its TTFT SLO out of reach
REJECTED_OTHER = "RejectedOther"


@dataclass(slots=True, eq=False)
class QueuedRequest:
    req: InferenceRequest
    flow: str
    priority: int
    size: int  # bytes held (the body's; prompt characters without one): what maxBytes bounds
    cost: float  # tokens it will take (prompt + each sequence's expected output): least-attained-service
    seq: int
    enqueued_at: float
    deadline: float  # TTL expiry, or the request's own deadline when that comes first (``bounded``)
    slo_deadline: float  # arrival + TTFT SLO (slo-deadline ordering)
    # slo-feasible across bands: past its SLO deadline it gives way to the requests that are not (of its band
    # and the lower ones) until this time, then it ranks at its band's priority again (``aging_time``)
    ages_at: float = math.inf
    handle: Any = None  # the waiter (an asyncio future, a simulator record)
    done: bool = False
    held_until: float | None = None  # held out of its band's selection until then (``hold``)
    holds: int = 0  # times turned back by its pick (``hold``): the dispatcher backs off on it
    in_expiry: bool = True  # has an entry in the expiry heap (so ``hold`` adds none twice)
    give_up_at: float = float("inf")  # sloAdmission: shed when still queued then (``give_up``)
    outcome: str = ""
    explain: bool = False
    bounded: bool = False  # ``deadline`` is the request's own (``enqueue``'s ``bound``), not the TTL
    parked: tuple[str, frozenset[str], int] | None = None  # waiting aside for its full home (``park``)
    full_since: float | None = None  # its home found full since then, never with room (``unpin_at``)
    # the home it was woken from (``wake``) with heads still parked there, until it goes or is parked again:
    # leaving otherwise (cancelled, expired, unpinned), it has that home looked at again (review s21-fc F1)
    woken_from: tuple[str, frozenset[str], int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    seqs: int = 1  # the sequences a server runs for it (``seqs_of``): its weight in the fair-share counts


def aging_time(deadline: float, expiry: float, slo: float = math.inf, priority: int = 0) -> float:
    """When a request past its TTFT ``deadline`` stops giving way to requests that can still make theirs
    (``slo-feasible`` across flows and bands; review s24-rev-fix24c F2): halfway from its deadline to its
    ``expiry`` (TTL, or its own deadline), then it ranks at its band's priority again, so that giving way
    does not turn its miss into a loss (a 503 at the TTL under sustained lower-band load). Halfway, as a
    soft pin's ``unpin_at``: a wait seen to last t lasts another t or more about half the time, so past
    the midpoint more waiting more likely than not ends at the TTL. A deadline at or after the expiry:
    never deferred (it cannot miss while queued).

    A band above the default (``priority`` > 0) gives way at most one of its own ``slo`` (the TTFT SLO)
    past its deadline, when that comes first (review s25-rev-fc25 F4: a critical request 10 ms late waited
    14.5 s behind batch). Its priority says its requests go before default traffic; giving way buys lower
    bands' hits with its lateness, and its own SLO is the scale of lateness it asked not to exceed. The
    default band and the sheddable ones (<= 0) keep halfway: they are where a flood lands, and a one-SLO
    bound there hands a flood's certain misses strict priority over the band below (docs/flowcontrol.md,
    Session 25: batch SLO 0.16-0.84, 91-122 batch 503s)."""
    half = (expiry - deadline) / 2.0
    if priority > 0 and slo < half:
        return deadline + slo
    return deadline + half


def seqs_of(req: InferenceRequest) -> int:
    """The sequences a server runs for ``req`` (``n`` choices x the prompts of a batch; at least 1): what
    flow control weighs it by where the server's capacity is meant (running slots, fair shares, service).
    The queue limits (``maxRequests``, ``maxBytes``) and the queue metrics count it once, as upstream."""
    s = req.sequences
    return s if s > 1 else 1


FREE_SLOTS_LOOP = 64  # free_slots: answers up to this come from the loop itself (review s11-fc L1)


def free_slots(take: float, give: float, miss: float, cap: int) -> int:
    """The fewest free slots F with which a request that takes one (arriving at ``take`` per second)
    finds none free at most ``miss`` of the time, while a backlog that may take any slot beyond F
    waits: the free slots go down by one at each such arrival and up by one at each finish (``give``
    per second) below F, so P(none free) = 1 / sum_{k <= F} (give / take)^k (a birth-death chain; the
    finishes need not be Poisson for the count to hold on average, bunched ones make it optimistic);
    at most ``cap``. No arrivals: 0; arrivals but no finish measured yet: ``cap``.

    In closed form (O(1): it is asked on every gate check of a held-back request, and a loop over F ran
    to ``cap`` in overload; review s10-fc L2): with q = give / take the sum is (q^(F+1) - 1) / (q - 1),
    so F is the least integer with F + 1 >= log(1 + (q - 1) / miss) / log q (q > 1), or with
    q^(F+1) <= 1 - (1 - q) / miss (q < 1: none when (1 - q) / miss >= 1, the whole sum short of
    1 / miss: ``cap``), or F + 1 >= 1 / miss (q = 1). The same answers as the loop except on float
    boundaries (the sum equal to 1 / miss to the last bit), where the log / ceil can be one off: so an
    answer of at most ``FREE_SLOTS_LOOP`` is checked by running the loop itself, capped at
    ``FREE_SLOTS_LOOP + 1`` steps (review s11-fc L1), and only larger ones can differ (by one, or where
    the loop's float sum is the one that is wrong)."""
    if not (take > 0):  # (NaN too)
        return 0
    if not (give > 0) or not math.isfinite(take):
        return cap
    if not (miss < 1.0) or cap <= 0:  # (a NaN miss: 0, failing away from the reserve)
        return 0
    if miss <= 0.0:
        return cap
    q, need = give / take, 1.0 / miss  # F: the least with sum_{k <= F} q^k >= need
    if not math.isfinite(q):
        return 1
    lq = math.log(q) if q > 0.0 else -math.inf
    if q < 1.0:
        x = (1.0 - q) * need
        if not (x < 1.0):
            # The sum's limit 1 / (1 - q) is not above 1 / miss: no F in exact arithmetic (the docstring's
            # definition; where the two are equal to within rounding a float loop can answer either way,
            # as on the other side of that limit: review s20-fixes-a L4)
            return cap
        v = math.log1p(-x) / lq - 1.0 if lq else need - 1.0
    elif lq:
        t = (q - 1.0) * need
        v = (math.log1p(t) if math.isfinite(t) else math.log(q - 1.0) + math.log(need)) / lq - 1.0
    else:
        v = need - 1.0
    f = cap if not (v < cap) else max(0, math.ceil(v))
    if f > FREE_SLOTS_LOOP:
        return f
    # Small answers: the loop itself, at most FREE_SLOTS_LOOP + 1 steps (the log / ceil rounds the wrong
    # way where the sum is 1 / miss to the last bit, one slot off; review s11-fc L1).
    bound, g, total, term = min(cap, FREE_SLOTS_LOOP + 1), 0, 1.0, 1.0
    while g < bound and total * miss < 1.0:
        g += 1
        term *= q
        total += term
    return g if g <= FREE_SLOTS_LOOP or g == cap else f


# ``fleet.PoolMark.publish`` (the mark under ``--workers``) passes over at most this many distinct subsets
# (model, subset, band) and heads while it looks for what a pass would send. A dispatch pass has no such bound
# since fc20: a head whose home is full waits aside (``park``) until that home has room, and a pass never
# meets it (before, more than 1,024 such heads or 64 full homes ended the pass: review s19-fixes-b L1).
PASS_OVER_MAX = 64
PASS_OVER_MAX_HEADS = 1024
# Parked homes (``park``) a dispatch pass looks at again by itself, at most, once per ``PARK_SWEEP_EVERY``
# seconds (the least recently looked first): what the dispatcher is not told of (a home's scraped load
# falling, another worker's request there finishing). A home where one of this process's requests finishes
# or produces its first token is looked at in the next pass (``freed``).
PARK_SWEEP = 64
PARK_SWEEP_EVERY = 0.02
# The fairness id of the request a dispatch pass asks "has this home room?" with (a pinned head's request):
# a flow no fair-share rule holds back, so the answer is the home's, not the pinned head's own flow's
# (review s19-fixes-b H1: a held-back flow read its home as full). Not a header value a client can send (NUL).
ROOM_FLOW = "\x00kvgate-room"


def flow_of(req: InferenceRequest) -> str:
    """The fairness id: llm-d's header, else the GIE header (already in the request)."""
    return flow_key(req.fairness_id, req.headers.get(LLMD_FAIRNESS_HEADER))


def flow_key(fairness_id: str | None, llmd_id: str | None) -> str:
    """``flow_of`` from the two headers' values (llm-d's unless absent, empty or "default-flow", else
    GIE's, its deprecated alias: llm-d-router prefers its control headers, as for the objective; rev-c36
    F3): also the EPP parse lane's client, before there is a request (review s24-rev-gw24 F5)."""
    if llmd_id and llmd_id != "default-flow":
        return llmd_id
    return fairness_id or llmd_id or "default-flow"


def queue_full(
    cfg: FlowControlConfig, band: Band, size: int, count: float, nbytes: float, band_count: float,
    band_bytes: float,
) -> str:  # fmt: skip
    """Why a request of ``size`` bytes cannot be queued in ``band`` with ``count`` requests and ``nbytes``
    bytes queued in all (``band_count``, ``band_bytes`` in the band): a band's or the global limit; ""
    when it can."""
    if band.max_requests and band_count + 1 > band.max_requests:
        return f"priority band {band.priority} is full ({band.max_requests} requests)"
    if band.max_bytes and band_bytes + size > band.max_bytes:
        return f"priority band {band.priority} is full ({band.max_bytes} bytes)"
    if cfg.max_requests and count + 1 > cfg.max_requests:
        return f"flow control queue is full ({cfg.max_requests} requests)"
    if cfg.max_bytes and nbytes + size > cfg.max_bytes:
        return f"flow control queue is full ({cfg.max_bytes} bytes)"
    return ""


HomeKey = tuple[str, frozenset[str], int]  # (model, subset, band)


def unpin_at(since: float, deadline: float) -> float:
    """When a soft pin (a Responses follow-up queued for its home) is given up: once its home has been
    without room (full, or not ready) for as long as the request has left to wait, at the midpoint of
    [``since``, ``deadline``]. A spell seen to last t lasts another t or more about half the time (no
    better guess without a model of the home: the delta-t argument); past the midpoint the home is more
    likely than not to stay full until the deadline, and the request would fail there (503, 504). Given
    up, it is picked as any request, as one arriving after its home left the pool (the server that answers
    may not hold its previous response: vLLM's 404, an answer now rather than a 503 at its deadline). A
    home found with room meanwhile starts a new spell."""
    return since + (deadline - since) / 2.0


# A parked head as its home keeps it per flow: (its ordering key, seq, the request, overdue when parked).
Parked = tuple[float, int, QueuedRequest, bool]


class Home:
    """The requests of one band waiting aside for one full subset (``FlowController.park``), in the order
    they were parked, each with its flow-queue entry (put back as it was: the same place); and the indexes a
    freed slot reads to wake the one head its band would choose first (``FlowController.wake``), not every
    head (fc21): per flow, a heap of its heads in the flow's order; all of them in one heap by ordering key
    (global-strict: the band's choice is the least key); the flows by their round-robin turn (a lazy heap:
    a flow's turn only moves back, so an entry found older than its flow's turn is pushed again);
    slo-feasible, per flow, the heads found overdue apart (``late``, as ``FlowQueue.late``: each moved once,
    not a scan of the flow per wake, review s21-fc F3). Entries of requests that left (woken, cancelled,
    unpinned) are dropped lazily, everything rebuilt once they outnumber the live ones (bounded memory)."""

    __slots__ = ("all", "dead", "flows", "items", "late", "probe", "stale", "turns")

    def __init__(self, probe: InferenceRequest) -> None:
        self.items: dict[int, tuple[QueuedRequest, tuple[float, int, QueuedRequest], bool]] = {}
        self.flows: dict[str, list[Parked]] = {}
        self.late: dict[str, list[Parked]] = {}
        self.dead: dict[str, list[Parked]] = {}  # (of ``late``, those past their deadline: after the rest)
        self.all: list[Parked] = []
        self.turns: list[tuple[int, str]] = []
        self.stale = 0
        self.probe = probe  # asks the gate "has this home room?" (``ROOM_FLOW``: no fair-share rule)

    def add(
        self, item: QueuedRequest, entry: tuple[float, int, QueuedRequest], late: bool, turn: int
    ) -> None:
        self.items[item.seq] = (item, entry, late)
        e = (entry[0], item.seq, item, late)
        h = self.flows.get(item.flow)
        if h is None:
            h = self.flows[item.flow] = []
            heapq.heappush(self.turns, (turn, item.flow))
        heapq.heappush(h, e)
        heapq.heappush(self.all, e)

    def _live(self, e: Parked) -> bool:
        got = self.items.get(e[1])
        return got is not None and got[0] is e[2]

    def left(self) -> None:
        """A request left ``items``: its entries are dropped lazily; past as many as the live ones (and 64),
        the indexes are rebuilt from ``items`` (the turns at 0: each is corrected at its first look)."""
        self.stale += 1
        if self.stale > len(self.items) + 64:
            self.stale = 0
            self.flows, self.late, self.dead, self.all, self.turns = {}, {}, {}, [], []
            for item, entry, late in self.items.values():
                e = (entry[0], item.seq, item, late)
                if item.flow not in self.flows:
                    self.flows[item.flow] = []
                    self.turns.append((0, item.flow))
                self.flows[item.flow].append(e)
                self.all.append(e)
            for h in self.flows.values():
                heapq.heapify(h)
            heapq.heapify(self.all)
            heapq.heapify(self.turns)

    def _clean(self, h: list[Parked]) -> list[Parked]:
        live = self._live
        while h and not live(h[0]):
            heapq.heappop(h)
        return h

    def _flow_top(self, flow: str) -> list[Parked] | None:
        """``flow``'s heap (its top live, or empty with live heads in ``late``); None (and the flow
        forgotten) when none of it is left."""
        h = self.flows.get(flow)
        if h is None:
            return None
        if self._clean(h) or self._clean(self.late.get(flow, h)) or self._clean(self.dead.get(flow, h)):
            return h
        del self.flows[flow]
        self.late.pop(flow, None)
        self.dead.pop(flow, None)
        return None

    def _best_in(
        self, flow: str, h: list[Parked], reach: float | None, feasible: bool, due: float | None = None
    ) -> Parked:
        """The first of ``flow``'s heads here (``h``: its heap, from ``_flow_top``) in its order
        (``slo-feasible``: keyed before ``reach``, or parked overdue, after the rest: moved to ``late``; of
        those, keyed before ``due``, past their deadline, after the rest: moved to ``dead``, keyed by their
        aging time, and from it after ``h`` only, as ``FlowQueue._top``)."""
        live = self._live
        if feasible and reach is not None:
            while h and (h[0][3] or h[0][0] < reach or not live(h[0])):
                e = heapq.heappop(h)
                if live(e):
                    heapq.heappush(self.late.setdefault(flow, []), e)
        late = self.late.get(flow)
        if late is not None:
            while late and (not live(late[0]) or (feasible and due is not None and late[0][0] < due)):
                e = heapq.heappop(late)
                if live(e):
                    heapq.heappush(self.dead.setdefault(flow, []), (e[2].ages_at, e[1], e[2], e[3]))
        if h:
            return h[0]  # (one that can still make its SLO first: review s25-rev-fixfc25 F1)
        dead = self.dead.get(flow)
        if dead is not None and self._clean(dead) and due is not None and dead[0][0] <= due:
            return dead[0]
        if late:
            return late[0]
        return self._clean(self.dead[flow])[0]

    def bests(
        self, reach: float | None, feasible: bool, due: float | None = None
    ) -> list[tuple[str, Parked]]:
        """Each flow's first head here in its flow's order."""
        out: list[tuple[str, Parked]] = []
        for flow in list(self.flows):
            h = self._flow_top(flow)
            if h is not None:
                out.append((flow, self._best_in(flow, h, reach, feasible, due)))
        return out

    def first_key(self) -> Parked | None:
        """The head with the least ordering key (global-strict's choice, an ordering with no overdue tier)."""
        a, live = self.all, self._live
        while a and not live(a[0]):
            heapq.heappop(a)
        return a[0] if a else None

    def first_turn(
        self, turn: Callable[[str], int | None], reach: float | None, feasible: bool
    ) -> Parked | None:
        """Round-robin's choice: the first head of the flow whose turn comes first (``turn``: a flow's turn
        now, None when it has left its band)."""
        t = self.turns
        while t:
            stamp, flow = t[0]
            h = self._flow_top(flow)
            if h is None:
                heapq.heappop(t)
                continue
            now_turn = turn(flow)
            if now_turn is None:
                return None  # (not expected: a parked head's flow is in its band)
            if now_turn != stamp:
                heapq.heapreplace(t, (now_turn, flow))
                continue
            return self._best_in(flow, h, reach, feasible)
        return None

    def take(self, e: Parked) -> tuple[QueuedRequest, tuple[float, int, QueuedRequest], bool]:
        """Head ``e`` out of the home: its item, entry and lateness (its index entries dropped lazily)."""
        got = self.items.pop(e[1])
        self.left()
        return got


class FlowController:
    def __init__(self, cfg: FlowControlConfig, metrics: FlowMetrics | None = None) -> None:
        self.cfg = cfg
        self.metrics = metrics or FlowMetrics(None)
        self.bands: dict[int, Band] = {}
        self._order: list[int] = []  # band priorities, highest first
        self._expiry: list[tuple[float, int, QueuedRequest]] = []
        self._held: list[QueuedRequest] = []
        # Heads passed over for one look (``pass_over``), with their entries, put back at its end.
        self._passed: list[tuple[QueuedRequest, tuple[float, int, QueuedRequest], bool]] = []
        self._pass_homes: frozenset[str] = frozenset()  # their subsets
        # Heads waiting aside for their full home (``park``), by home; insertion order: the least recently
        # looked at first (``homes_to_look``). ``_parked_at``: address -> the parked homes holding it.
        self._parked: dict[HomeKey, Home] = {}
        self._parked_at: dict[str, set[HomeKey]] = {}
        # address -> band -> parked homes of that band holding it, and the highest such band (``_top_at``):
        # ``waited_for`` asks it per candidate of every late pick, O(1) (review s20-fixes-b L1: a walk
        # over the homes at the address before).
        self._bands_at: dict[str, dict[int, int]] = {}
        self._top_at: dict[str, int] = {}
        self._woken: set[HomeKey] = set()  # homes told of a freed slot (``freed``), looked at next pass
        # Heads back in line from a home found with room, in this pass: their spell without room ends only
        # if the pass does not park them again (``end_pass``; review s20-fc M2).
        self._back: list[QueuedRequest] = []
        self._swept_at = -math.inf
        self.sweep_every = PARK_SWEEP_EVERY  # (the dispatcher's recheck interval)
        # soft pins' give-up times (``park``): (time, seq, item, the spell's start it was computed from)
        self._unpins: list[tuple[float, int, QueuedRequest, float]] = []
        # ``heads``: the current pass's deferred bands and its "ask them now" flag (``wait_late``), or None
        self._late: list[tuple[Band, QueuedRequest | None, Iterator[QueuedRequest] | None]] | None = None
        self._jump: list[bool] | None = None
        self._aside: QueuedRequest | None = None  # the last head taken out of its band's selection
        self._asides = 0
        # ``heads``: a lower band's aged head given in the slot of an aged head of a band at or below the
        # default that expires later (``_sooner_aged``), and that slot's band; ``_retry``: its gate said no
        # (``wait_late``), the slot's own head is given next
        self._swap: QueuedRequest | None = None
        self._swap_prio = 0
        self._retry = False
        # band -> slots its requests past their aging time took from aged heads of higher bands and not yet
        # given back to its requests that can still make their SLO (``_owed_choice``)
        self._owed: dict[int, int] = {}
        self._given: QueuedRequest | None = None  # the head ``heads`` gave last (``aged_expiry``)
        self._give_ups: list[tuple[float, int, QueuedRequest]] = []  # sloAdmission (``give_up``)
        # sloAdmission: does the latency model know the request's endpoints well enough to judge it
        # (the Director's; None: taken as yes)? Only then is a queued one given up at its SLO deadline.
        self.slo_known: Callable[[InferenceRequest], bool] | None = None
        self._hold_seq = 0
        self._seq = 0
        self.count = 0
        self.bytes = 0
        # Sequences, not requests (``seqs_of``: a server's running slots count them), from here to
        # ``_places``: flow -> sequences dispatched and not finished (> 0 only), and their sum
        self.inflight: dict[str, int] = {}
        self.inflight_total = 0
        self.queued: dict[str, int] = {}  # flow -> sequences queued (held ones included; > 0 only)
        self.queued_total = 0  # their sum (``count`` is the requests queued: what maxRequests bounds)
        # flow -> the places it is active in: in flight (1), and each band it has a request queued in.
        # Its length is the active flows' count, kept at the 0 <-> 1 transitions (O(1) ``over_share``).
        self._places: dict[str, int] = {}
        # The fair-share headroom in force: fixed, or adapted to fairShareTTFTTarget from 0.
        self.headroom = 0.0 if cfg.fair_share_ttft_target else cfg.fair_share_headroom
        # Over its share = more in flight than this many times the mean. Adapting to a TTFT target
        # that plain load (not one flow's excess) makes unreachable would otherwise hold back whichever
        # of several like flows is momentarily above the mean; at twice the mean only a real excess is.
        self._over_factor = ADAPTIVE_OVER_SHARE if cfg.fair_share_ttft_target else 1.0
        # slo-feasible: how long a request takes from dispatch to its first token (p90, learned from
        # what the Director observes); one whose deadline is nearer than that would miss it if sent now.
        self._feasible = cfg.ordering == "slo-feasible" or any(
            b.ordering == "slo-feasible" for b in cfg.bands.values()
        )
        self._feasible = self._feasible or cfg.fair_share_slo_first  # (the same margin)
        self.service_ttft = 0.0
        self._service: deque[float] = deque(maxlen=SERVICE_WINDOW)
        self._service_n = 0
        # fairShareRunningReserve: the dispatches of the requests not held back (they take free slots)
        # and every request's finishes (each gives one back), decayed over LOAD_WINDOW_S
        self._rate = 0.0
        self._rate_at: float | None = None
        self._finished = 0.0
        self._finished_at: float | None = None
        self._reserve_cache: tuple[tuple[float, int] | None, int] = (None, 0)
        # free slots added to the model's, learned from the misses by waiting (fairShareTTFTTarget), at
        # most the largest cap the gate has asked with (no wind-up past what can be kept free)
        self.free_extra = 0.0
        self._extra_cap = 0
        # flow -> its arrivals decayed over LOAD_WINDOW_S, scaled by exp((t - _arrived_base) / window)
        self._arrived: dict[str, float] = {}
        self._arrived_total = 0.0
        self._arrived_base: float | None = None
        self._arrived_cap = RATE_FLOWS  # re-based when more flows than this are kept
        self._rate_flows = 0  # flows with at least RATE_ACTIVE decayed arrivals (recounted periodically)
        self._rate_flows_at = -math.inf
        self._since_count = 0  # arrivals since the last count of the flows sending
        # fairShareTTFTTarget with the reserve: the share of the requests not held back whose time from
        # dispatch to first token alone misses the target (EWMA; starts at half of ``aim``)
        self._aim_z = cfg.fair_share_ttft_confidence
        self.aim = aim_miss(1.0 - TARGET_QUANTILE, AIM_MIN_SAMPLE, self._aim_z)
        self.engine_miss = self.aim / 2
        # fairShareTTFTTarget: the first tokens it steers on, decayed over AIM_WINDOW_S (``aim``'s sample)
        self._steer_n = 0.0
        self._steer_at: float | None = None
        self._steer_since: float | None = None  # the first of them (``window_sample``)
        self._steer_seen = 0  # since _steer_since, undecayed
        self._steer_recent = 0.0  # decayed over AIM_RECENT_S
        # ``kvgate serve --workers N``: the other workers' counts for this pool (``fleet.FleetShares``),
        # so the held-back test and the reserve decide on the fleet's (set by the in-flight sync)
        self.fleet: FleetShares | None = None
        # ``kvgate serve --workers N``: the queue limits on the fleet's queued counts (``fleet.FleetLimits``:
        # every change of ``count`` / ``bytes`` is added to this worker's row there)
        self.fleet_limits: FleetLimits | None = None

    def __len__(self) -> int:
        return self.count

    def band(self, priority: int) -> Band:
        b = self.bands.get(priority)
        if b is None:
            bc = self.cfg.band(priority)
            b = self.bands[priority] = Band(priority, bc.fairness, bc.ordering, bc.max_requests, bc.max_bytes)
            self._order = sorted(self.bands, reverse=True)
        return b

    def enqueue(
        self,
        req: InferenceRequest,
        now: float,
        *,
        handle: Any = None,
        explain: bool = False,
        bound: float | None = None,
        started: float | None = None,
        timer: Callable[[], float] | None = None,
    ) -> QueuedRequest:
        """Queue ``req`` or raise ``ShedError`` (a band or the global limit is full). ``bound``: the
        request's own deadline (the gateway's ``requestTimeoutSeconds``); ``expire`` removes it then if
        that comes before its TTL (``QueuedRequest.bounded``): no timer of its own per request.
        ``started`` (``timer``'s reading when its admission began) and ``timer``: a refusal is observed on
        the enqueue-duration histogram (the caller observes a queued one)."""
        # The body's bytes, as GIE's ``ByteSize()``: what the queue holds (an image's base64 too); a request
        # without a body (a simulator's) its prompt's characters.
        size = (
            req.body_bytes
            or len(req.prompt_text)
            or 4 * prompt_tokens(req.prompt_tokens, req.prompt_text, req.token_ids)
        )
        band = self.band(req.priority)
        flow = flow_of(req)
        cfg = self.cfg
        limits = self.fleet_limits
        if limits is None:
            why = queue_full(cfg, band, size, self.count, self.bytes, band.count, band.bytes)
        else:  # (``--workers N``: on the fleet's counts, and counted there when admitted)
            why = limits.admit(self, band, size, now)
        if why:
            took = timer() - started if timer is not None and started is not None else None
            self.metrics.outcome(req.priority, flow, REJECTED_CAPACITY, 0.0, req, took)
            raise ShedError(why)
        # Admitted: with ``fleet_limits`` its place is counted in this worker's row. Until ``count`` has it
        # (the ``try``'s last lines), a raise gives that place back, or the row would stay one above
        # ``count`` for the process's life (review s21-wk L3). The callbacks (the latency model's, the
        # Director's ``slo_known``) run before anything is queued, so a raise leaves no half-queued item.
        try:
            slo_deadline = self.slo_deadline(req, now)  # once: ``due_head`` reads it on every blocked pass
            ptoks = prompt_tokens(req.prompt_tokens, req.prompt_text, req.token_ids)
            expiry = now + cfg.ttl
            if bound is not None and bound < expiry:  # (its own deadline: ``EvictedRequestTimeout`` then)
                expiry, bounded = bound, True
            else:
                bounded = False
            gives_up = cfg.slo_admission and req.sheddable and (self.slo_known is None or self.slo_known(req))
            self._seq += 1
            seqs = seqs_of(req)  # (a prompt is computed once; each sequence decodes its own output)
            out = req.max_tokens if req.max_tokens is not None else DEFAULT_OUTPUT_TOKENS  # (0: none)
            ages = aging_time(slo_deadline, expiry, slo_deadline - (req.arrival_time or now), req.priority)
            item = QueuedRequest(
                req, flow, req.priority, size, float(ptoks + seqs * out),
                self._seq, now, expiry, slo_deadline, ages, handle, explain=explain, bounded=bounded,
                seqs=seqs,
            )  # fmt: skip
            if band.push(item):
                self._enter(flow)
            heapq.heappush(self._expiry, (item.deadline, item.seq, item))
            if gives_up:
                self.give_up(item, item.slo_deadline)  # past its SLO deadline it cannot make it at all
            self.count += 1
            self.bytes += size
        except BaseException:
            if limits is not None:
                limits.add(band, -1, -size)
            raise
        self._queue_count(flow, item.seqs)
        self.metrics.queued(req.priority, flow, +1, req, size)
        return item

    def head(self, now: float | None = None) -> QueuedRequest | None:
        """The next request to dispatch: the highest non-empty band's fairness choice (``now``: as
        for ``heads``)."""
        return next(self.heads(now), None)

    def heads(self, now: float | None = None) -> Iterator[QueuedRequest]:
        """Each non-empty band's choice, highest band first; a choice the caller passes over
        (``pass_over``) before asking for the next is followed by its band's next choice. With
        ``fairShareHeadroom``, a band's flows at or under their fair share (in flight + queued) are
        chosen from first. ``now``: for
        ``slo-feasible`` ordering (which requests are past their deadline). A parked head (``park``) is in
        no band's selection: none is met."""
        under = self._under_share() if self.cfg.fair_share_headroom else None
        # (slo-feasible: a deadline before this cannot be met by a request sent now, by the p90: inside a
        # flow such a request goes after its flow's others)
        reach = None if now is None else now + self.service_ttft
        # slo-feasible across flows and bands: a head already past its SLO deadline (a certain miss:
        # whatever it is sent to, its first token comes after the deadline) goes after every request of its
        # band and of the lower bands that is not: sent first, it would only turn their possible hits into
        # misses. A band chooses among its flows whose head is not past it first (``Band.select``), so
        # its choice is past it only when all its heads are: the band is then asked after the lower bands'
        # choices, highest band first, and chooses again from there. (fc24 deferred a band whenever its
        # fairness choice was overdue by the p90, starving its other flows: review s24-rev-fc24 F1, F3.)
        # A flow's head is past its deadline only when all its requests are (``FlowQueue.dead``), and from
        # its aging time (``aging_time``: halfway to its TTL; a band above the default one SLO past its
        # deadline when sooner, fc26) it ranks as one that is not (fc25: review s24-rev-fix24c F1, F2). An
        # aged choice of a band at or below the default gives its slot to a lower band's aged request that
        # expires sooner, or to a lower band owed a slot (fc26b: ``_sooner_aged``).
        late: list[tuple[Band, QueuedRequest | None, Iterator[QueuedRequest] | None]] = []
        jump = [False]
        self._late, self._jump = late, jump
        for prio in self._order:
            band = self.bands[prio]
            due = now if band.ordering == "slo-feasible" else None
            d = band.dead_at
            if due is not None and d is not None and d[0] == band.stamp and d[1] <= due < d[3]:
                late.append((band, None, None))  # (all its heads past their deadline, as last found)
                continue
            choices = band.choices(under, reach, due)
            first = True
            for item in choices:
                if due is not None and item.slo_deadline < due < item.ages_at:
                    if first:  # (its first choice: every head of the band is past its deadline, not aged)
                        q = None if under else band.flows.get(item.flow)
                        band.dead_at = (band.stamp, due, q, band.ages)
                    late.append((band, item, choices))
                    break
                first = False
                n = self._asides
                self._late, self._jump = late, jump  # (this pass's: another look may have run meanwhile)
                alt, repays = None, False
                if due is not None and prio <= 0 and item.slo_deadline < due and item.ages_at <= due:
                    alt = self._sooner_aged(prio, item, reach, due)
                    if alt is None and self._owed:
                        alt = self._owed_choice(prio, under, reach, due)
                        repays = alt is not None
                if alt is not None:
                    # (its slot: taken, the pass starts again; passed over or parked, the band chooses
                    # again; its gate said no, ``wait_late``: the slot's own head is given)
                    self._swap, self._swap_prio, self._retry = alt, prio, False
                    self._given = alt
                    try:
                        yield alt
                    finally:
                        retry, self._swap, self._retry = self._retry, None, False
                        if alt.done and alt.outcome == DISPATCHED:
                            self._owe(alt.priority, -1 if repays else 1)
                    if not retry:
                        if jump[0] or self._asides == n or self._aside is not alt:
                            break
                        continue
                    n = self._asides
                    self._late, self._jump = late, jump
                self._given = item
                yield item
                if jump[0] or self._asides == n or self._aside is not item:
                    break  # (not passed over nor parked: the next band; else its band chooses again)
            if jump[0]:
                break
        self._late = self._jump = None  # (``wait_late``: the deferred heads are being asked)
        for band, got, rest in late:
            if rest is None:
                # (its choice as last found, when nothing has changed it; passed over, the band chooses again)
                d = band.dead_at
                q = None if d is None or d[0] != band.stamp else d[2]
                got = None if q is None else q.head(reach, now)
                rest = band.choices(under, reach, now)
            for item in rest if got is None else itertools.chain((got,), rest):
                n = self._asides
                self._late = self._jump = None
                self._given = item
                yield item
                if self._asides == n or self._aside is not item:
                    break

    def wait_late(self) -> bool:
        """The head ``heads`` just gave cannot go now (its pool, its flow's share, its home): True when
        heads past their SLO deadline were deferred in this pass (``heads``), and they are asked next (their
        own pools may have room; review s24-rev-fc24 F2: the pass ended there and they were never tried);
        False: the pass ends there, as before."""
        if self._swap is not None and not self._retry:
            self._retry = True  # (a swapped-in head: the slot's own head is asked next, ``heads``)
            return True
        jump, late = self._jump, self._late
        if jump is None or not late:
            return False
        jump[0] = True
        return True

    def _sooner_aged(
        self, prio: int, item: QueuedRequest, reach: float | None, now: float
    ) -> QueuedRequest | None:
        """``item`` is band ``prio``'s choice (``prio`` <= 0), past its aging time: the request of a lower
        ``slo-feasible`` band past its own aging time that expires (TTL, or its own deadline) first, when
        that is before ``item`` does; else None. One per flow is looked at, the flow's first by aging
        time (``FlowQueue.dead``'s top), whatever its flow's head: it takes ``item``'s slot, not one of its
        own flow's fresh requests (review s25-rev-fixfc25 F1 stands). Both are certain misses, each past the
        point from which more waiting more likely than not ends at its TTL (``aging_time``); between
        certain misses the order that loses the fewest to the TTL is earliest expiry first, and the band
        at or below the default ages only to avoid that loss (a band above it ages by its own SLO, a
        bound on lateness: strict priority there; fc26b). O(flows of the lower bands that have a request
        past its aging time; ``Band.aged_by``, O(1) amortized, skips the others: review s26-rev-fc26b F1),
        only on a pass whose band choice is such an aged head."""
        best = item
        for p in self._order:
            if p >= prio:
                continue
            band = self.bands[p]
            if band.ordering != "slo-feasible" or not band.count or not band.aged_by(now):
                continue  # (none of its requests past its aging time: no flow of it has one to give)
            for q in band.flows.values():
                q._top(reach, now)  # (moves its overdue entries where they belong, as a look does)
                d = q.dead
                if d and d[0][0] <= now and d[0][2].deadline < best.deadline:
                    best = d[0][2]
        return None if best is item else best

    def _owed_choice(
        self, prio: int, under: Callable[[str], bool] | None, reach: float | None, now: float
    ) -> QueuedRequest | None:
        """``item`` is band ``prio``'s choice, past its aging time, and no lower aged request expires
        sooner (``_sooner_aged``): the choice of a lower band owed slots (its aged requests took that many
        of the higher aged heads', ``_owe``) when it can still make its SLO; else None. The slot is given
        back: the two requests exchange places, as in an earliest-deadline exchange, so the certain misses
        sent ahead of the lower band's requests that can still make their SLO are as many as without the
        swap, and only which certain miss goes changes (without it, tuning seed 0 at 30 s: batch SLO 0.588
        -> 0.534 at 0 shed; docs/flowcontrol.md, Session 26b)."""
        for p in self._order:
            if p >= prio or not self._owed.get(p):
                continue
            band = self.bands[p]
            if not band.count:
                self._owed.pop(p, None)  # (nothing of it waits: the debt has no one to go to)
                continue
            got = band.select(under, reach, now)
            if got is not None and got.slo_deadline >= now:
                return got
        return None

    def _owe(self, prio: int, n: int) -> None:
        """Band ``prio`` is owed ``n`` more slots (``_owed_choice``), at most its queued requests."""
        band = self.bands.get(prio)
        left = min(self._owed.get(prio, 0) + n, 0 if band is None else band.count)
        if left > 0:
            self._owed[prio] = left
        else:
            self._owed.pop(prio, None)

    def slot_priority(self, item: QueuedRequest) -> int:
        """The band whose place in ``heads``' order ``item`` (the head it just gave) takes: its own, or
        that of the aged head it was given before (``_sooner_aged``). For the mark between workers."""
        return self._swap_prio if self._swap is item else item.priority

    def aged_expiry(self, req: InferenceRequest, now: float) -> float | None:
        """For the gate between workers: when ``req`` is the head ``heads`` just gave, queued in an
        ``slo-feasible`` band at or below the default and past its aging time at ``now``, its expiry, as a
        worker's mark gives its head's (``PoolMark.publish``: the expiry itself, not rebuilt from the aging
        time, review s26-rev-fc26b F3); else None."""
        g = self._given
        if g is None or g.req is not req or g.done or g.priority > 0:
            return None
        if (
            not (g.slo_deadline < now and g.ages_at <= now)
            or self.bands[g.priority].ordering != "slo-feasible"
        ):
            return None
        return g.deadline

    def in_first_part(self) -> bool:
        """Is the head ``heads`` just gave from its pass's first part (one it does not defer as past its SLO
        deadline)? For the gate between workers (``fleet``), asked about that head; outside a pass it
        answers for the last walk of ``heads``, which may have been left early."""
        return self._jump is not None

    def _remove(self, item: QueuedRequest, outcome: str, now: float, record: bool = True) -> bool:
        if item.done:
            return False
        item.done = True
        item.outcome = outcome
        if item.parked is not None:
            self._unpark(item)
        elif item.woken_from is not None:
            self._left_woken(item, outcome == DISPATCHED)
        band = self.bands[item.priority]
        if item.held_until is not None:  # counted in its band, but in no flow queue
            item.held_until = None
            band.count -= 1
            band.bytes -= item.size
            self._leave(item.flow)  # (its place as a held request: ``hold``)
        else:
            if outcome == DISPATCHED:
                band.dispatched(item, item.cost)
            if band.forget(item):
                self._leave(item.flow)
        if self._owed and item is not self._swap:  # (the swapped-in one: ``heads`` settles its slot)
            owed = self._owed.get(item.priority, 0)
            if owed > band.count:  # (no more owed than it has queued: review s26-rev-fc26b F2)
                self._owe(item.priority, band.count - owed)
        self.count -= 1
        self.bytes -= item.size
        if self.fleet_limits is not None:
            self.fleet_limits.add(band, -1, -item.size)
        self._queue_count(item.flow, -item.seqs)
        self.metrics.queued(item.priority, item.flow, -1, item.req, item.size)
        if record:
            self.metrics.outcome(item.priority, item.flow, outcome, now - item.enqueued_at, item.req)
        return True

    def take(self, item: QueuedRequest, now: float, record: bool = True) -> None:
        """``item`` leaves for an endpoint (the caller picks it now: late binding). With
        ``record=False`` the caller records the outcome once the pick is known (``record``)."""
        self._remove(item, DISPATCHED, now, record)

    def record(self, item: QueuedRequest, outcome: str, now: float) -> None:
        """The outcome of a request taken with ``record=False``. Not dispatched after all (its pick
        failed: shed, no endpoint): its flow's least-attained-service charge is undone, as ``hold``
        does, so a flow is not charged for work it never got."""
        if outcome != DISPATCHED and item.done and item.outcome == DISPATCHED:
            item.outcome = outcome
            self.bands[item.priority].undo(item)
        self.metrics.outcome(item.priority, item.flow, outcome, now - item.enqueued_at, item.req)

    def hold(self, item: QueuedRequest, now: float, until: float) -> None:
        """Put back ``item``, just taken, whose pick said "not now": queued again (limits, TTL, cancel
        as before; its flow's least-attained-service charge undone) but out of its band's selection
        until ``until``."""
        if not item.done or item.outcome != DISPATCHED:
            return
        band = self.bands[item.priority]
        band.undo(item)  # (its flow may have left the band with it: then off what the band keeps of it)
        q = band.flows.get(item.flow)
        if q is not None:
            q.drop_head(item)  # its own entry (it was the head): no duplicate later
        item.done = False
        item.outcome = ""
        item.held_until = until
        band.count += 1
        band.bytes += item.size
        self.count += 1
        self.bytes += item.size
        if self.fleet_limits is not None:
            # Queued again unchecked, as in one process, though another worker may have admitted into its
            # place during the pick: the fleet's queue may then hold up to ``workers - 1`` over a limit, and
            # admits nothing until it is below it again (``fleet`` docstring). A check here could only refuse
            # a request that has already waited its turn, in favour of a newer one (review s21-wk L2).
            self.fleet_limits.add(band, +1, item.size)
        self._queue_count(item.flow, item.seqs)
        self.metrics.queued(item.priority, item.flow, +1, item.req, item.size)
        self.metrics.outcome(item.priority, item.flow, HELD, now - item.enqueued_at, item.req)
        item.holds += 1
        self._held.append(item)
        # Still its flow's demand (``queued``, ``count``), so its flow stays active: a place of its own
        # while it is out of the flow queues (else the total counts it, the flows do not).
        self._enter(item.flow)
        # Its expiry entry may be gone (dropped while it was done): then a fresh one, with a key that
        # no other entry has (a tie would compare the requests themselves). Never a second one: a
        # request held every few ms until its TTL would otherwise add thousands.
        if not item.in_expiry:
            item.in_expiry = True
            self._hold_seq -= 1
            heapq.heappush(self._expiry, (item.deadline, self._hold_seq, item))

    def unhold(self, now: float) -> None:
        """Held requests due by ``now`` go back into their bands (finished ones are dropped)."""
        if not self._held:
            return
        keep: list[QueuedRequest] = []
        for item in self._held:
            if item.done or item.held_until is None:
                continue
            if item.held_until <= now:
                band = self.bands[item.priority]
                item.held_until = None
                band.count -= 1
                band.bytes -= item.size
                self._leave(item.flow)  # its place as a held request, for its place in its band:
                if band.push(item):  # (counts it again, in its flow)
                    self._enter(item.flow)
            else:
                keep.append(item)
        self._held = keep

    def pass_over(self, item: QueuedRequest) -> bool:
        """For the rest of this pass (``fleet.PoolMark.publish``'s look at what a pass would send), take
        ``item`` (a head just chosen) out of its band's selection; ``put_back`` returns it to its place
        (still queued and counted meanwhile). False when it is not a head of its flow (nothing done)."""
        q = self.bands[item.priority].flows.get(item.flow)
        got = None if q is None or item.done else q.take_head(item)
        if got is None:
            return False
        self._passed.append((item, got[0], got[1]))
        if item.req.subset is not None:
            self._pass_homes = self._pass_homes | item.req.subset
        self._aside, self._asides = item, self._asides + 1
        return True

    @property
    def passed(self) -> int:
        """Heads passed over (``pass_over``) and not put back yet."""
        return len(self._passed)

    @property
    def passed_homes(self) -> Collection[str]:
        """The endpoints queued heads wait aside for (parked: their full homes; ``pass_over``'s), of any
        band; which of them a given request is kept off: ``waited_for``."""
        if not self._pass_homes:
            return self._parked_at.keys()
        return self._pass_homes | self._parked_at.keys()

    def waited_for(self, address: str, priority: int) -> bool:
        """Does a queued head of band ``priority`` or higher wait aside for ``address`` (parked for its full
        home there; or passed over in a mark's look, ``pass_over``: any band)? A request of band
        ``priority`` dispatched past them is picked off such endpoints when it has others (the Director's
        late pick), so it does not take the place they wait for. A lower band's parked head never keeps a
        higher band's request off its home (review s20-fc M5): strict priority is the bands' order."""
        if address in self._pass_homes:
            return True
        top = self._top_at.get(address)
        return top is not None and top >= priority

    def parked_above(self, req: InferenceRequest, priority: int) -> list[tuple[HomeKey, InferenceRequest]]:
        """The parked homes of bands above ``priority`` that ``req`` (about to be dispatched) could take a
        place of (with their probes): those sharing an endpoint with its subset; for a request with no
        subset, every one (its pool's room may be theirs). ``dispatch_ready`` asks them first (review
        s20-fc M1: a home freed with no signal here must not go to a lower band before the next sweep)."""
        if not self._parked:
            return []
        sub = req.subset
        if sub is None:
            keys: Collection[HomeKey] = [k for k in self._parked if k[2] > priority]
        else:
            found: set[HomeKey] = set()
            for addr in sub:
                got = self._parked_at.get(addr)
                if got:
                    found.update(k for k in got if k[2] > priority)
            keys = found
        return [(k, self._parked[k].probe) for k in keys]

    def put_back(self) -> None:
        """The heads passed over back in their places (``pass_over``), in the order they had."""
        if not self._passed:
            return
        for item, entry, late in self._passed:
            q = self.bands[item.priority].flows.get(item.flow)
            if q is not None and not item.done and item.held_until is None:
                q.put_back(entry, late)
        self._passed.clear()
        self._pass_homes = frozenset()

    # -- heads waiting aside for their full home ---------------------------------------------------

    def park(self, item: QueuedRequest, now: float) -> bool:
        """Take ``item`` (a head just chosen, pinned to a subset the gate found full for any flow: a
        Responses follow-up's busy home, a subset hint) out of its band's selection until that home is
        found with room (``wake``): still queued and counted (limits, TTL, shares, cancel), but no pass
        meets it again meanwhile, so the requests behind it go and a pass's cost does not grow with the
        heads waiting. Its home is asked again with its request as a flow no fair-share rule holds back
        (``ROOM_FLOW``). A soft pin (``subset_soft``) waits at most until ``unpin_at``. False when ``item``
        is not a head."""
        sub = item.req.subset
        q = self.bands[item.priority].flows.get(item.flow)
        got = None if q is None or item.done or sub is None else q.take_head(item)
        if got is None or sub is None:
            return False
        key = (item.req.model, sub, item.priority)
        home = self._parked.get(key)
        if home is None:
            if not self._parked:
                self._swept_at = now  # (just found full: the first sweep one interval on)
            probe = replace(item.req, fairness_id=ROOM_FLOW)
            home = self._parked[key] = Home(probe)  # (at the back: just looked at)
            band, top_at = item.priority, self._top_at
            for addr in sub:
                self._parked_at.setdefault(addr, set()).add(key)
                bands = self._bands_at.setdefault(addr, {})
                bands[band] = bands.get(band, 0) + 1
                if top_at.get(addr, band) <= band:
                    top_at[addr] = band
        home.add(item, got[0], got[1], 0 if q is None else q.turn)
        item.parked, item.woken_from = key, None
        if item.full_since is None:  # (a new spell; one back in line only this pass keeps its own)
            item.full_since = now
            if item.req.subset_soft:
                self._hold_seq -= 1
                heapq.heappush(self._unpins, (unpin_at(now, item.deadline), self._hold_seq, item, now))
        self._aside, self._asides = item, self._asides + 1
        return True

    def is_parked(self, key: HomeKey) -> bool:
        return key in self._parked

    def home_probe(self, key: HomeKey) -> InferenceRequest | None:
        """The request a pass asks "has home ``key`` room?" with; None when nothing is parked there."""
        home = self._parked.get(key)
        return None if home is None else home.probe

    def freed(self, address: str) -> None:
        """A slot freed at ``address`` (a request there finished or produced its first token): the homes
        holding it are looked at in the next pass (``homes_to_look``)."""
        keys = self._parked_at.get(address)
        if keys:
            self._woken.update(keys)

    def homes_to_look(self, now: float) -> list[tuple[HomeKey, InferenceRequest]]:
        """The parked homes a pass asks about (with their probes): those told of a freed slot, and, once
        per ``sweep_every``, up to ``PARK_SWEEP`` more, the least recently looked at first (each goes to
        the back of that order: every parked home is looked at within ceil(homes / PARK_SWEEP) sweeps)."""
        parked = self._parked
        if not parked:
            self._woken.clear()
            return []
        keys = [k for k in self._woken if k in parked]
        self._woken.clear()
        if now >= self._swept_at + self.sweep_every or now < self._swept_at:
            self._swept_at = now
            seen, top = set(keys), len(keys) + PARK_SWEEP
            for k in parked:
                if len(seen) >= top:
                    break
                if k not in seen:
                    seen.add(k)
                    keys.append(k)
        out = []
        for k in keys:
            home = parked.pop(k)  # (to the back of the order)
            parked[k] = home
            out.append((k, home.probe))
        return out

    def wake(self, key: HomeKey, now: float | None = None) -> bool:
        """Home ``key`` has room: the one parked head its band would choose first among the home's (its
        fairness policy, then its ordering: ``Band.first_of``; ``now``: for ``slo-feasible``) back in its
        place in its band, where the band's own order decides (fc21: before, every head there was put back
        and those the room did not take were parked again in the same pass, O(its heads) per freeing, about
        2 ms at 1,000). The dispatch pass asks the home again after each request it sends there, and wakes
        the next while it has room; a woken head that leaves without going there (cancelled, expired, its soft
        pin given up) has the home looked at in the next pass (``_left_woken``). A head parked again in the
        same pass (the room went to another) keeps its spell without room (``end_pass``). False when nothing
        is parked there."""
        return self._wake_one(key, now, True)

    def wake_first(self, key: HomeKey, now: float | None = None) -> bool:
        """As ``wake``, to be tried again as a head though the home is full (``flowControl.preemption``: it
        may stop a sheddable request there), its spell going on; the others stay aside (review s20-fc M3: a
        sweep costs one head per home, not every head). False when nothing is parked there."""
        return self._wake_one(key, now, False)

    def _wake_one(self, key: HomeKey, now: float | None, spell_ends: bool) -> bool:
        home = self._parked.get(key)
        if home is None:
            return False
        band = self.bands[key[2]]
        reach = None if now is None else now + self.service_ttft
        feasible = band.ordering == "slo-feasible"
        e: Parked | None
        if self.cfg.fair_share_headroom:  # (flows under their share first: one look per flow here)
            e = band.first_of(home.bests(reach, feasible, now), self._under_share(), reach, now)
        elif band.fairness == "global-strict" and not feasible:
            e = home.first_key()
        elif band.fairness == "round-robin" and not feasible:  # (slo-feasible: past-deadline heads last)
            flows = band.flows
            e = home.first_turn(lambda f: None if (q := flows.get(f)) is None else q.turn, reach, feasible)
        else:
            e = band.first_of(home.bests(reach, feasible, now), None, reach, now)
        if e is None:  # (not expected: a parked head's flow is in its band while it is queued)
            self.wake_home(key)
            return True
        item, entry, late = home.take(e)
        if not home.items:
            del self._parked[key]
            self._forget_home(key)
        else:
            item.woken_from = key
        item.parked = None
        if spell_ends and item.full_since is not None:
            self._back.append(item)
        q = band.flows.get(item.flow)
        if q is not None and not item.done and item.held_until is None:
            q.put_back(entry, late)
        return True

    def wake_home(self, key: HomeKey) -> None:
        """Every head parked at home ``key`` back in its place (``wake_all``: the queue is failed whole)."""
        home = self._parked.pop(key, None)
        if home is None:
            return
        self._forget_home(key)
        for item, entry, late in home.items.values():
            item.parked = None
            if item.full_since is not None:
                self._back.append(item)
            q = self.bands[item.priority].flows.get(item.flow)
            if q is not None and not item.done and item.held_until is None:
                q.put_back(entry, late)

    def end_pass(self) -> None:
        """A pass is over: the heads back from a home with room (``wake``) and not parked again start a new
        spell when next found full; those parked again keep theirs (one give-up entry each, and a home that
        serves one of many now and then no longer restarts every waiting head's spell: review s20-fc M2)."""
        if not self._back:
            return
        for item in self._back:
            if item.parked is None:
                item.full_since = None
        self._back.clear()

    def wake_all(self) -> None:
        for key in list(self._parked):
            self.wake_home(key)

    def unpin_due(self, now: float) -> list[QueuedRequest]:
        """Soft pins given up by ``now`` (``unpin_at``): each request back in its place, picked as any
        request from now on (its subset dropped, as the pick drops a soft pin whose home left the pool)."""
        out: list[QueuedRequest] = []
        u = self._unpins
        while u and u[0][0] <= now:
            _, _, item, since = heapq.heappop(u)
            if item.done or item.full_since != since:
                continue  # (found with room since, or gone: a stale entry)
            got = self._unpark(item) if item.parked is not None else None
            if item.woken_from is not None:  # (woken, it will not take its home's room)
                self._left_woken(item, False)
            item.req.subset, item.req.subset_soft = None, False
            item.full_since = None
            q = self.bands[item.priority].flows.get(item.flow)
            if got is not None and q is not None and item.held_until is None:
                q.put_back(*got)
            out.append(item)
        return out

    def _left_woken(self, item: QueuedRequest, sent: bool) -> None:
        """``item``, woken from its home (``wake``), leaves line: sent, the dispatch pass asks the home again
        (``_again``); else nothing else may meet the home (its other heads are parked), so it is looked at in
        the next pass, as one told of a freed slot: the heads behind wait one pass, not the sweep's turn of
        the home (ceil(homes / PARK_SWEEP) intervals: review s21-fc F1)."""
        key, item.woken_from = item.woken_from, None
        if not sent and key is not None and key in self._parked:
            self._woken.add(key)

    def _unpark(self, item: QueuedRequest) -> tuple[tuple[float, int, QueuedRequest], bool] | None:
        """``item`` out of its home's parked heads (its entry, to put back); the home forgotten once empty."""
        key = item.parked
        item.parked = None
        home = None if key is None else self._parked.get(key)
        if home is None or key is None:
            return None
        got = home.items.pop(item.seq, None)
        if not home.items:
            del self._parked[key]
            self._forget_home(key)
        elif got is not None:
            home.left()
        return None if got is None else (got[1], got[2])

    def _forget_home(self, key: HomeKey) -> None:
        band = key[2]
        for addr in key[1]:
            keys = self._parked_at.get(addr)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._parked_at[addr]
            bands = self._bands_at.get(addr)
            if bands is None or band not in bands:
                continue
            if bands[band] > 1:
                bands[band] -= 1
                continue
            del bands[band]
            if not bands:
                del self._bands_at[addr]
                self._top_at.pop(addr, None)
            elif self._top_at.get(addr) == band:
                self._top_at[addr] = max(bands)  # (a few bands: the configured priorities)

    @property
    def parked(self) -> int:
        """Heads waiting aside for their full homes."""
        return sum(len(h.items) for h in self._parked.values())

    def cancel(self, item: QueuedRequest, now: float, outcome: str = EVICTED_CANCELLED) -> bool:
        """Remove a waiting request (client gone, rejected at pick); False when it had already left."""
        return self._remove(item, outcome, now)

    def expire(self, now: float, outcome: str = EVICTED_TTL) -> list[QueuedRequest]:
        """Remove and return the requests whose TTL has passed (recorded as ``outcome``; the TTL's, a
        request whose own deadline came first: ``EvictedRequestTimeout``)."""
        out: list[QueuedRequest] = []
        exp = self._expiry
        while exp and (exp[0][2].done or exp[0][0] <= now):
            _, _, item = heapq.heappop(exp)
            item.in_expiry = False
            why = EVICTED_REQUEST_TIMEOUT if item.bounded and outcome == EVICTED_TTL else outcome
            if self._remove(item, why, now):
                out.append(item)
        return out

    def evict_all(self, now: float, outcome: str = EVICTED_OTHER) -> list[QueuedRequest]:
        """Remove and return every queued request (held and parked ones too: the expiry heap holds an
        entry for each), recorded as ``outcome`` with its wait up to ``now``: the queue is closed (the
        gateway's drain deadline passed), none of them is dispatched after this."""
        out: list[QueuedRequest] = []
        exp, self._expiry = self._expiry, []
        for _, _, item in sorted(exp, key=lambda e: e[2].seq):  # (answered in their arrival order)
            item.in_expiry = False
            if self._remove(item, outcome, now):
                out.append(item)
        return out

    def give_up(self, item: QueuedRequest, at: float) -> None:
        """``item`` (sloAdmission) cannot make its SLO after ``at``: ``give_ups`` removes it then.
        Only an earlier time than it has adds an entry (a request held many times adds few)."""
        if at < item.give_up_at and at < item.deadline:  # (its TTL removes it first otherwise)
            item.give_up_at = at
            self._hold_seq -= 1
            heapq.heappush(self._give_ups, (at, self._hold_seq, item))

    def give_ups(self, now: float) -> list[QueuedRequest]:
        """Remove and return the queued requests past their give-up time (``give_up``)."""
        out: list[QueuedRequest] = []
        g = self._give_ups
        while g and (g[0][2].done or g[0][0] <= now):
            _, _, item = heapq.heappop(g)
            if item.give_up_at <= now and self._remove(item, REJECTED_PREDICTED_MISS, now):
                out.append(item)
        return out

    # -- in-flight requests per flow (fairShareHeadroom) -----------------------------------------

    def _enter(self, flow: str) -> None:
        self._places[flow] = self._places.get(flow, 0) + 1

    def _leave(self, flow: str) -> None:
        n = self._places[flow]
        if n == 1:
            del self._places[flow]
        else:
            self._places[flow] = n - 1

    def _queue_count(self, flow: str, delta: int) -> None:
        self.queued_total += delta
        n = self.queued.get(flow, 0) + delta
        if n > 0:
            self.queued[flow] = n
        else:
            self.queued.pop(flow, None)

    @property
    def active_flows(self) -> int:
        """Flows with a request in flight or queued (held ones included), in any band."""
        return len(self._places)

    def arrived(self, req: InferenceRequest, now: float) -> None:
        """A request arrived (before the gate is asked for it): ``fairShareRunningReserve`` counts each
        flow's arrivals (``rate_over``)."""
        if not self.cfg.fair_share_running_reserve:
            return
        base = self._arrived_base
        rebase = (
            base is None
            or now - base > RATE_REBASE_WINDOWS * LOAD_WINDOW_S
            or len(self._arrived) > self._arrived_cap
        )
        if rebase or base is None:
            self._rebase(now)
            base = now
        # (an arrival before the base time, a clock stepping back, counts as decayed: exp of a negative)
        w = math.exp((now - base) / LOAD_WINDOW_S)
        key = rate_key(flow_of(req))
        arrived = self._arrived
        if key not in arrived and len(arrived) >= RATE_FLOWS_MAX - 1:
            key = RATE_OVERFLOW  # (a bounded table: client-supplied ids, one per request in a spray)
        ws = w * seqs_of(req)  # (its sequences: the demand on the servers' slots)
        arrived[key] = arrived.get(key, 0.0) + ws
        self._arrived_total += ws
        self._since_count += 1
        at = self._rate_flows_at
        due = now >= at + RATE_FLOWS_EVERY_S and (
            self._since_count * RATE_RECOUNT_SHARE >= len(arrived) or now >= at + RATE_RECOUNT_MAX_S
        )
        if rebase or now < at or due:
            self._count_flows(now, w)

    def _count_flows(self, now: float, w: float) -> None:
        """The flows sending now: at least RATE_ACTIVE arrivals left after decay (``w``: the weight of
        an arrival at ``now``). A scan of the table: at each re-base, else at most once per
        RATE_FLOWS_EVERY_S and only after 1 / RATE_RECOUNT_SHARE of the table's size in arrivals
        (amortised O(1) per arrival), or once per RATE_RECOUNT_MAX_S (at most one scan of
        RATE_FLOWS_MAX ids a second)."""
        self._rate_flows_at = now
        self._since_count = 0
        floor = RATE_ACTIVE * w
        self._rate_flows = sum(1 for c in self._arrived.values() if c >= floor)

    def _rebase(self, now: float) -> None:
        base = self._arrived_base
        k = 1.0 if base is None else math.exp(-(now - base) / LOAD_WINDOW_S)
        self._arrived = {f: c * k for f, c in self._arrived.items() if c * k >= RATE_PRUNE}
        self._arrived_total = sum(self._arrived.values())
        self._arrived_base = now
        # Many ids sending at once (none decayed enough to drop): the next re-base on size only once the
        # table has doubled (else every ~23 s), so the scans cost O(1) per arrival however many ids.
        self._arrived_cap = max(RATE_FLOWS, 2 * len(self._arrived))

    def rate_over(self, flow: str) -> bool:
        """``fairShareRunningReserve``: do ``flow``'s arrivals over the last ``LOAD_WINDOW_S`` (decayed)
        come to more than its share (the same factor as ``over_share``) of all flows' arrivals, shared
        by the active flows? Its demand in flight and queued says so only once its excess has piled
        up: at a burst's start the requests of a flood go out at once, into the running slots kept for
        the others, while its demand is still under its share. Its rate says so from the first
        requests of the burst (and, decayed, through the pause between bursts)."""
        if self.fleet is not None:
            return self.fleet.rate_over(self, flow)
        arrived = self._arrived
        key = rate_key(flow)
        mine = arrived.get(key, 0.0)
        if not mine and key not in arrived:  # (an id past the table's bound: judged by the shared entry)
            mine = arrived.get(RATE_OVERFLOW, 0.0)
        if not mine:
            return False
        return mine * max(1, self._rate_flows) > self._over_factor * self._arrived_total

    def started(self, flow: str, req: InferenceRequest | None = None, now: float | None = None) -> bool:
        """A request of ``flow`` was dispatched (``req`` at ``now``, when known; counted as its sequences,
        ``seqs_of``: 1 without ``req``). Returns whether the headroom held it back then
        (``fairShareRunningReserve``: the others' dispatches are counted, the rate at which they take
        free slots, one per sequence)."""
        held = False
        s = 1 if req is None else seqs_of(req)
        if req is not None and now is not None and self.cfg.fair_share_running_reserve:
            held = self.held_back(req, now)  # (the gate's question: a due request is not held back)
            if not held:
                self._rate = self._decayed(self._rate, self._rate_at, now) + s
                self._rate_at = now if self._rate_at is None else max(now, self._rate_at)
                self._reserve_cache = (None, 0)
        n = self.inflight.get(flow, 0)
        self.inflight[flow] = n + s
        self.inflight_total += s
        if n == 0:
            self._enter(flow)
        return held

    def ended(self, flow: str, now: float | None = None, seqs: int = 1) -> None:
        """A request of ``flow`` of ``seqs`` sequences (what ``started`` counted it as) finished (at
        ``now``, when known: ``fairShareRunningReserve`` counts the finishes, the rate at which slots
        come free, one per sequence)."""
        n = self.inflight.get(flow, 0)
        if n <= 0:
            return
        s = seqs if seqs < n else n  # (never below 0: at most what the flow has in flight)
        if now is not None and self.cfg.fair_share_running_reserve:
            self._finished = self._decayed(self._finished, self._finished_at, now) + s
            self._finished_at = now if self._finished_at is None else max(now, self._finished_at)
            self._reserve_cache = (None, 0)
        if n == s:
            del self.inflight[flow]
            self._leave(flow)
        else:
            self.inflight[flow] = n - s
        self.inflight_total -= s

    def over_share(self, flow: str) -> bool:
        """Is ``flow``'s demand (sequences in flight and queued: ``seqs_of``, a server's slots count
        them) more than the mean over the active flows? One flow alone never is. Queued requests
        count: when a burst starts the pool is full of the other flows' requests, so the flood's
        excess is in the queue while few of its requests are in flight yet (measured: counting only
        those in flight, a flood was under its share for the first second of its bursts in a 2 x 16
        fleet, and took the slots kept for the others)."""
        if self.fleet is not None:
            return self.fleet.over_share(self, flow)
        mine = self.inflight.get(flow, 0) + self.queued.get(flow, 0)
        # (a flow with a request in flight or queued, held or not, is active: counted already)
        total = self.inflight_total + self.queued_total
        return bool(mine) and mine * len(self._places) > self._over_factor * total

    # -- fairShareRunningReserve -------------------------------------------------------------------

    @staticmethod
    def _decayed(count: float, at: float | None, now: float, window: float = LOAD_WINDOW_S) -> float:
        """``count`` (decayed over ``window``, as of ``at``) as of ``now``."""
        if at is None or now <= at:
            return count
        return count * math.exp(-(now - at) / window)

    def rates(self, now: float) -> tuple[float, float]:
        """Per second, over the last ``LOAD_WINDOW_S`` (decayed): the dispatches of the requests the
        headroom does not hold back, and every request's finishes."""
        return (
            self._decayed(self._rate, self._rate_at, now) / LOAD_WINDOW_S,
            self._decayed(self._finished, self._finished_at, now) / LOAD_WINDOW_S,
        )

    @property
    def reserve_miss(self) -> float:
        """The share of the requests not held back that may find no free slot and wait for one: half
        of a p90's tail (``RESERVE_MISS``), or, with ``fairShareTTFTTarget``, what the measured share
        of them whose dispatch-to-first-token alone misses the target (``engine_miss``: a second
        prefill in their step, another request's prefill ahead of theirs) leaves of the share aimed at
        (``aim``, under the p90's tail by a window's binomial margin), at least
        ``RESERVE_MISS_FLOOR``. A wait for a slot costs a request's finish somewhere in the pool (tens
        of ms), so nearly every wait is a miss."""
        if not self.cfg.fair_share_ttft_target:
            return RESERVE_MISS
        return max(RESERVE_MISS_FLOOR, self.aim - self.engine_miss)

    def free_reserve(self, now: float, cap: int) -> int:
        """The running slots to keep free for the requests not held back: ``free_slots`` on the
        measured rates, plus ``free_extra`` (rounded; it is kept at most the largest ``cap`` asked
        with), at most ``cap``."""
        key = (now, cap)
        if self._reserve_cache[0] == key:  # (a dispatch pass asks again at the same instant)
            return self._reserve_cache[1]
        if cap > self._extra_cap:
            self._extra_cap = cap
        if self.free_extra > self._extra_cap:
            self.free_extra = float(self._extra_cap)
        fleet = self.fleet
        take, give = self.rates(now) if fleet is None else fleet.rates(self, now)
        extra = self.free_extra if fleet is None else fleet.free_extra(self)
        f = min(cap, free_slots(take, give, self.reserve_miss, cap) + int(extra + 0.5))
        self._reserve_cache = (key, f)
        return f

    def reserve_full(self, req: InferenceRequest, now: float, slots: int) -> bool:
        """``fairShareRunningReserve`` on one pool of ``slots`` running slots that holds every request
        in flight: may ``req`` not take one, as the headroom holds it back and no more than the
        reserve's free slots are left? (The Director's gate does the same on the request's
        candidates.)"""
        if not (self.cfg.fair_share_running_reserve and self.held_back(req, now)):
            return False
        cap = int(slots * self.cfg.fair_share_headroom)
        # (all of its sequences must leave the reserve's free slots free: for one, ``>= slots - F``)
        return self.inflight_total + seqs_of(req) - 1 >= slots - self.free_reserve(now, cap)

    def held_back(
        self, req: InferenceRequest, now: float | None = None, slo_deadline: float | None = None
    ) -> bool:
        """Does the fair-share headroom apply to ``req``: its flow is over its share, or (adapting to
        ``fairShareTTFTTarget``) the request is sheddable? A batch band's long requests fill the
        servers' batches as a flood does; being sheddable, they are the first to wait. With ``now``
        and ``fairShareSLOFirst``: not once its TTFT deadline is near (``deadline_due``; ``slo_deadline``,
        a queued request's deadline computed at enqueue, spares parsing its headers again)."""
        if self.cfg.fair_share_ttft_target and req.sheddable:
            back = True  # (the band's rule: the room probe of a sheddable band too, as each of its requests)
        else:
            flow = flow_of(req)
            if flow == ROOM_FLOW:
                return False
            back = self.over_share(flow) or (self.cfg.fair_share_running_reserve and self.rate_over(flow))
        if back and now is not None and self.cfg.fair_share_slo_first:
            deadline = self.slo_deadline(req, now) if slo_deadline is None else slo_deadline
            if self.deadline_due(deadline, now):
                return False
        return back

    def due_head(self, priority: int, now: float, skip: QueuedRequest) -> QueuedRequest | None:
        """``fairShareSLOFirst``: the head of band ``priority``'s flows (other than ``skip``'s, the
        fairness policy's choice, held back) that is due (``deadline_due``), earliest SLO deadline first; None
        when none is. The fairness policy looks at one flow only, so without this a due request
        behind another flow's head that is not due would wait while the gate had room for it.
        One head per flow: a due request behind its own flow's head (fcfs ordering with SLOs that
        differ per request) is not seen. Uses each head's deadline computed at enqueue: this runs on
        every blocked dispatch pass, over every flow (parsing each head's headers again cost ~10x)."""
        best: QueuedRequest | None = None
        reach = now + self.service_ttft  # (each flow's head as ``heads`` sees it: review s25-rev-fixfc25 F3)
        for flow, q in self.bands[priority].flows.items():
            if flow == skip.flow:
                continue
            h = q.head(reach, now)
            earlier = h is not None and (best is None or h.slo_deadline < best.slo_deadline)
            if earlier and h is not None and self.deadline_due(h.slo_deadline, now):
                best = h
        return best

    def slo_deadline(self, req: InferenceRequest, now: float) -> float:
        """``req``'s TTFT deadline: its arrival (``now`` when unknown) + its SLO header or the default."""
        slo = header_ms(req.headers, SLO_TTFT_HEADERS) or self.cfg.default_ttft_slo
        return (req.arrival_time or now) + slo

    def slo_due(self, req: InferenceRequest, now: float) -> bool:
        """``fairShareSLOFirst``: must ``req`` leave now to meet its TTFT SLO? (``deadline_due``)"""
        return self.deadline_due(self.slo_deadline(req, now), now)

    def deadline_due(self, deadline: float, now: float) -> bool:
        """Must a request with TTFT ``deadline`` leave now? Its deadline is within ``SLO_FIRST_MARGIN``
        dispatch-to-first-token p90s, and not nearer than one (then it misses wherever it goes, and
        holding it back costs nothing more). Before any first token is seen (no p90 yet) nothing is
        due."""
        service = self.service_ttft
        return now + service <= deadline <= now + SLO_FIRST_MARGIN * service

    def observe_first_token(
        self, req: InferenceRequest, ttft: float, service: float | None = None, held: bool | None = None
    ) -> None:
        """``req`` produced its first token ``ttft`` seconds after it arrived. With
        ``fairShareTTFTTarget``, and ``req`` not held back itself, the headroom moves toward the value
        at which the share ``aim`` of such requests misses the target (stochastic approximation of a
        quantile; ``aim`` is recomputed from the number of them over the last ``AIM_WINDOW_S``).
        ``held``: whether the gate held it back at its dispatch (what ``started`` returned): the
        running reserve learns from the requests it did not hold back then (review s10-fc M1: asked
        again now, the shares have moved, and a request that waited by design read as a reserve
        miss); None: asked now."""
        cfg = self.cfg
        target = cfg.fair_share_ttft_target
        if not target:
            return
        now = (req.arrival_time or 0.0) + ttft
        held_now = self.held_back(req)
        held_then = held_now if held is None else held
        if not held_now:  # (its sample: the requests it steers on over the last AIM_WINDOW_S)
            at = self._steer_at
            if at is None or now - at > AIM_WINDOW_S:
                # the first, or the first after a window without any (an idle spell): a new start, or the
                # count, decayed to near nothing, would read as the start-up's under-count for the
                # window's whole length (review s12-fc F3)
                self._steer_n, self._steer_seen, self._steer_recent = 0.0, 0, 0.0
                self._steer_since = now
                at = now
            self._steer_n = self._decayed(self._steer_n, at, now, AIM_WINDOW_S) + 1.0
            # the rate now, read before this token is added (counting it would read >= 1/s: s12-late L1)
            recent = self._decayed(self._steer_recent, at, now, AIM_RECENT_S)
            self._steer_recent = recent + 1.0
            self._steer_seen += 1
            self._steer_at = max(now, at)
            since = self._steer_since  # (set with _steer_at, just above when it was None)
            assert since is not None
            n = window_sample(self._steer_n, now - since, self._steer_seen, recent / AIM_RECENT_S)
            self.aim = aim_miss(1.0 - TARGET_QUANTILE, max(AIM_MIN_SAMPLE, n), self._aim_z)
        if service is not None and cfg.fair_share_running_reserve and not held_then:
            # (its time from dispatch alone: a miss the reserve could not have prevented)
            self.engine_miss += ENGINE_MISS_GAIN * ((1.0 if service > target else 0.0) - self.engine_miss)
            # A miss by waiting (over the target, within it from dispatch): the free slots the model
            # keeps were too few; the others: too many. Settles where such misses are reserve_miss.
            waited = 1.0 if ttft > target >= service else 0.0
            extra = max(0.0, self.free_extra + FREE_GAIN * (waited - self.reserve_miss))
            # (no wind-up: misses while the cap is kept free already are not the reserve's to prevent;
            # before the gate has asked, no cap is known: clamped at its first ask, before any use)
            self.free_extra = min(extra, self._extra_cap) if self._extra_cap else extra
            self._reserve_cache = (None, 0)
        if held_now:  # (the headroom steers on the requests not held back as the shares are now)
            return
        top = cfg.fair_share_headroom
        miss = 1.0 - self.aim if ttft > target else -self.aim
        self.headroom = min(top, max(0.0, self.headroom + HEADROOM_GAIN * top * miss))

    def observe_service_ttft(self, seconds: float) -> None:
        """A request's first token came ``seconds`` after its dispatch (slo-feasible's margin)."""
        if not self._feasible:
            return
        self._service.append(seconds)
        self._service_n += 1
        if self._service_n % SERVICE_REFRESH == 0 or self._service_n < SERVICE_REFRESH:
            ordered = sorted(self._service)
            self.service_ttft = max(0.0, ordered[int(TARGET_QUANTILE * (len(ordered) - 1))])

    def _under_share(self) -> Callable[[str], bool]:
        """``over_share``'s complement for every flow, the active count taken once."""
        if self.fleet is not None:
            return self.fleet.under_share(self)
        n, inflight, queued = len(self._places), self.inflight, self.queued
        total = self.inflight_total + self.queued_total
        if self.cfg.fair_share_running_reserve:  # (a flow over its share by its arrivals too)
            rate_over = self.rate_over
            return lambda f: (inflight.get(f, 0) + queued.get(f, 0)) * n <= total and not rate_over(f)
        return lambda flow: (inflight.get(flow, 0) + queued.get(flow, 0)) * n <= total

    def next_deadline(self) -> float | None:
        """The earliest TTL expiry, give-up time or soft pin's give-up (``unpin_at``) of a queued request."""
        exp, g, u = self._expiry, self._give_ups, self._unpins
        while exp and exp[0][2].done:
            heapq.heappop(exp)[2].in_expiry = False
        while g and g[0][2].done:
            heapq.heappop(g)
        while u and (u[0][2].done or u[0][2].full_since != u[0][3]):
            heapq.heappop(u)
        times = [h[0][0] for h in (exp, g, u) if h]
        return min(times) if times else None
