"""Dispatching from the flow controller when the saturation detector says capacity freed.

``dispatch_ready`` is the one dispatch rule (used by the front doors' ``FlowDispatcher`` and by the
virtual-clock benchmark): while the head request's pool is not saturated, take it out of the queue and
hand it to the caller, who picks its endpoint then (late binding: the pick sees the load of that
moment, not of its arrival).

``FlowDispatcher`` is the asyncio side both front doors await through ``Director.admit``: a request
that finds the queue empty and the pool unsaturated is picked at once; any other waits on a future
resolved by one dispatch task. The task re-checks when ``notify()`` says a request finished or produced
its first token, and every ``recheck_interval`` (scraped metrics change on their own). A waiter whose
task is cancelled (the HTTP client or Envoy's stream went away) leaves the queue at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from kvgate.flowcontrol.controller import (
    DISPATCHED,
    EVICTED_CANCELLED,
    REJECTED_OTHER,
    REJECTED_PREDICTED_MISS,
    ROOM_FLOW,
    FlowController,
    HomeKey,
    QueuedRequest,
    flow_of,
)
from kvgate.flowcontrol.controller import PASS_OVER_MAX as PASS_OVER_MAX  # (re-exported: older imports)
from kvgate.flowcontrol.sloadmission import PredictedSLOMissError
from kvgate.scheduling.types import (
    InferenceRequest,
    NoCapacityError,
    PickResult,
    PredictedMissError,
    QueueTimeoutError,
    SchedulingError,
)

if TYPE_CHECKING:
    from kvgate.flowcontrol.fleet import PoolMark

log = logging.getLogger("kvgate.flowcontrol")

TTL_MESSAGE = "request timed out in the flow control queue (TTL expired)"
# A request whose own deadline (``admit``'s ``wait_max``: requestTimeoutSeconds) came before the TTL: 504.
DEADLINE_MESSAGE = "request timed out in the flow control queue (its requestTimeoutSeconds passed)"
# A plugin's bug while dispatching: the clients concerned are answered (never left waiting).
PICK_ERROR_MESSAGE = "the pick of a request leaving the flow control queue failed (internal error)"
EXPIRY_ERROR_MESSAGE = "the flow control queue failed to expire its requests (internal error); dropped"
GIVE_UP_MESSAGE = "sheddable request can no longer meet its TTFT SLO (flow control queue)"
# What a preempted request's client gets, as a 429 (ShedError): retry later.
PREEMPTED_MESSAGE = "request preempted by higher-priority work"
# A gate that keeps raising is logged at its 1st, 2nd, 4th, ... failed pass in a row, then every this many
# (at the 20 ms recheck: about every 20 s).
LOG_EVERY = 1024
MAX_HOLD_BACKOFF = 16  # a held request is re-picked at most every 16 recheck intervals (320 ms by default)


def dispatch_ready(
    ctl: FlowController,
    now: float,
    saturated: Callable[[InferenceRequest], bool],
    preempt: Callable[[InferenceRequest], bool] | None = None,
    home_full: Callable[[InferenceRequest], bool] | None = None,
) -> Iterator[QueuedRequest]:
    """Take and yield queued requests, in policy order, while their pool has capacity.

    With ``preempt`` (``flowControl.preemption``), a head that is not sheddable and finds its pool
    saturated may stop one sheddable in-flight request (``preempt`` returns True) and take its place.
    A head whose own subset is full (a Responses follow-up pinned to its busy home, a subset hint: full for a
    flow no fair-share rule holds back, ``ROOM_FLOW``) waits aside (``FlowController.park``) until that home
    is found with room, and its band chooses again: the requests behind it go, and no later pass meets it
    (review s18-doors M3, s19-fc M1, s19-fixes-b L1). The parked homes asked about again are the ones told
    of a freed slot (``FlowController.freed``) and a bounded sweep (``homes_to_look``), each with one gate
    call; one with room has the head its band would choose first back in its place (``FlowController.wake``),
    before anything else is chosen, and after each request sent there the home is asked again (``_again``):
    as many come back as can start, in order. Before a head
    is taken, the parked homes of higher bands where it could go are asked too (``_room_above``: strict
    priority holds for a home freed with no signal here, review s20-fc M1). ``home_full``:
    the gate those questions go to (default ``saturated``; the dispatcher's leaves out the other workers'
    order, which is no property of the home). Taken with ``record=False``: the caller records the outcome
    once it knows the pick's."""
    probe_full = saturated if home_full is None else home_full
    ctl.unhold(now)
    ctl.put_back()  # (a mark's look its caller left unfinished)
    # Homes asked about in this pass: ``full``, found full (a head pinned there is parked with no gate
    # call: dispatches only add load); ``looked``, asked (found with room, and nothing dispatched since:
    # its heads' own gates decide).
    # ``retry``: full homes whose first head is back to try preemption (its gate, not the home's question).
    full: set[HomeKey] = set()
    looked: set[HomeKey] = set()
    retry: set[HomeKey] = set()
    # ``clear[0]``: a band from which up every parked home above was found full in this pass (no walk).
    clear = [math.inf]
    for home, probe in ctl.homes_to_look(now):
        if not probe_full(probe):
            looked.add(home)
            ctl.wake(home, now)
        elif preempt is not None and not probe.sheddable:
            ctl.wake_first(home, now)  # (tried again as a head: it may stop a sheddable request there)
            retry.add(home)
        else:
            looked.add(home)
            full.add(home)
    ctl.unpin_due(now)  # (soft pins whose home stayed full too long: picked as any request from now on)
    try:
        while True:
            blocked = True
            for item in ctl.heads(now):
                sub = item.req.subset
                key: HomeKey | None = None
                if sub is not None:
                    key = (item.req.model, sub, item.priority)
                    if key in full:
                        ctl.park(item, now)
                        continue
                    if key not in looked and key not in retry and ctl.is_parked(key):
                        # Its home has heads parked before it: asked now (once a pass); with room, they are
                        # back in their places and the walk starts again (they may come first).
                        looked.add(key)
                        if not probe_full(_room_probe(item.req)):
                            ctl.wake(key, now)
                            blocked = False
                            break
                        full.add(key)
                        ctl.park(item, now)
                        continue
                # Strict priority: a lower band goes only when the higher band's heads cannot use the
                # capacity because their own pool (another model, a full home) is the saturated one.
                # A higher band's heads parked where it would go are asked first (a home freed with no
                # signal here, before the sweep: review s20-fc M1); one with room: back, walk again.
                if not saturated(item.req):
                    if _room_above(ctl, item, probe_full, full, clear, now):
                        blocked = False
                        break
                    ctl.take(item, now, record=False)
                    yield item
                    looked.intersection_update(full)  # (its load may have filled a home found with room)
                    _again(ctl, key, now, probe_full, full, looked)
                    blocked = False
                    break
                if preempt is not None and not item.req.sheddable and preempt(item.req):
                    ctl.take(item, now, record=False)
                    yield item
                    if key is not None and key in retry:
                        ctl.wake_first(key, now)  # (it stopped one: the home's next head may too)
                    looked.intersection_update(full)  # (its load may have filled a home found with room)
                    blocked = False
                    break
                # fairShareSLOFirst: the head the fairness policy chose is held back by the headroom; a
                # due head of another flow in the band goes through the whole gate if it has room.
                due = _due_instead(ctl, item, now)
                if due is not None and not saturated(due.req):
                    if _room_above(ctl, due, probe_full, full, clear, now):
                        blocked = False
                        break
                    ctl.take(due, now, record=False)
                    yield due
                    looked.intersection_update(full)
                    sub = due.req.subset
                    _again(ctl, None if sub is None else (due.req.model, sub, due.priority), now, probe_full,
                           full, looked)  # fmt: skip
                    blocked = False
                    break
                if key is None or key in looked:
                    if ctl.wait_late():
                        continue  # (the heads deferred past their SLO deadline may have room elsewhere)
                    break  # (waits for the pool, its flow's share, or its home found with room: as any)
                # Is its home what is full (for a flow no rule holds back: its own flow's held-back gate
                # would read it full earlier, review s19-fixes-b H1)? Then it waits aside; else it waits
                # as any head does, its band and the bands below with it.
                looked.add(key)
                probe = _room_probe(item.req)
                if not probe_full(probe):
                    if ctl.wait_late():
                        continue
                    break
                full.add(key)
                ctl.park(item, now)
            if blocked:
                return
    finally:
        ctl.put_back()
        ctl.end_pass()


def _room_above(
    ctl: FlowController,
    item: QueuedRequest,
    probe_full: Callable[[InferenceRequest], bool],
    full: set[HomeKey],
    clear: list[float],
    now: float | None = None,
) -> bool:
    """Before ``item`` is dispatched: has a parked home of a higher band where it could go room (one gate
    call each, once a pass: one found full is in ``full`` and stays full while the pass only adds load)?
    The first found with room has its heads back in their places (True: the walk starts again, they come
    first). Strict priority between a parked head and a lower band (review s20-fc M1). A walk that found
    every home above a band full is not made again in the pass for that band or a higher one (``clear``:
    homes parked later in the pass are parked because found full), so a pass walks the parked homes once
    per band, not once per request (review s20-fixes-b M1)."""
    if item.priority >= clear[0]:
        return False
    for key, probe in ctl.parked_above(item.req, item.priority):
        if key in full:
            continue
        if not probe_full(probe):
            ctl.wake(key, now)
            return True
        full.add(key)
    if item.req.subset is None:  # (a subset's walk covers only the homes sharing its endpoints)
        clear[0] = item.priority
    return False


def _again(
    ctl: FlowController,
    key: HomeKey | None,
    now: float,
    probe_full: Callable[[InferenceRequest], bool],
    full: set[HomeKey],
    looked: set[HomeKey],
) -> None:
    """A request just sent to home ``key`` (a pinned one): heads still parked there are woken one at a time
    (``FlowController.wake``), so the home is asked again (one gate call, after the pick charged the load
    sent): with room, its next head is back in line; else it is full for the rest of the pass."""
    if key is None or key in full:
        return
    probe = ctl.home_probe(key)
    if probe is None:
        return
    looked.add(key)
    if probe_full(probe):
        full.add(key)
    else:
        ctl.wake(key, now)


def _room_probe(req: InferenceRequest) -> InferenceRequest:
    """``req`` (its subset kept), of a flow no fair-share rule holds back (``ROOM_FLOW``): has its home
    room?"""
    return replace(req, fairness_id=ROOM_FLOW)


def _due_instead(ctl: FlowController, item: QueuedRequest, now: float) -> QueuedRequest | None:
    """With ``fairShareSLOFirst``: when ``item`` waits only because the headroom holds it back, the
    earliest-deadline due head among the band's other flows (one look per flow, one gate check).
    With ``fairShareRunningReserve`` a held-back request waits on the reserve whatever the adapted
    headroom's value, so the look is taken at a headroom of 0 too."""
    cfg = ctl.cfg
    if not (cfg.fair_share_slo_first and (ctl.headroom or cfg.fair_share_running_reserve)):
        return None
    if not ctl.held_back(item.req, now, item.slo_deadline):
        return None
    return ctl.due_head(item.priority, now, item)


class FlowDispatcher:
    def __init__(
        self,
        ctl: FlowController,
        *,
        pick: Callable[[InferenceRequest, bool], PickResult],
        saturated: Callable[[InferenceRequest], bool],
        clock: Callable[[], float],
        abandoned: Callable[[InferenceRequest, PickResult], None] = lambda _r, _p: None,
        preempt: Callable[[InferenceRequest], bool] | None = None,
        hold_misses: bool = False,
        recheck_interval: float = 0.02,
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        """``pick`` runs when a request leaves the queue and must charge its load at once (the gate
        of the next dispatch in the same pass reads it); ``abandoned`` undoes that when the waiter
        was cancelled after its pick but before it resumed. ``timer``: what the enqueue and
        dispatch-cycle histograms time the admission and each pass by (``clock`` may be virtual)."""
        self.ctl = ctl
        self.timer = timer
        self.pick = pick
        self.saturated = saturated
        self.clock = clock
        self.abandoned = abandoned
        self.preempt = preempt
        # flowControl.holdPredictedMisses: a sheddable request predicted to miss its SLO waits
        # (until predicted to make it, or its TTL) instead of failing with 429.
        self.hold_misses = hold_misses
        self.recheck_interval = recheck_interval
        ctl.sweep_every = recheck_interval  # (parked homes: a sweep at most once per recheck)
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        # ``kvgate serve --workers N``: this pool's mark among the workers' (``fleet``), so a request
        # waits while another worker has one waiting that goes first (fleet-wide queue order).
        self.fleet: PoolMark | None = None
        self._mark_failed = False
        self.gate_errors = 0  # passes in a row whose gate raised: what the log backs off on
        # The queue closed (``evict_all``): the error each later admission is answered with at once
        # (review s21-fc F2: a body completing after the EPP's grace eviction was queued, then cut by gRPC).
        self.closed: Callable[[], SchedulingError] | None = None

    def __len__(self) -> int:
        return len(self.ctl)

    def arrive(
        self,
        req: InferenceRequest,
        now: float,
        handle: Any,
        explain: bool = False,
        bound: float | None = None,
    ) -> PickResult | QueuedRequest:
        """A new request: picked at once when nothing is queued and its pool has room (its result),
        else queued with ``handle`` (the queue entry; ``ShedError`` when full) until its TTL or
        ``bound`` (its own deadline), whichever comes first. A pick's error is raised, except a
        predicted miss that may wait: queued and held then. Shared with the virtual-clock benchmark."""
        miss: PredictedMissError | None = None
        took: float | None = None
        timer = self.timer
        t0 = timer()  # (its admission: llm-d-router's enqueue duration, the gate's look and the queueing)
        self.ctl.arrived(req, now)
        if len(self.ctl) == 0 and not self._gate(now)(req):
            # Admitted at once: its outcome is recorded with a 0 wait, as a queued one's when it leaves
            # (the reference's FlowItem.finalize records every request; review s19-qa L3), and its
            # admission's time (the gate's look, not the pick) under the same outcome.
            took = timer() - t0
            metrics = self.ctl.metrics
            try:
                result = self.pick(req, explain)
            except PredictedMissError as e:
                if not self._may_wait(e, now):
                    slo = isinstance(e, PredictedSLOMissError)
                    metrics.outcome(
                        req.priority,
                        flow_of(req),
                        REJECTED_PREDICTED_MISS if slo else REJECTED_OTHER,
                        0.0,
                        req,
                        took,
                    )
                    raise
                miss = e
            except SchedulingError:
                metrics.outcome(req.priority, flow_of(req), REJECTED_OTHER, 0.0, req, took)
                raise
            else:
                metrics.outcome(req.priority, flow_of(req), DISPATCHED, 0.0, req, took)
                return result
        # ShedError when full (its refusal timed there)
        item = self.ctl.enqueue(
            req, now, handle=handle, explain=explain, bound=bound, started=t0, timer=timer
        )
        # (a predicted miss held: its admission timed as above, before its pick)
        self.ctl.metrics.enqueued(req.priority, item.flow, took if took is not None else timer() - t0)
        if miss is not None:  # as if it had just left the queue and been turned back
            self.ctl.take(item, now, record=False)
            self._hold(item, now, miss)
        if self.fleet is not None:
            self._publish(now, req.priority)
        return item

    def _publish(self, now: float, enqueued: int | None = None) -> None:
        """Write this worker's mark (``enqueued``: the band of a request just queued, ``PoolMark.enqueued``).
        Best effort: a mark that cannot be written (a bug) is logged, never raised: it must not fail
        the request just queued, nor end the dispatch loop (the others read the last mark until it
        expires)."""
        fleet = self.fleet
        if fleet is None:
            return
        try:
            if enqueued is None:
                fleet.publish(self.ctl, now)
            else:
                fleet.enqueued(self.ctl, enqueued, now)
        except Exception as e:
            if not self._mark_failed:
                log.error(
                    "flow control: this worker's queue mark could not be written (the other workers read "
                    "its last one until it expires): %s: %s", type(e).__name__, e, exc_info=e,
                )  # fmt: skip
            self._mark_failed = True
        else:
            self._mark_failed = False

    def _gate(self, now: float) -> Callable[[InferenceRequest], bool]:
        """The dispatch gate at ``now``: the pool's (``saturated``), and with ``fleet`` another worker's
        request that goes first (asked first: it reads a few shared floats, the pool's gate sums
        endpoints)."""
        fleet = self.fleet
        if fleet is None:
            return self.saturated
        ctl, saturated = self.ctl, self.saturated
        return lambda req: fleet.defers(req, ctl, now) or saturated(req)

    def _preempt(self, now: float) -> Callable[[InferenceRequest], bool] | None:
        """``preempt`` as ``dispatch_ready`` asks it at ``now``: with ``fleet``, never for a head that waits
        because another worker's request goes first (the gate says "closed" then, not "pool full"): a
        deferred head waits, it does not stop a running request to take its place."""
        fleet, preempt = self.fleet, self.preempt
        if fleet is None or preempt is None:
            return preempt
        ctl = self.ctl
        return lambda req: not fleet.defers(req, ctl, now) and preempt(req)

    async def admit(
        self, req: InferenceRequest, explain: bool = False, wait_max: float | None = None
    ) -> PickResult:
        """``req`` picked, once its pool has room. ``wait_max`` (seconds from now; None: none): if it
        is still queued then, it leaves the queue with ``QueueTimeoutError`` (504), by the queue's own
        expiry (no timer per request: most requests are not queued at all; review s18-gw L2). Once the
        queue is closed (``evict_all``), answered at once with its error (recorded ``RejectedOther``)."""
        if self.closed is not None:
            self.ctl.metrics.outcome(req.priority, flow_of(req), REJECTED_OTHER, 0.0, req)
            raise self.closed()
        now = self.clock()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[PickResult] = loop.create_future()
        got = self.arrive(req, now, fut, explain, None if wait_max is None else now + wait_max)
        if isinstance(got, PickResult):
            return got
        item = got
        if self._wake is None:
            self._wake = asyncio.Event()
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run(), name="kvgate-flow-dispatch")
        self._wake.set()
        try:
            return await fut
        except asyncio.CancelledError:
            # Client gone: leave the queue; if it had already been picked, release that pick.
            left = not self.ctl.cancel(item, self.clock())
            if left and fut.done() and not fut.cancelled() and fut.exception() is None:
                self.abandoned(req, fut.result())
            raise

    def _may_wait(self, e: PredictedMissError, now: float) -> bool:
        """Hold (True) or fail (False) a request its pick predicts to miss: ``sloAdmission``'s while it
        can still make its SLO; the filter's (``holdPredictedMisses``) until its TTL."""
        if isinstance(e, PredictedSLOMissError):
            return e.give_up_at > now
        return self.hold_misses

    def _hold(self, item: QueuedRequest, now: float, e: PredictedMissError | None = None) -> None:
        """Turned back by its pick: tried again after the recheck interval, doubling with each turn
        back up to ``MAX_HOLD_BACKOFF`` times it, so many held requests do not re-run a full pick each
        every 20 ms while the pool is overloaded (at most 320 ms late once one would make it)."""
        backoff = min(2 ** min(item.holds, 8), MAX_HOLD_BACKOFF)
        self.ctl.hold(item, now, now + self.recheck_interval * backoff)
        if isinstance(e, PredictedSLOMissError):
            self.ctl.give_up(item, e.give_up_at)

    def settle(self, item: QueuedRequest, now: float) -> PickResult | SchedulingError | None:
        """Pick ``item``, just taken by ``dispatch_ready``, and record its outcome: the result, the
        error to fail it with, or None when its pick turned it back into the queue (held)."""
        try:
            result = self.pick(item.req, item.explain)
        except PredictedMissError as e:
            if self._may_wait(e, now):  # back in the queue; tried again after the recheck interval
                self._hold(item, now, e)
                return None
            slo = isinstance(e, PredictedSLOMissError)
            self.ctl.record(item, REJECTED_PREDICTED_MISS if slo else REJECTED_OTHER, now)
            return e
        except SchedulingError as e:
            self.ctl.record(item, REJECTED_OTHER, now)
            return e
        except Exception as e:  # (a plugin's bug) it has left the queue: its client gets a 500, not a hang
            log.error("flow control: %s: %s: %s", PICK_ERROR_MESSAGE, type(e).__name__, e, exc_info=e)
            self.ctl.record(item, REJECTED_OTHER, now)
            return SchedulingError(PICK_ERROR_MESSAGE)
        self.ctl.record(item, DISPATCHED, now)
        return result

    def expired(self, now: float) -> list[tuple[QueuedRequest, SchedulingError]]:
        """Remove the queued requests whose TTL has passed (503; their own deadline: 504) or, with
        ``sloAdmission``, that can no longer make their SLO (429), each with the error to fail it with."""
        out: list[tuple[QueuedRequest, SchedulingError]] = [
            (item, QueueTimeoutError(DEADLINE_MESSAGE) if item.bounded else NoCapacityError(TTL_MESSAGE))
            for item in self.ctl.expire(now)
        ]
        out += [
            (item, PredictedSLOMissError(GIVE_UP_MESSAGE, item.give_up_at)) for item in self.ctl.give_ups(now)
        ]
        return out

    def notify(self, address: str | None = None) -> None:
        """Capacity may have freed (a request finished or produced its first token; at ``address``, when
        known: the heads parked for a home holding it are looked at in the next pass)."""
        if address is not None:
            self.ctl.freed(address)
        if self._wake is not None:
            self._wake.set()

    def step(self) -> None:
        """One pass: expire, then dispatch while capacity allows."""
        now = self.clock()
        self.expire_due(now)
        self.dispatch(now)

    def expire_due(self, now: float) -> None:
        """Answer the queued requests whose TTL (or SLO, ``sloAdmission``) has passed."""
        for item, err in self.expired(now):
            _fail(item, err)

    def dispatch(self, now: float) -> None:
        """Dispatch while capacity allows (the gate: the saturation detector, preemption)."""
        for item in dispatch_ready(self.ctl, now, self._gate(now), self._preempt(now), self.saturated):
            fut = item.handle
            if fut is None or fut.done():
                # Its waiter is gone (cancelled before its own handler ran): taken but never picked,
                # so recorded as cancelled and its flow's charge undone.
                self.ctl.record(item, EVICTED_CANCELLED, now)
                continue
            got = self.settle(item, now)
            if isinstance(got, SchedulingError):
                fut.set_exception(got)
            elif got is not None:
                fut.set_result(got)

    async def _run(self) -> None:
        try:
            await self._passes()
        finally:
            if self.fleet is not None:  # (its queue is empty, or it failed: nothing to defer to here)
                self._publish(self.clock())

    async def _passes(self) -> None:
        wake = self._wake
        assert wake is not None
        timer, metrics = self.timer, self.ctl.metrics
        while len(self.ctl) > 0:
            wake.clear()
            now = self.clock()
            t0 = timer()
            try:
                self.expire_due(now)
            except Exception as e:
                # (not expected) Expiry itself raised: nothing would ever answer the queue: fail it, 503.
                n = self.fail_all(NoCapacityError(EXPIRY_ERROR_MESSAGE), self.clock())
                log.error("flow control: queue expiry failed, %d queued request(s) answered 503: %s: %s",
                          n, type(e).__name__, e, exc_info=e)  # fmt: skip
                return
            try:
                self.dispatch(now)
            except Exception as e:
                # The gate (saturation detector, preemption) raised: tried again at the next recheck
                # (a one-off fault costs one interval); a lasting one leaves each queued request to its
                # TTL (expiry runs first), which also bounds how long an old picker's queue holds a new
                # picker saturated after a reload.
                self._gate_failed(e)
            else:
                if self.gate_errors:
                    log.warning("flow control: dispatch works again after %d failed passes", self.gate_errors)
                    self.gate_errors = 0
            metrics.cycle(timer() - t0)
            if self.fleet is not None:
                self._publish(now)
            if len(self.ctl) > 0:
                # The next pass at the recheck interval, or at the next queued request's TTL, deadline or
                # give-up time when that comes first (its 504 on time, not up to an interval late).
                wait = self.recheck_interval
                due = self.ctl.next_deadline()
                if due is not None:
                    wait = max(0.0, min(wait, due - self.clock()))
                with contextlib.suppress(TimeoutError):  # (not wait_for: 3.11 may drop a cancel, gh-86296)
                    async with asyncio.timeout(wait):
                        await wake.wait()

    def _gate_failed(self, e: Exception) -> None:
        """Logged at the 1st (with the traceback), 2nd, 4th, ... failure in a row, then every
        ``LOG_EVERY``th: not a line every 20 ms while a fault lasts."""
        self.gate_errors += 1
        n = self.gate_errors
        if n % LOG_EVERY == 0 or (n < LOG_EVERY and n & (n - 1) == 0):
            log.error(
                "flow control: dispatch failed (its saturation gate raised), retried at the next recheck; "
                "queued requests wait (up to their TTL)%s: %s: %s",
                f" ({n} failures in a row, logged less often)" if n > 1 else "", type(e).__name__, e,
                exc_info=e if n == 1 else None,
            )  # fmt: skip

    def evict_all(self, err: Callable[[], SchedulingError], now: float) -> int:
        """The queue is closed (a front door's drain or grace ends): every queued request leaves it (held and
        parked ones too), recorded ``EvictedOther`` (the reference's outcome of a queue evicted when its
        controller stops), its waiter failed with a fresh ``err()``; none is dispatched after this. Returns
        how many waiters were answered. Closed for good: a later ``admit`` gets a fresh ``err()`` at once."""
        self.closed = err
        n = 0
        for item in self.ctl.evict_all(now):
            fut = item.handle
            if isinstance(fut, asyncio.Future) and not fut.done():
                fut.set_exception(err())
                n += 1
        return n

    def fail_all(self, err: SchedulingError, now: float) -> int:
        """Remove every queued request (held ones too), each failed with ``err``; returns how many."""
        ctl, n = self.ctl, 0
        ctl.unhold(math.inf)
        ctl.wake_all()
        while len(ctl) > 0:
            before = n
            for item in list(ctl.heads()):
                if ctl.cancel(item, now, _gone_or(item, REJECTED_OTHER)):
                    _fail(item, err)
                    n += 1
            if n == before:  # (not expected) the rest by the expiry heap, where every queued request is
                for item in ctl.expire(math.inf, REJECTED_OTHER):
                    _fail(item, err)
                    n += 1
                break
        return n


def _gone_or(item: QueuedRequest, outcome: str) -> str:
    """``evicted_cancelled`` for a request whose waiter has gone (cancelled, not resumed yet), else
    ``outcome``."""
    fut = item.handle
    return EVICTED_CANCELLED if isinstance(fut, asyncio.Future) and fut.done() else outcome


def _fail(item: QueuedRequest, err: SchedulingError) -> None:
    fut = item.handle
    if isinstance(fut, asyncio.Future) and not fut.done():
        fut.set_exception(err)
