"""Fairness between the flows of one priority band, and ordering inside a flow.

Ordering (a flow's queue is a heap on the policy's key, ties broken by arrival order):
- ``fcfs``: arrival order;
- ``edf``: earliest TTL deadline first (a request may carry a shorter deadline than the band's TTL);
- ``slo-deadline``: earliest ``arrival + TTFT SLO`` first (``x-slo-ttft-ms``, else the default SLO).
- ``slo-feasible`` (kvgate's): as ``slo-deadline`` among the requests that can still meet their
  deadline if sent now (it is further away than the p90 of the dispatch -> first token times the
  controller has seen); the overdue ones (they miss their SLO wherever they go) only when none of those
  is left in their flow, earliest deadline first, and of them those already past their deadline last
  (``FlowQueue.dead``; review s24-rev-fix24c F1). Under overload ``slo-deadline`` serves the most overdue
  first, so every request behind them misses too; this serves the ones that can still make it. A request
  past its deadline gives way until its aging time (halfway from its deadline to its TTL, or in a band
  above the default one of its own SLO past its deadline when that is sooner: ``controller.aging_time``;
  review s24-rev-fix24c F2, fc26), then goes before its flow's other overdue ones, by aging time
  (``dead`` is keyed by it; review s25-rev-fc25 F2, F3), never before one that can still
  make its SLO: under overload the excess is shed at its TTL, not the hits (review s25-rev-fixfc25 F1).
  Between flows (and bands: ``FlowController.heads``), a flow whose head is past its deadline and not
  its aging time (a certain miss, not a p90's guess) is chosen only when no flow's head is not
  (``Band.select``); with ``global-strict`` a head past its aging time ranks as inside a flow: after the
  band's fresh heads, before its overdue ones. Between bands at or below the default, an aged head gives
  its slot to a lower band's aged request that expires sooner, and that band gets the slot back for a
  request that can still make its SLO (``FlowController._sooner_aged``, ``_owed_choice``; fc26b).

Fairness (which flow's head leaves next):
- ``global-strict``: the best head over all flows by the ordering key, as if the band were one queue
  (the reference default with fcfs: a flooding tenant takes the band in proportion to its arrivals);
- ``round-robin``: flows take turns, one request each; a request of s sequences (``n`` choices x a
  batch's prompts: a server runs s) uses s turns, its flow passing its next s - 1 (a deficit, repaid as
  the others take theirs), so flows share the servers' running slots, not the request count (kvgate:
  upstream's turns count requests; for n = 1 the same order);
- ``least-attained-service``: the flow that has been served the fewest tokens (prompt + expected output,
  of each sequence) goes next; a flow that (re)appears starts at the least service of the active
  flows (the band's clock: with none active, the service of the last flow to leave), so it cannot claim
  a backlog of credit by having been idle (virtual token counter fairness), and a flow that left keeps
  what it was served beyond the clock (``Band._gone``, as round-robin's turns owed): back, it starts at
  the clock plus that excess less the clock's advance meanwhile, the rest decayed by ``LAS_DECAY`` per
  dispatch of the band (upstream's ``program-aware-fairness`` keeps a returning program's decayed
  service too). Before, a sender with one costly request queued at a time had its charge forgiven at
  each return and took a dispatch in every two (VTC's own rule: max(own counter, the active minimum)).
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from typing import Any

# llm-d's names first, the old ones their deprecated aliases (llm-d-router TTFTSLOHeaderKey: rev-c36 F3)
SLO_TTFT_HEADERS = ("x-llm-d-slo-ttft-ms", "x-slo-ttft-ms")
SLO_TPOT_HEADERS = ("x-llm-d-slo-tpot-ms", "x-slo-tpot-ms")
# the departed flows a band remembers (``Band.forget``: round-robin's turns owed, least-attained-service's
# service), the oldest dropped
GONE_DEBTS_MAX = 4096
# least-attained-service: a departed flow's service beyond the band's clock decays by this per dispatch of
# the band while it is away (llm-d-router's ``program-aware-fairness`` as merged in its PR #1534: default
# ``lasDecayFactor``, applied to an idle program at each pick; other versions decay by wall clock; half of
# it gone after ~23,000 dispatches)
LAS_DECAY = 0.99997
LAS = "least-attained-service"

_INF = float("inf")


def header_ms(headers: Any, names: tuple[str, ...]) -> float | None:
    """The first of ``names`` present as a positive finite number of milliseconds, in seconds. A value
    that is not one (``inf``, ``1e400``, ``nan``, text) is no SLO, as the latency model reads it
    (``predicted_latency._header_seconds``; review s23-qa F5: ``inf`` was an infinite SLO here)."""
    for n in names:
        v = headers.get(n)
        if v is not None:
            try:
                ms = float(v)
            except ValueError:
                continue
            if 0 < ms < _INF:
                return ms / 1000.0
    return None


def order_key(ordering: str, item: Any) -> float:
    if ordering == "edf":
        return float(item.deadline)
    if ordering in ("slo-deadline", "slo-feasible"):
        return float(item.slo_deadline)
    return float(item.seq)


class FlowQueue:
    """One flow's waiting requests, best first by the band's ordering policy."""

    __slots__ = (
        "band", "dead", "debt", "feasible", "heap", "late", "live", "served_at", "served_before", "service",
        "turn",
    )  # fmt: skip

    def __init__(
        self, service: float, feasible: bool = False, turn: int = 0, band: Band | None = None
    ) -> None:
        self.band = band  # (its entries' changes bump ``Band.stamp``: ``Band.dead_at``'s validity)
        self.heap: list[tuple[float, int, Any]] = []
        # slo-feasible: entries whose key (the SLO deadline) has passed move here, served after the rest
        self.feasible = feasible
        self.late: list[tuple[float, int, Any]] = []
        # slo-feasible: ``late`` entries whose deadline itself has passed (certain misses), after the rest of
        # ``late`` (review s24-rev-fix24c F1: first in ``late``, the most overdue was its flow's head, and a
        # request of the flow that could still make its SLO was ranked, and deferred, as that certain miss)
        self.dead: list[tuple[float, int, Any]] = []
        self.live = 0  # entries not yet removed (cancelled/expired entries are dropped lazily)
        self.service = service  # tokens attained (least-attained-service)
        self.served_at = -1  # dispatch counter of its last dispatch: ties go to the least recent
        self.served_before = -1  # ``served_at`` before the last take (``Band.undo`` puts it back)
        # round-robin: its place in the turn order (the band's ``flows`` order: stamped when it enters the
        # band and when it goes to the back), so the order of a few flows is read without a walk
        self.turn = turn
        # round-robin: the turns it still passes for the sequences beyond the first of its requests sent
        self.debt = 0

    def push(self, key: float, item: Any) -> None:
        heapq.heappush(self.heap, (key, item.seq, item))
        self.live += 1
        self._touch()

    def _touch(self) -> None:
        if self.band is not None:
            self.band.stamp += 1

    def _top(self, now: float | None, due: float | None = None) -> list[tuple[float, int, Any]]:
        """The heap the head comes from (dropping finished entries; with ``slo-feasible`` and a ``now``
        (the reach: now + the p90), moving the overdue ones to ``late`` first, and with a ``due`` (the time
        now), those of ``late`` past their deadline to ``dead``, keyed by their aging time: served after the
        rest of the flow until the first of them reaches it, then after ``heap`` only, by aging time (review
        s25-rev-fc25 F2, F3: under overload, every request overdue on arrival, the backlog waited to its TTL;
        s25-rev-fixfc25 F1: first over ``heap`` too, it turned a flow's hits into misses under overload)."""
        h = self.heap
        while h and h[0][2].done:
            heapq.heappop(h)
        if not self.feasible:
            return h
        while now is not None and h and (h[0][2].done or h[0][0] < now):
            entry = heapq.heappop(h)
            if not entry[2].done:
                heapq.heappush(self.late, entry)
        late, dead = self.late, self.dead  # (without a ``now``: the ones moved here by an earlier call)
        while late and (late[0][2].done or (due is not None and late[0][0] < due)):
            entry = heapq.heappop(late)
            item = entry[2]
            if not item.done:
                heapq.heappush(dead, (item.ages_at, entry[1], item))
        while dead and dead[0][2].done:
            heapq.heappop(dead)
        if h:
            return h  # (a request that can still make its SLO goes first: review s25-rev-fixfc25 F1)
        if dead and due is not None and dead[0][0] <= due:
            return dead  # (past its aging time: before its flow's other overdue ones, by aging time)
        return late if late else dead

    def head(self, now: float | None = None, due: float | None = None) -> Any | None:
        h = self._top(now, due)
        return h[0][2] if h else None

    def head_key(self, now: float | None = None) -> tuple[bool, float, int] | None:
        h = self._top(now)
        if not h:
            return None
        k, seq, _ = h[0]
        # (an overdue head ranks after every head that is not: global-strict across flows)
        return (h is not self.heap, k, seq)

    def drop_head(self, item: Any) -> None:
        """Remove ``item``'s own entry if it is a head (``FlowController.hold``: no duplicate later)."""
        self.take_head(item)

    def take_head(self, item: Any) -> tuple[tuple[float, int, Any], bool] | None:
        """Remove ``item``'s own entry if it is a head: the entry, and whether it was overdue (``late``)."""
        for h in (self.heap, self.late, self.dead):
            if h and h[0][2] is item:
                self._touch()
                entry = heapq.heappop(h)
                if h is self.dead:  # (keyed by aging time there: the entry as its ordering keys it)
                    entry = (item.slo_deadline, entry[1], item)
                return entry, h is not self.heap
        return None

    def put_back(self, entry: tuple[float, int, Any], late: bool) -> None:
        """An entry ``take_head`` removed, back in its place (same key and sequence: the same order; one
        from ``dead`` goes to ``late``, and back to ``dead`` at the next look with a ``due``)."""
        heapq.heappush(self.late if late else self.heap, entry)
        self._touch()


class Band:
    """A priority band: its flows, limits and policies."""

    def __init__(
        self, priority: int, fairness: str, ordering: str, max_requests: int, max_bytes: int
    ) -> None:
        self.priority = priority
        self.fairness = fairness
        self.ordering = ordering
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self.flows: OrderedDict[str, FlowQueue] = OrderedDict()
        self.count = 0
        self.bytes = 0
        self._dispatches = 0
        self._turns = 0  # (round-robin: the last turn stamp given, ``FlowQueue.turn``)
        self._owed = 0  # (round-robin: the turns its flows owe, ``FlowQueue.debt``, in all: 0 for n = 1)
        # (a flow that left, ``forget``: round-robin, one owing turns: its debt; least-attained-service, every
        # one: its service; and the band's dispatches then)
        self._gone: OrderedDict[str, tuple[float, int]] = OrderedDict()
        self._las = fairness == LAS
        self._floor = 0.0  # (least-attained-service: the clock with no flow active, the last one's service)
        # (the flow whose departure set ``_floor``, and the clock before it: ``undo``)
        self._raised: tuple[str, float] | None = None
        # slo-feasible: bumped at every change of a flow queue's entries (push, removal, a head taken out or
        # put back, a dispatch or its undo); ``dead_at``: (stamp, time, the choice's flow or None) when every
        # flow's head was found past its SLO deadline. That stays true while the stamp does (time only adds to
        # the past; entries only move into ``late``), and so does the fairness choice among them when no
        # fair-share rule ranks the flows (its service and turns change only with a dispatch): a band whose
        # heads are all certain misses is not rescanned at every pass (``FlowController.heads``; review
        # s24-rev-fc24 F4).
        # Aging (review s24-rev-fix24c F2) bounds that: ``dead_at``'s last field is the least aging time of
        # those heads (``ages``), when the first of them goes back to its band's priority.
        self.stamp = 0
        self.dead_at: tuple[int, float, FlowQueue | None, float] | None = None
        self.ages = _INF
        # slo-feasible: its queued requests by aging time (finished ones dropped lazily, at most about
        # twice ``count``): ``aged_by`` says in O(1) amortized whether any is past it, so a pass whose band
        # choice is aged walks a lower band's flows only when one of them may be (review s26-rev-fc26b F1).
        self._aging: list[tuple[float, int, Any]] = []

    def push(self, item: Any) -> bool:
        """Queue ``item``; True when its flow is new in the band."""
        q = self.flows.get(item.flow)
        new = q is None
        if q is None:
            # A (re)appearing flow starts at the least service among active flows.
            base = min((f.service for f in self.flows.values()), default=self._floor)
            self._turns += 1
            q = self.flows[item.flow] = FlowQueue(base, self.ordering == "slo-feasible", self._turns, self)
            if self._gone:
                self._returned(item.flow, q)
        q.push(order_key(self.ordering, item), item)
        self.count += 1
        self.bytes += item.size
        if q.feasible:
            aging = self._aging
            heapq.heappush(aging, (item.ages_at, item.seq, item))
            self._trim_aging()
        return new

    def _trim_aging(self) -> None:
        """Drop the aging heap's finished entries (or a held one's earlier entry) once they outnumber the
        queued ones: at a push, and as the band drains (review s26-rev-fixes26 F2: a drained band kept
        every finished request, prompt included, until its next push). Amortized O(1) per request."""
        aging = self._aging
        if not self.count:
            aging.clear()
        elif len(aging) > 2 * self.count + 64:
            live = {e[1]: e for e in aging if not e[2].done}
            self._aging = aging = list(live.values())
            heapq.heapify(aging)

    def aged_by(self, now: float) -> bool:
        """slo-feasible: may a queued request of this band be past its aging time at ``now``? False only
        when none is (``FlowController._sooner_aged`` then skips the band's flows)."""
        aging = self._aging
        while aging and aging[0][2].done:
            heapq.heappop(aging)
        return bool(aging) and aging[0][0] <= now

    def forget(self, item: Any) -> bool:
        """Account an item that left the band (dispatched, cancelled, expired); True when its flow
        left the band (nothing of it queued)."""
        self.count -= 1
        self.bytes -= item.size
        self.stamp += 1
        if self._aging:
            self._trim_aging()
        q = self.flows.get(item.flow)
        if q is not None:
            q.live -= 1
            if q.live <= 0:
                del self.flows[item.flow]
                if self._las:
                    self._keep(item.flow, q.service)
                    self._raised = None if self.flows else (item.flow, self._floor)
                    if not self.flows:
                        self._floor = max(self._floor, q.service)
                elif self._owed:
                    self._owed -= q.debt
                    if q.debt > 0:  # (kept: a paced sender whose queue empties still owes them)
                        self._keep(item.flow, q.debt)
                    self._repay()  # (the flow now at the front may be one that owes turns)
                return True
        return False

    def _keep(self, flow: str, value: float) -> None:
        """Remember what a departing flow leaves with (``_gone``: the newest last, at most
        ``GONE_DEBTS_MAX``)."""
        gone = self._gone
        gone[flow] = (value, self._dispatches)
        gone.move_to_end(flow)
        if len(gone) > GONE_DEBTS_MAX:
            gone.popitem(last=False)

    def _returned(self, flow: str, q: FlowQueue) -> None:
        """round-robin: a flow back in the band still owes the turns it left with, less one for each
        dispatch of the others meanwhile (each a turn it passed; review s22-fc F4: a sender pacing one
        request at a time escaped them all, n=8 then took 8x the servers of n=1).
        least-attained-service: its service, when above the clock it was lifted to (``q.service``), less
        the clock's advance since it left (what the others were served meanwhile), the excess decayed by
        ``LAS_DECAY`` per dispatch of the band since (fc23: a sender pacing one n=8 request at a time had
        its charge forgiven at each return, 7.4x the tokens of a backlogged n=1 flow)."""
        got = self._gone.pop(flow, None)
        if got is None:
            return
        if self._las:
            excess = got[0] - q.service
            if excess > 0:
                q.service += excess * LAS_DECAY ** (self._dispatches - got[1])
            return
        debt = int(got[0]) - (self._dispatches - got[1])
        if debt > 0:
            q.debt = debt
            self._owed += debt

    def select(
        self, first: Callable[[str], bool] | None = None, now: float | None = None, due: float | None = None
    ) -> Any | None:
        """The item the fairness policy dispatches next (not removed). With ``first``, the policy
        chooses among the flows ``first`` accepts when any of them has a request queued, else among
        all (``flowControl.fairShareHeadroom``: flows under their fair share go first). With ``due``
        (``slo-feasible``: the time now), a flow whose head is already past its SLO deadline (a certain
        miss) is chosen only when no flow's head is not (review s24-rev-fc24 F1: the fairness choice kept
        an overdue flow first, and the band's requests that could still make their SLO waited behind it)."""
        return next(self.choices(first, now, due), None)

    def choices(
        self, first: Callable[[str], bool] | None = None, now: float | None = None, due: float | None = None
    ) -> Iterator[Any]:
        """``select``'s choice, then, each time the caller has taken the choice's entry out of its flow
        (``FlowController.pass_over``) and asks again, the policy's choice among what is left: the flows
        ranked once (one scan of the band), each later choice a heap step, not a new scan (review
        s19-fc M1). Only for the pass-overs of one dispatch pass: nothing else may change the band
        meanwhile."""
        if not self.flows:
            return
        due = due if self.ordering == "slo-feasible" else None
        self.ages = _INF
        rr = self.fairness == "round-robin"
        best: tuple[Any, ...] | None = None
        best_q = None
        for i, (f, q) in enumerate(self.flows.items()):
            k = self._rank(q, first is not None and not first(f), i, now, due)
            if k is not None and (best is None or k < best):
                best, best_q = k, q
                if rr and not k[0] and not k[1]:
                    break  # (round-robin: the first flow in turn order in the first tier is the choice)
        if best_q is None:
            return
        yield best_q.head(now, due)
        heap: list[tuple[tuple[Any, ...], int, FlowQueue]] = []
        for i, (f, q) in enumerate(self.flows.items()):
            k = self._rank(q, first is not None and not first(f), i, now, due)
            if k is not None:
                heap.append((k, i, q))
        heapq.heapify(heap)
        while heap:
            k, i, q = heapq.heappop(heap)
            k2 = self._rank(q, k[1], i, now, due)
            if k2 is None:
                continue
            if k2 != k:  # (its head changed since it was ranked: a pass-over took the old one out)
                heapq.heappush(heap, (k2, i, q))
                continue
            yield q.head(now, due)
            k2 = self._rank(q, k[1], i, now, due)  # its flow's next request (same tier, same turn)
            if k2 is not None:
                heapq.heappush(heap, (k2, i, q))

    def _rank(
        self, q: FlowQueue, later: bool, i: int, now: float | None, due: float | None = None
    ) -> tuple[Any, ...] | None:
        """A flow's place in ``select``'s order (``later``: not among ``first``'s); None: nothing queued.
        First whether its head is past its SLO deadline at ``due`` (a certain miss: after every flow whose
        head is not) and not yet past its aging time (``QueuedRequest.ages_at``: then it ranks as the heads
        that are not, review s24-rev-fix24c F2), then the fairness policy's order. ``ages``: the least aging
        time of the heads ranked as past their deadline since ``choices`` began (``FlowController.heads``:
        till then a band all of whose heads are past it stays so)."""
        h = q._top(now, due)
        if not h:
            return None
        key, seq, _ = h[0]
        dead = aged = False
        if due is not None and h is q.dead:  # (``dead``'s key: the aging time, its least at the top)
            if key <= due:
                aged = True
            else:
                dead = True
                if key < self.ages:
                    self.ages = key
        if self.fairness == "round-robin":
            return (dead, later, i)  # the OrderedDict's order
        if self.fairness == "least-attained-service":
            return (dead, later, q.service, q.served_at)
        # global-strict, as one queue: a head past its aging time after the fresh ones (by it), as in a flow
        return (dead, later, 1 if h is q.heap else 2 if aged else 3, key, seq)

    def first_of(
        self,
        heads: Iterable[tuple[str, Any]],
        first: Callable[[str], bool] | None,
        reach: float | None,
        due: float | None = None,
    ) -> Any | None:
        """Of ``heads`` (each a flow of this band and its best request among some set aside, as
        (flow, (key, seq, item, late))), the one ``select`` would dispatch first were they its flows' heads:
        the fairness policy's order (with ``first``, its flows first), one look per head. ``reach``: for
        ``slo-feasible`` (a key before it is overdue, served after the rest); ``due``: the time now (a key
        before it is past its deadline: after every one that is not, as ``select``). The whole entry, or
        None."""
        best: tuple[Any, ...] | None = None
        got = None
        flows, fairness = self.flows, self.fairness
        for flow, entry in heads:
            q = flows.get(flow)
            if q is None:
                continue
            later = first is not None and not first(flow)
            key, seq, item, late = entry
            past = q.feasible and due is not None and item.slo_deadline < due
            dead = past and due < item.ages_at
            if fairness == "round-robin":
                rank: tuple[Any, ...] = (dead, later, q.turn)
            elif fairness == "least-attained-service":
                rank = (dead, later, q.service, q.served_at)
            elif past:  # (global-strict, as ``_rank``: past its aging time after the fresh ones, by it)
                rank = (dead, later, 3 if dead else 2, item.ages_at, seq)
            else:
                over = late or (q.feasible and reach is not None and key < reach)
                rank = (dead, later, 3 if over else 1, key, seq)
            if best is None or rank < best:
                best, got = rank, entry
        return got

    def dispatched(self, item: Any, cost: float) -> None:
        """``item`` left for an endpoint: rotate round robin, charge its flow's service."""
        self.stamp += 1
        q = self.flows.get(item.flow)
        if q is not None:
            q.service += cost
            self._dispatches += 1
            q.served_before = q.served_at
            q.served_at = self._dispatches
            if self.fairness == "round-robin":
                self.flows.move_to_end(item.flow)
                self._turns += 1
                q.turn = self._turns
                seqs = getattr(item, "seqs", 1)
                if seqs > 1:
                    q.debt += seqs - 1
                    self._owed += seqs - 1
                if self._owed:
                    self._repay()

    def _repay(self) -> None:
        """round-robin: a flow at the front that owes turns passes them, one each time it comes first
        (to the back, its debt one less), until the front flow owes none. Each step repays a turn owed,
        so the work is the sequences beyond each request's first, amortized, and at most two cycles of the
        flows (a lone flow repays at once: no one waits for its turns)."""
        flows = self.flows
        steps = 0
        while flows:
            flow, q = next(iter(flows.items()))
            if q.debt <= 0:
                return
            q.debt -= 1
            self._owed -= 1
            flows.move_to_end(flow)
            self._turns += 1
            q.turn = self._turns
            steps += 1
            if steps == len(flows):
                # A whole cycle in which every flow owed: as many more whole cycles as the least owed leave
                # the same order, taken at once (a lone flow's 16,383 turns owed are one step, not 16,383).
                least = min(f.debt for f in flows.values())
                if least > 0:
                    for f in flows.values():
                        f.debt -= least
                    self._owed -= least * len(flows)
                steps = 0

    def undo(self, item: Any) -> None:
        """``item``'s dispatch did not happen after all (held, its pick failed): its flow's charge back
        (least-attained-service's service; round-robin's turns still owed), and the dispatch it counted:
        a hold or a failed pick sent nothing, so it neither repays a departed flow's turns nor decays its
        kept service (s23-rev-fix23a F1: 7 rechecks of held requests forgave an n=8 request's 7 turns)."""
        self.stamp += 1
        if self._dispatches > 0:
            self._dispatches -= 1  # (``dispatched`` counted it: the undo directly follows its take)
            got = self._gone.get(item.flow)
            if got is not None and got[1] > self._dispatches:  # (it left on this take: as of before it)
                self._gone[item.flow] = (got[0], self._dispatches)
        q = self.flows.get(item.flow)
        if q is None:
            # Its flow left with the charge (the item was its last queued request): the charge comes off
            # what the band remembers of it (``_gone``), or it would be charged on return for work it never
            # got (fc23).
            got = self._gone.get(item.flow)
            if got is not None:
                if self._las:
                    self._gone[item.flow] = (got[0] - item.cost, got[1])
                    raised = self._raised
                    if raised is not None and raised[0] == item.flow:
                        # Its departure set the clock (the band's last active flow: the pick runs between take
                        # and undo, so that departure was this take's): the clock is what it would have been
                        # had the flow left uncharged. Else each hold of a lone flow's request lifts the clock
                        # by the request's cost and forgives departed flows' kept excess (s23-rev-flow23 F1).
                        self._raised = None
                        self._floor = max(raised[1], got[0] - item.cost)
                else:
                    back = min(int(got[0]), getattr(item, "seqs", 1) - 1)
                    if back > 0:
                        self._gone[item.flow] = (got[0] - back, got[1])
            return
        q.service -= item.cost
        # (and its place in the ties: a take that sent nothing does not make it the most recently served)
        q.served_at = q.served_before
        seqs = getattr(item, "seqs", 1)
        if seqs > 1 and q.debt:
            back = min(q.debt, seqs - 1)
            q.debt -= back
            self._owed -= back
