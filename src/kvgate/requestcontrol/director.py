"""The Director: the one object a front door talks to (pick, then report dispatch, first token, finish).

Request control sits above scheduling and flow control: it names no plugin module (prefix plugins
publish their expected cache hits through ``scheduling.framework.CacheExpectation``); it is built from
an ``EndpointPickerConfig`` by ``kvgate.config.director.build_director``.

``pick`` is synchronous and does no I/O: candidates (healthy endpoints by ``datalayer.health``: not
ejected, scrapes succeeding, metrics fresh; fail-open only when none is; intersected with the request's
subset hint) -> saturation check for sheddable requests -> the configured profile(s) -> a
``PickResult``. The ``on_*`` calls keep each endpoint's ``InFlight`` accounting, the lag-free load
signal kvgate's default policy relies on. Time comes only from the injected ``clock`` (virtual time in
the fleet simulator); ``timer`` is used solely to measure the picker's own latency for the
``inference_extension_scheduler_e2e_duration_seconds`` histogram.
"""

from __future__ import annotations

import logging
import math
import time
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from itertools import islice
from typing import Any

from kvgate.datalayer.endpoint import Endpoint
from kvgate.datalayer.health import HealthPolicy, gate, ready_endpoints
from kvgate.datalayer.prefixrefs import HeldPrefixes, PrefixKeys, chain_keys
from kvgate.datalayer.store import EndpointStore
from kvgate.flowcontrol.controller import FlowController, flow_of
from kvgate.flowcontrol.controller import flow_key as flow_key  # (re-exported: the EPP's parse lane)
from kvgate.flowcontrol.dispatcher import PREEMPTED_MESSAGE, FlowDispatcher
from kvgate.flowcontrol.saturation import ConcurrencyDetector, SaturationDetector, UtilizationDetector
from kvgate.flowcontrol.sloadmission import PredictedSLOMissError, SLOAdmission
from kvgate.requestid import HEADER as REQUEST_ID
from kvgate.requestid import acceptable as acceptable_rid
from kvgate.scheduling import metrics
from kvgate.scheduling.framework import (
    EXPECTED_CACHE,
    EXPLAIN_EXTRAS,
    ConfigError,
    CycleState,
    DataConsumer,
    DataSource,
    PluginHandle,
    PostPick,
    ProfileHandler,
    ResponseObserver,
    TTFTOracle,
)
from kvgate.scheduling.plugins.handlers import SingleProfileHandler
from kvgate.scheduling.plugins.prefix_cache import prefix_match
from kvgate.scheduling.prefix import CHARS_PER_TOKEN
from kvgate.scheduling.profile import SchedulerProfile
from kvgate.scheduling.speed import BATCH_KNEE, MIN_S_PER_TOKEN, MIN_TOKENS, SpeedEstimator
from kvgate.scheduling.types import (
    InferenceRequest,
    NoCapacityError,
    PickResult,
    PredictedMissError,
    SchedulingError,
    ShedError,
    Usage,
    prompt_tokens,
)

log = logging.getLogger(__name__)

DEFAULT_DECODE_TOKENS = 128  # expected output tokens when a request sets no max_tokens (refined by EWMA)
POOL_METRICS_EVERY_S = 1.0  # inference_pool_* gauges are refreshed at most this often (clock seconds)
PREEMPT_SCAN = 256  # preemption looks at most at the newest this many stoppable requests per try
MAX_TRACKED = 1 << 17  # bound on requests tracked between pick and finish (a front door may forget one)


def named(req: InferenceRequest) -> str:
    """The id a log line names ``req`` by: the client's ``x-request-id`` where it sent an acceptable one
    (what its gateway, model server and client know), else the door's own. The doors give the picker a
    unique ``request_id`` of their own, a client's being shareable (qa34a F1)."""
    rid = req.headers.get(REQUEST_ID)
    return rid if rid and acceptable_rid(rid) else req.request_id


def preempted_error() -> ShedError:
    """What a door answers a preempted request's client (429, as a capacity rejection)."""
    return ShedError(PREEMPTED_MESSAGE)


def _within(eps: list[Endpoint], only: Sequence[Endpoint] | None) -> list[Endpoint]:
    """``eps`` kept to the late pick's earlier restriction ``only`` (None: none). By address through a
    set: linear in endpoints per pick (review s30-rev-c30 F3)."""
    if only is None:
        return eps
    allowed = {ep.address for ep in only}
    return [ep for ep in eps if ep.address in allowed]


@dataclass(slots=True)
class _Track:
    """Per (request, endpoint) accounting between dispatch and finish."""

    prefill: int  # uncached prompt tokens added to pending_prefill_tokens
    decode: int  # expected output tokens added to pending_decode_tokens
    sent: int = 0  # tokens added to sent_tokens (and to unstarted_tokens until its first token)
    keys: PrefixKeys | None = None  # its prompt's prefix keys held at the endpoint (``HeldPrefixes``)
    first_token: bool = False
    first_at: float = 0.0  # clock time of the first token
    sent_at: float = 0.0  # clock time of the dispatch (slo-feasible learns dispatch -> first token)
    stop: Callable[[], bool] | None = None  # the door's way to stop it (preemption); True = stopped
    batch_at_first: float = 0.0  # sequences decoding on the endpoint then (speed learning)
    flow: str | None = None  # its fairness flow, counted in flow control's in-flight per flow
    held: bool = False  # the fair-share headroom held it back at dispatch (fairShareRunningReserve)
    seqs: int = 1  # the sequences it runs (``InferenceRequest.sequences``): its weight in the counts
    miss: bool = False  # a certain miss at dispatch (packCertainMisses), in ``certain_misses`` until started


class Director:
    def __init__(
        self,
        profiles: Mapping[str, SchedulerProfile],
        handler: ProfileHandler,
        store: EndpointStore,
        handle: PluginHandle,
        *,
        detector: SaturationDetector | None = None,
        flow: FlowController | None = None,
        timer: Callable[[], float] = time.perf_counter,
        name: str = "custom",
        health: HealthPolicy | None = None,
    ) -> None:
        self.profiles = dict(profiles)
        self.health = health or HealthPolicy()
        # ``kvgate epp --metrics-staleness-threshold`` (None: not given): the pool gauges count only the
        # ready endpoints scraped within it, as the reference's (qa36a F6)
        self.gauge_staleness_s: float | None = None
        # The picker's session-affinity scorers, found at its first answer (``session.response_cookie``)
        self._session_cookie_scorers: list[Any] | None = None
        self._profile_names = list(self.profiles)
        self.handler = handler
        self.store = store
        metrics.pick_store(store)  # (its endpoints' picks series stay; the rest go: ``trim_picks``)
        self.handle = handle
        self.clock = handle.clock
        self.detector = detector
        self.timer = timer
        self.name = name
        self._candidates: tuple[Endpoint, ...] = ()
        self._candidates_version = -1
        # pool -> (pod label, address) -> its per-endpoint queue series (the two gauges' children,
        # ``labels()`` once)
        self._per_pod: dict[str, dict[tuple[str, str], tuple[Any, Any]]] = {}
        # request_id -> ({address: uncached fraction}, its prompt's prefix keys), from pick until dispatch.
        self._picked: OrderedDict[str, tuple[dict[str, float], PrefixKeys | None]] = OrderedDict()
        # Where the detector's KV estimate reads what its requests send (``ownLoadStalenessThreshold``):
        # the prompt prefixes they hold per endpoint (a block they share is counted once), and how long
        # after a page that estimate is read (the output a request can decode by then).
        self._held = HeldPrefixes()
        self._count_held = isinstance(detector, UtilizationDetector) and detector.own_load_staleness > 0
        self._kv_horizon = detector.scrape_bound() if detector is not None and self._count_held else 0.0
        self._tracks: OrderedDict[tuple[str, str], _Track] = OrderedDict()
        # Sheddable requests a door can stop before their first token, oldest first (preemption).
        self._victims: OrderedDict[tuple[str, str], InferenceRequest] = OrderedDict()
        self.mean_decode = float(DEFAULT_DECODE_TOKENS)
        # Per-endpoint speed from decode paces normalised by batch (``InFlight.pace``, read by the cost
        # scorer): replicas of unequal speed are compared by what they can do, not how loaded they are.
        self.speed = SpeedEstimator()
        self._pool_metrics_at: float | None = None
        # Plugins that learn from responses (latency prediction), told of first tokens and finishes: the
        # configured ones and those built for them (a producer's index its consumers read: the profiles'
        # hooks), each once (review s28-rev-fixes28a F5: the producer's cachedTokensFeedback heard none).
        built = (p for prof in self.profiles.values() for p in (*prof.producers, *prof.post_pick))
        self._observers = list(
            {id(p): p for p in (*handle.plugins.values(), *built) if isinstance(p, ResponseObserver)}.values()
        )
        # Those of them that read usage (``ResponseObserver.on_usage`` is a no-op unless overridden).
        noop = ResponseObserver.on_usage
        self._usage_observers = [
            p for p in self._observers if getattr(p.on_usage, "__func__", None) is not noop
        ]
        self._prefill_observers = [
            p
            for p in self._observers
            if getattr(p.on_prefilled, "__func__", None) is not ResponseObserver.on_prefilled
        ]
        # Flow control (feature gate): requests wait here at saturation; None = pick at once.
        self.flow = (
            FlowDispatcher(
                flow,
                pick=self._pick_late,
                saturated=self.saturated,
                clock=self.clock,
                abandoned=self._abandoned,
                preempt=self._preempt if flow.cfg.preemption else None,
                hold_misses=flow.cfg.hold_predicted_misses,
                timer=self.timer,
            )
            if flow is not None
            else None
        )
        # A config reload's predecessor (``kvgate.gateway.reload``): the Director this one replaced in its
        # pool, while its flow-control queue still holds requests. They leave it by its own dispatcher,
        # on the same endpoints; until it is empty this one's gate counts as saturated, so a request that
        # arrives after the swap queues behind them instead of overtaking them.
        self.predecessor: Director | None = None
        self.slo_admission: SLOAdmission | None = None
        if flow is not None and flow.cfg.slo_admission:
            oracle = handle.find(TTFTOracle)
            if not isinstance(oracle, TTFTOracle):
                raise ConfigError(
                    "flowControl.sloAdmission: needs a predicted-latency-scorer in plugins (the latency "
                    "model it judges by; it need not be in a profile), and none is configured"
                )
            self.slo_admission = SLOAdmission(
                oracle, confidence=flow.cfg.slo_admission_confidence, default_slo=flow.cfg.default_ttft_slo
            )
            flow.slo_known = self._slo_known

    def _slo_known(self, req: InferenceRequest) -> bool:
        """May flow control give up on queued ``req`` at its SLO deadline (sloAdmission)? Only once
        the latency model knows its candidate endpoints: an unknown endpoint sheds nothing."""
        gate = self.slo_admission
        if gate is None:
            return False
        try:
            return gate.knows(self.candidates(req))
        except SchedulingError:
            return False

    # -- picking -------------------------------------------------------------------------------------

    def candidates(self, req: InferenceRequest, now: float | None = None) -> Sequence[Endpoint]:
        if self._candidates_version != self.store.version:
            self._candidates = self.store.all()
            self._candidates_version = self.store.version
        eps: Sequence[Endpoint] = self._candidates
        if now is None:
            now = self.clock()
        if req.subset is not None:
            subset = req.subset
            pinned = [ep for ep in eps if ep.address in subset]
            if pinned:
                eps = pinned  # (a soft pin's home not ready: none, its request waits for it in the queue)
            elif not req.subset_soft:
                raise NoCapacityError("no endpoint in the request's subset hint is known to the picker")
            # (a soft pin whose home left the pool: judged as any request, unchanged; ``pick`` drops it)
        healthy = gate(eps, now, self.health)
        if not healthy:
            raise NoCapacityError("no ready endpoint")
        return healthy

    async def admit(
        self, req: InferenceRequest, explain: bool = False, wait_max: float | None = None
    ) -> PickResult:
        """What both front doors call: ``pick`` at once, or (flow control on) wait for capacity first,
        up to the queue's TTL or ``wait_max`` seconds (the request's own deadline: ``QueueTimeoutError``).
        Keep in sync: without flow control both doors skip this call and ``pick`` directly (the gateway's
        proxy, ``Proxy._dispatch``'s ``no_flow``; ext_proc, ``extproc/context.py``), and take
        ``offers_preemption`` as False there; work added here for ``flow is None`` must go there too."""
        if self.flow is None:
            return self.pick(req, explain)
        # An empty pool is a 503 now, not after a wait (a soft pin's home not ready: the pool's, as it waits)
        self.candidates(replace(req, subset=None, subset_soft=False) if req.subset_soft else req)
        return await self.flow.admit(req, explain, wait_max)

    def scrape_bound(self) -> float:
        """How long an endpoint whose scraped load this picker's own requests explain may go unscraped
        before the saturation detector loses its signal there (its ``scrape_bound``; inf without a
        detector): the pool's scraper keeps its quiet cadence under half of it."""
        return math.inf if self.detector is None else self.detector.scrape_bound()

    def queued(self) -> int:
        """Requests waiting in this Director's flow-control queue."""
        return len(self.flow) if self.flow is not None else 0

    def _behind(self) -> bool:
        """Do requests queued on a predecessor (a reload's old picker) still wait to leave first?"""
        pred = self.predecessor
        while pred is not None and not pred.queued():
            pred = pred.predecessor  # (reloads a moment apart: the oldest queue leaves first)
        self.predecessor = pred
        return pred is not None

    def _notify(self, address: str | None = None) -> None:
        """Capacity may have freed (at ``address``, when known: the flow-control queue looks at the heads
        waiting for that endpoint): this Director's dispatcher, and its predecessors' while they drain."""
        if self.flow is not None:
            self.flow.notify(address)
        self._behind()  # (forgets predecessors whose queues are empty)
        pred = self.predecessor
        while pred is not None:
            if pred.flow is not None:
                pred.flow.notify(address)
            pred = pred.predecessor

    def saturated(self, req: InferenceRequest) -> bool:
        """Would dispatching ``req`` now overload its pool (the flow controller's dispatch gate)?"""
        if self.predecessor is not None and self._behind():
            return True
        if self.detector is None:
            return False
        try:
            cands = self.candidates(req)
        except SchedulingError:
            # No candidate (the pool emptied, a readiness blip; a soft pin's home not ready): saturated,
            # as the reference's detectors read an empty candidate list, so the queued request waits, to
            # its TTL at most (qa31 Q5); an arriving one is refused at once (``admit``).
            return True
        flow, now = self.flow, self.clock()
        # (held back matters only with headroom to keep, or the running reserve: else not asked)
        held = (
            flow is not None
            and bool(flow.ctl.headroom or flow.ctl.cfg.fair_share_running_reserve)
            and flow.ctl.held_back(req, now)
        )
        # One free slot lets any request leave, of one sequence or several: flow control never holds a
        # request for a server with room for all its sequences (the late pick looks for one: _free_slot).
        if held and flow is not None and flow.ctl.headroom:
            # flowControl.fairShareHeadroom: the last part of the capacity is kept for flows at or
            # under their fair share, so one of theirs leaves at once instead of waiting for a slot.
            pending_only = flow.ctl.cfg.fair_share_headroom_on == "pending"
            if self.detector.saturated_reserving(cands, now, flow.ctl.headroom, pending_only):
                return True
        elif self.detector.saturated(cands, now):
            return True
        # flowControl.fairShareRunningReserve: free slots are kept for the others (checked last: it sums
        # the candidates' requests in flight, and a saturated pool needs no more)
        return (
            held
            and flow is not None
            and flow.ctl.cfg.fair_share_running_reserve
            and self._reserve_full(req, cands, now)
        )

    def _reserve_full(self, req: InferenceRequest, cands: Sequence[Endpoint], now: float) -> bool:
        """``fairShareRunningReserve``, for ``req`` held back: are no more than the reserve's free
        running slots left on its candidates (``FlowController.free_reserve``; every request in flight
        there counts, held back or not)? The rates the reserve is sized on are the pool's: on a subset
        of it both scale alike, so the same number of free slots is kept. Requests running on an
        endpoint out of the candidates take none of their slots."""
        flow, slots = self.flow, self._running_slots()
        if flow is None or not slots:
            return False
        total = slots * len(cands)
        busy = sum(ep.inflight.requests for ep in cands) + (req.sequences - 1 if req.sequences > 1 else 0)
        return busy >= total - flow.ctl.free_reserve(now, int(total * flow.ctl.cfg.fair_share_headroom))

    def _running_slots(self) -> int:
        """Each endpoint's running-batch limit, where the dispatch gate knows it (concurrency-detector
        with a pending bound: its maxConcurrency); 0 otherwise."""
        det = self.detector
        if isinstance(det, ConcurrencyDetector) and det.pending_bound:
            return det.max_requests
        return 0

    def _free_slot(self, req: InferenceRequest) -> Sequence[Endpoint] | None:
        """``flowControl.freeSlotPick`` (or ``fairShareRunningReserve``): flow control's late pick goes to
        an endpoint with a free running slot when one has: the gate
        is the pool's mean, and sent to a full server a request waits in its queue for a whole
        request to finish while another server could start it now. A request of several sequences
        goes to an endpoint with a running (and pending) slot for each (as many as ``maxConcurrency``)
        whenever the gate counts running slots (``concurrency-detector``), key or not; with none such,
        to those with the most free running slots: the rest of its sequences wait in that server's own
        queue, as vLLM schedules sequences (the gate held it for no fit). None: no restriction (no
        running bound known, or every candidate is full, or every one has room: the profile chooses
        among all as before)."""
        flow = self.flow
        if flow is None:
            return None
        det, seqs = self.detector, req.sequences
        if seqs > 1 and isinstance(det, ConcurrencyDetector):
            slots = det.max_requests
        else:
            slots = self._running_slots()
            if not slots or not flow.ctl.cfg.picks_free_slot:
                return None
        try:
            cands = self.candidates(req)
        except SchedulingError:
            return None  # (the pick fails with its own error)
        if seqs > 1 and isinstance(det, ConcurrencyDetector):
            # a running (and pending) slot for each of its sequences (``fits``); none with room for
            # all: the ones with the most free running slots
            free = [ep for ep in cands if det.fits((ep,), seqs)]
            if not free:
                most = min(ep.inflight.requests for ep in cands)
                free = [ep for ep in cands if ep.inflight.requests == most]
        else:
            free = [ep for ep in cands if ep.inflight.requests < slots]
        return free if free and len(free) < len(cands) else None

    def _pick_late(self, req: InferenceRequest, explain: bool) -> PickResult:
        # Charged at once, not when the front door resumes: the next dispatch decision in the same
        # pass must see this request's load (the door's own on_dispatched is then a no-op).
        only = self._free_slot(req)
        if self.flow is not None and self.flow.ctl.passed_homes:
            only = self._not_passed_homes(req, only)
        miss = False
        det = self.detector
        if (
            self.flow is not None
            and (self.flow.ctl.cfg.pack_certain_misses or self.flow.ctl.cfg.prefill_alone_pick)
            and isinstance(det, ConcurrencyDetector)
            and det.pending_bound
        ):
            miss, only = self._pack_misses(req, det, only)
        result = self.pick(req, explain, judge=True, only=only)
        self.on_dispatched(req, result.primary)
        if miss:
            track = self._tracks.get((req.request_id, result.primary.address))
            if track is not None and not track.first_token and not track.miss:
                track.miss = True
                result.primary.inflight.certain_misses += track.seqs
        return result

    def _pack_misses(
        self, req: InferenceRequest, det: ConcurrencyDetector, only: Sequence[Endpoint] | None
    ) -> tuple[bool, Sequence[Endpoint] | None]:
        """``flowControl.packCertainMisses`` (and ``prefillAlonePick``, its second half alone: no request
        is marked): is ``req`` a certain miss (held back by the fair-share
        headroom, and sent now its first token comes past its TTFT deadline by the dispatch-to-first-
        token p90), and where may it go? A certain miss: to an endpoint whose pending requests (sent,
        not yet at their first token) are all certain misses, below the pending bound, when one has.
        Any other request: to an endpoint with nothing pending and a free running slot, when some but
        not all candidates are such. Either set is kept within ``only`` (the free-slot fit, the passed
        homes); when none of it is left, ``only`` unchanged (review s30-rev-c30 F3). Two prefills in
        one engine step take longer than one (the simulator's: 0.061 s against 0.035 s next to a full
        batch): a request that can no longer meet its SLO shares its step with another such, one that
        still can is prefilled alone where it can be (fc29's ``miss-pack`` and fc30's
        ``miss-pack-idle``, docs/benchmarks/flowcontrol.md)."""
        flow = self.flow
        assert flow is not None
        try:
            cands = self.candidates(req)
        except SchedulingError:
            return False, only  # (the pick fails with its own error)
        ctl, now, room = flow.ctl, self.clock(), det.max_requests
        if (
            ctl.cfg.pack_certain_misses
            and ctl.held_back(req, now)
            and now + ctl.service_ttft > ctl.slo_deadline(req, now)
        ):
            packed = []
            for ep in cands:
                inf = ep.inflight
                pending = inf.requests - inf.decoding
                if (
                    0 < pending <= inf.certain_misses  # (both the fleet's under ``--workers``)
                    and pending < det.max_pending
                    and inf.requests < room
                ):
                    packed.append(ep)
            return True, (_within(packed, only) or only)
        # (nothing pending: no certain miss pending either)
        alone = [ep for ep in cands if ep.inflight.requests == ep.inflight.decoding < room]
        if not alone or len(alone) == len(cands):
            return False, only
        return False, (_within(alone, only) or only)

    def _not_passed_homes(
        self, req: InferenceRequest, only: Sequence[Endpoint] | None
    ) -> Sequence[Endpoint] | None:
        """A request going past queued heads that wait for their own saturated subset (a Responses
        follow-up's home: ``FlowController.pass_over``) is picked off those endpoints when it has others,
        so it does not take their place there: they stay first in line for their homes. Only heads of its
        band or higher keep it off (``FlowController.waited_for``: a lower band never steers it onto a full
        endpoint, review s20-fc M5)."""
        assert self.flow is not None
        ctl = self.flow.ctl
        try:
            cands = self.candidates(req) if only is None else only
        except SchedulingError:
            return only  # (the pick fails with its own error)
        rest = [ep for ep in cands if not ctl.waited_for(ep.address, req.priority)]
        return rest if rest and len(rest) < len(cands) else only

    def _abandoned(self, req: InferenceRequest, result: PickResult) -> None:
        """Dispatched by flow control, but the client left before the door sent it."""
        self.on_finished(req, result.primary, None, False)

    # -- preemption (flowControl.preemption) ------------------------------------------------------

    def preemptible(self, req: InferenceRequest, endpoint: Endpoint, stop: Callable[[], bool]) -> None:
        """A door can stop ``req`` on ``endpoint`` until its first token: ``stop()`` aborts the upstream
        request and answers the client 429, or returns False when it no longer can. Only the requests
        ``offers_preemption`` names; call after ``on_dispatched``."""
        if not self.offers_preemption(req):
            return
        key = (req.request_id, endpoint.address)
        track = self._tracks.get(key)
        if track is None or track.first_token:
            return
        track.stop = stop
        self._victims[key] = req
        if len(self._victims) > MAX_TRACKED:
            self._victims.popitem(last=False)

    def offers_preemption(self, req: InferenceRequest) -> bool:
        """With ``flowControl.preemption``, sheddable streamed requests: a non-streamed reply shows no
        first token before its end (its response headers come with it), so it could be stopped deep into
        its generation. The one rule for both doors; a door may ask before it builds its ``stop``. (Without
        flow control the gateway's proxy does not ask: keep it False there, see ``admit``.)"""
        return self.flow is not None and self.flow.preempt is not None and req.sheddable and req.stream

    def _preempt(self, req: InferenceRequest) -> bool:
        """``req`` (not sheddable) cannot be placed: stop the newest sheddable request that has no first
        token yet on one of ``req``'s candidates and release its load, so ``req`` takes its place.
        As llm-d's in-flight eviction: the newest has done the least work."""
        if self.predecessor is not None and self._behind():
            return False  # (not saturated: waiting for a predecessor's queue; nothing to stop for it)
        try:
            eps = self.candidates(req)
        except SchedulingError:
            return False
        cands = {ep.address: ep for ep in eps}
        # No candidate with room for all its sequences (one, for n=1; several can overfill a server, as
        # vLLM queues what does not fit): only a stop that gives one server that room, the victim's
        # sequences freed (review s22-fc F2, s22-fixfc R2, R3: else a request is stopped for nothing
        # the head gains). On servers within their bounds an n=1 head finds one as before fc22.
        det = self.detector if isinstance(self.detector, ConcurrencyDetector) else None
        fit = det if det is not None and not det.fits(eps, req.sequences) else None
        # The newest PREEMPT_SCAN only: this runs for every blocked critical head on every dispatch pass,
        # and a victim leaves the map at its first token or finish, so older ones are rarely useful.
        for key in list(islice(reversed(self._victims), PREEMPT_SCAN)):
            track = self._tracks.get(key)
            if track is None or track.first_token or track.stop is None:
                del self._victims[key]
                continue
            if key[1] not in cands:
                continue
            # (no candidate fits: only the victim's endpoint can, once the victim leaves it)
            if fit is not None and not fit.fits((cands[key[1]],), req.sequences, freed=(key[1], track.seqs)):
                continue
            victim = self._victims.pop(key)
            if not track.stop():
                track.stop = None
                continue
            # Released now: the door's own on_finished for it finds no track and does nothing.
            del self._tracks[key]
            self._flow_ended(track)
            self._picked.pop(key[0], None)
            ep = self.store.get(key[1])
            self._release(key[1], ep, track)
            if ep is not None:
                now = self.clock()
                for obs in self._observers:  # (latency models close their open prediction)
                    obs.on_finished(victim, ep, 0, False, now)
            if self.flow is not None:
                self.flow.ctl.metrics.preempted(victim.priority, flow_of(victim))
            log.info("preempted sheddable request %s on %s for %s", named(victim), key[1], named(req))
            return True
        return False

    def pick(
        self,
        req: InferenceRequest,
        explain: bool = False,
        *,
        judge: bool = False,
        only: Sequence[Endpoint] | None = None,
    ) -> PickResult:
        """``judge``: flow control's pick as the request leaves the queue, where ``sloAdmission`` judges
        it; a front door's own pick (a retry after a failed attempt: admitted already) is never judged.
        ``only``: the candidates to choose from first (a subset of ``candidates(req)``; None: all of
        them); when the profile keeps none of them (a filter: a subset, a header naming an endpoint), it
        chooses among all, as without ``only``."""
        if req.subset_soft and req.subset is not None:
            self._unpin_gone(req)
        t0 = self.timer()
        try:
            try:
                result = self._pick(req, explain, judge, only)
            except PredictedMissError:
                raise  # (judged on what it may be sent to now: held or shed as such)
            except SchedulingError:
                if only is None:
                    raise
                result = self._pick(req, explain, judge, None)
        except PredictedSLOMissError:
            raise  # (sloAdmission: flow control counts it, held or shed; a hold is no scheduler error)
        except SchedulingError as e:
            metrics.scheduler_error(e.code, not isinstance(e, ShedError))  # (a shed is no attempt)
            raise
        except Exception:  # a plugin's bug: its caller answers 500; counted as such, not only logged
            metrics.scheduler_error("internal_error")
            raise
        # (``FastHistogram.observe`` and ``FastCounter.inc`` inlined: twice per request)
        took, hist, picks = self.timer() - t0, metrics.SCHEDULER_E2E, metrics.PICKS.counts
        hist.counts[bisect_left(hist.bounds, took)] += 1
        hist.sum += took
        result.seconds = took
        addr = result.endpoints[0].address
        picks[addr] = picks.get(addr, 0.0) + 1.0
        return result

    def _unpin_gone(self, req: InferenceRequest) -> None:
        """The real pick of a soft pin (a Responses follow-up on its home): when its home has left the pool
        (a reload, discovery) the request is picked as any from now on, as one arriving then (review s19-qa
        L4). A home still in the pool but not ready keeps it (review s19-fixes-b I1: a passive health
        blip lost the follow-up its home); the checks before the pick (``saturated``, ``candidates``)
        never change the request."""
        subset = req.subset
        if subset is not None and not any(ep.address in subset for ep in self.store.all()):
            req.subset, req.subset_soft = None, False

    def _pick(
        self, req: InferenceRequest, explain: bool, judge: bool, only: Sequence[Endpoint] | None = None
    ) -> PickResult:
        now = self.clock()
        at = self._pool_metrics_at
        if at is None or now - at >= POOL_METRICS_EVERY_S:
            self._pool_metrics_at = now
            self.update_pool_metrics()
        cands = self.candidates(req, now) if only is None else only
        if req.priority < 0 and self.detector is not None and self.detector.saturated(cands, now):
            metrics.SHED.inc()  # (a sheddable request: ``req.sheddable`` inlined)
            raise ShedError("pool saturated: sheddable request rejected")
        cycle = CycleState(req, now, explain or log.isEnabledFor(logging.DEBUG))
        gate = self.slo_admission
        if gate is None and type(self.handler) is SingleProfileHandler:
            # The usual case, what the general path below does for it: the one profile, nothing judged.
            first = self._profile_names[0]
            chosen = self.profiles[first].run(cycle, cands)
        else:
            chosen, first = self._run_profiles(req, cycle, cands, judge)
        expected = cycle.data.get(EXPECTED_CACHE)  # (``cache_expectation`` inlined)
        if expected is not None:
            # Remember the expected cache hit per chosen endpoint for in-flight accounting at dispatch;
            # without it every dispatch would count its whole prompt as pending prefill on the holder.
            keys = None
            m = prefix_match(cycle) if self._count_held else None
            if m is not None and m.hashes:
                # (``m.data``: a prompt longer than the index's window, keyed on past it)
                block = m.chunk // (4 if m.by_ids else CHARS_PER_TOKEN)
                keys = chain_keys(m.hashes, block, m.data, m.chunk)
            # (``_remember`` inlined, its dict built by a loop: a comprehension is a function call)
            uncached: dict[str, float] = {}
            for ep in chosen:
                uncached[ep.address] = expected.uncached_fraction(ep.address)
            picked = self._picked
            picked[req.request_id] = (uncached, keys)
            if len(picked) > MAX_TRACKED:
                picked.popitem(last=False)
        explanation: dict[str, Any] = {}
        if cycle.explain:
            explanation = {
                "request_id": named(req),
                "policy": self.name,
                "profiles": cycle.data.get("explanation", {}),
                "winner": chosen[0].address,
            }
            explanation.update(cycle.data.get(EXPLAIN_EXTRAS, {}))
            log.debug("pick %s", explanation)
        return PickResult(chosen, first, explanation)

    def _run_profiles(
        self, req: InferenceRequest, cycle: CycleState, cands: Sequence[Endpoint], judge: bool
    ) -> tuple[list[Endpoint], str]:
        """The profiles the handler selects, SLO admission's judgement first: the first one's choice and
        its name."""
        chosen: list[Endpoint] = []
        first = ""
        names = list(self.handler.select(cycle, self._profile_names))
        gate = self.slo_admission
        prepared = ""  # the profile whose producers the gate already ran on this cycle
        if judge and gate is not None and req.sheddable and names:
            # Judged before any profile's choice has effects: its producers first (the expected cache
            # hit is a feature of the prediction); the profile's run does not repeat them.
            prepared = names[0]
            for producer in self.profiles[prepared].producers:
                producer.prepare(cycle, cands)
            gate.check(cycle, cands)  # PredictedSLOMissError: held or shed by flow control
        for name in names:
            picked = self.profiles[name].run(cycle, cands, prepared=name == prepared)
            if not chosen:
                chosen, first = picked, name
        if gate is not None and chosen:
            oracle = gate.oracle
            ran = (self.profiles[n].post_pick for n in names)
            if isinstance(oracle, PostPick) and all(oracle not in hooks for hooks in ran):
                oracle.on_picked(cycle, chosen[0])  # (the model learns from every pick)
        return chosen, first

    def data_sources(self) -> list[DataSource]:
        """Data-layer feeds the configured plugins need (KV events), for the front door to start."""
        return [
            src
            for p in self.handle.plugins.values()
            if isinstance(p, DataConsumer)
            for src in p.data_sources(self.store)
        ]

    # -- in-flight accounting -----------------------------------------------------------------------

    def on_dispatched(self, req: InferenceRequest, endpoint: Endpoint) -> None:
        key = (req.request_id, endpoint.address)
        if key in self._tracks:
            return
        p = req.prompt_tokens  # (``prompt_tokens`` inlined for a request with its estimate)
        if p <= 0:
            p = prompt_tokens(p, req.prompt_text, req.token_ids)
        picked = self._picked.get(req.request_id)
        frac = picked[0].get(endpoint.address, 1.0) if picked is not None else 1.0
        # ``n`` choices (x the prompts of a batch) run as that many sequences: each decodes its own output
        # and takes a running slot; a prompt is computed once (the choices share its cached blocks).
        s = req.sequences if req.sequences > 1 else 1
        track = _Track(
            int(p * frac), (req.max_tokens if req.max_tokens is not None else int(self.mean_decode)) * s
        )
        if s > 1:  # (set after: a keyword argument costs the generated ``__init__`` ~0.1 us more)
            track.seqs = s
        track.sent_at = self.clock()
        # The KV it takes there (the utilization detector's estimate): every prompt token (a hit on an
        # idle cached prefix takes those blocks back into use) except the prefix a request of its own in
        # flight there already holds (one copy of a block however many requests share it), and the
        # output it can have decoded while that estimate is read (``_kv_horizon`` after a page).
        shared, out = 0, track.decode
        if picked is not None and picked[1] is not None:
            keys = track.keys = picked[1]
            shared = min(p, keys.tokens(self._held.take(endpoint.address, keys.keys)))
        if self._kv_horizon:
            if endpoint.inflight.pace > 0:
                out = min(out, s * self._decodable(endpoint, track.sent_at, s))
            elif out > s << 62:  # (``_decodable``'s "no limit" before a pace is learned, without its call)
                out = s << 62
        track.sent = p - shared + out
        self._tracks[key] = track
        if len(self._tracks) > MAX_TRACKED:  # a leaked request: forget the oldest, undo its counts
            (_rid, addr), old = self._tracks.popitem(last=False)
            ep = self.store.get(addr) or next(iter(self.store.departed(addr)), None)  # (gone: qa35a F1)
            self._release(addr, ep, old)
            self._flow_ended(old)
        if self.flow is not None:
            track.flow = flow_of(req)
            track.held = self.flow.ctl.started(track.flow, req, track.sent_at)
        inf = endpoint.inflight
        inf.requests += s
        inf.calls += 1
        inf.pending_prefill_tokens += track.prefill
        inf.pending_decode_tokens += track.decode
        inf.sent_tokens += track.sent
        inf.unstarted_tokens += track.sent

    def _decodable(self, endpoint: Endpoint, now: float, seqs: int = 1) -> int:
        """Tokens each of ``seqs`` more sequences can decode at ``endpoint`` in ``_kv_horizon`` seconds:
        the horizon over a step's time at its learned pace (seconds per token-slot,
        ``scheduling.speed``) with the batch they join; no limit until the pace is learned."""
        pace = endpoint.inflight.pace
        if pace <= 0:
            return 1 << 62
        return math.ceil(self._kv_horizon / (pace * (self._batch(endpoint, now) + seqs + BATCH_KNEE)))

    def on_first_token(self, req: InferenceRequest, endpoint: Endpoint, learn: bool = True) -> None:
        """``learn=False``: a first token whose time says nothing about prefill (a non-streamed reply,
        seen with its last token; an error reply): the accounting moves on, the latency models
        (``ResponseObserver`` plugins) learn nothing from it."""
        track = self._tracks.get((req.request_id, endpoint.address))
        if track is None or track.first_token:
            return
        self._started(req, endpoint, track)
        if learn:
            for obs in self._observers:
                obs.on_first_token(req, endpoint, track.first_at)
        if self.flow is not None and learn:  # (not a TTFT either for the flow's TTFT targets)
            if track.flow is not None and req.arrival_time:  # (flowControl.fairShareTTFTTarget)
                self.flow.ctl.observe_first_token(
                    req, track.first_at - req.arrival_time, track.first_at - track.sent_at, track.held
                )
            self.flow.ctl.observe_service_ttft(track.first_at - track.sent_at)  # (slo-feasible)
        if self.flow is not None or self.predecessor is not None:
            self._notify(endpoint.address)

    def on_finished(self, req: InferenceRequest, endpoint: Endpoint, usage: Usage | None, ok: bool) -> None:
        self._picked.pop(req.request_id, None)
        track = self._tracks.pop((req.request_id, endpoint.address), None)
        if track is not None:
            self._end(req, endpoint, track, usage, ok)

    def on_whole(self, req: InferenceRequest, endpoint: Endpoint, usage: Usage | None, ok: bool) -> None:
        """A reply read whole (a non-streamed answer, an error body): ``on_first_token(req, endpoint,
        learn=False)`` then ``on_finished(req, endpoint, usage, ok)``, the same effects in one call (one
        lookup of its track; the gateway's non-streamed path, once per request)."""
        if self.flow is not None or self.predecessor is not None:
            # (kept as the two calls out of caution: each notifies flow control's dispatcher; no await comes
            # between them, so the dispatcher cannot pick in between, not measured merged)
            self.on_first_token(req, endpoint, learn=False)
            self.on_finished(req, endpoint, usage, ok)
            return
        self._picked.pop(req.request_id, None)
        track = self._tracks.pop((req.request_id, endpoint.address), None)
        if track is None:
            return
        if not track.first_token:  # (``on_first_token``'s part for ``learn=False`` without flow control)
            self._started(req, endpoint, track)
        self._end(req, endpoint, track, usage, ok)

    def _started(self, req: InferenceRequest, endpoint: Endpoint, track: _Track) -> None:
        """``track``'s first token is here (now): its sequences start decoding, its prefill is done. The
        part ``on_first_token`` and ``on_whole`` share; the observers learn nothing from it (none reads the
        in-flight counts it moves)."""
        track.first_token = True
        first = track.first_at = self.clock()
        if track.miss:
            self._unmark(endpoint, track)
        if track.stop is not None:
            track.stop = None
            self._victims.pop((req.request_id, endpoint.address), None)
        # (``_batch`` inlined: once per request) these start decoding now
        inf = endpoint.inflight
        n = inf.decoding
        met = endpoint.metrics
        if met.updated_at is not None and first - met.updated_at <= self.handle.staleness:
            n = max(n, met.running_requests)
        track.batch_at_first = float(n) + track.seqs
        # (``max(0, ...)`` as comparisons: these run on every request)
        left = inf.pending_prefill_tokens - track.prefill
        inf.pending_prefill_tokens = left if left > 0 else 0
        left = inf.unstarted_tokens - track.sent
        inf.unstarted_tokens = left if left > 0 else 0
        inf.decoding += track.seqs
        inf.started += track.seqs

    def _end(
        self, req: InferenceRequest, endpoint: Endpoint, track: _Track, usage: Usage | None, ok: bool
    ) -> None:
        """``on_finished`` for ``track``, already taken out of ``_tracks``."""
        now = self.clock()  # (one reading for the whole finish)
        # The decode pace is learned from this response when ``SpeedEstimator.observe`` would use the
        # sample (its guards, asked here: most answers are too short or too quick, and the batch is read
        # only for a sample it takes), with the batch as it was before this request's release.
        per_seq = -1  # (no usage to learn from)
        batch_at_last: float | None = None
        if ok and usage is not None and usage.completion_tokens > 0:
            per_seq = usage.completion_tokens // track.seqs  # (the usage sums every choice's)
            if (
                track.first_token
                and per_seq >= MIN_TOKENS
                and (now - track.first_at) / (per_seq - 1) >= MIN_S_PER_TOKEN
            ):
                batch_at_last = self._batch(endpoint, now)
        if track.stop is not None:
            self._victims.pop((req.request_id, endpoint.address), None)
        self._release(endpoint.address, endpoint, track)
        if track.flow is not None:
            self._flow_ended(track)
        if self.flow is not None or self.predecessor is not None:
            self._notify(endpoint.address)
        if self._observers:
            out = usage.completion_tokens if usage is not None else 0
            if ok and usage is not None:
                for obs in self._usage_observers:  # (``on_usage``)
                    obs.on_usage(req, endpoint, usage, now)
            for obs in self._observers:
                obs.on_finished(req, endpoint, out, ok, now)
        if per_seq >= 0:
            if batch_at_last is not None:
                self.speed.observe(
                    endpoint, now - track.first_at, per_seq, (track.batch_at_first + batch_at_last) / 2
                )
            if req.max_tokens is None:  # (a limited one, e.g. completions' default 16, is no sample)
                self.mean_decode += 0.05 * (per_seq - self.mean_decode)

    def on_usage(self, req: InferenceRequest, endpoint: Endpoint, usage: Usage) -> None:
        """The engine's usage for a request as soon as it is known (the simulator knows the cached tokens
        at prefill; a door passes its final usage through ``on_finished``). Observers take the first
        they are given (e.g. the engine's cached tokens correct the prefix index) and ignore repeats."""
        now = self.clock()
        for obs in self._usage_observers:
            obs.on_usage(req, endpoint, usage, now)

    def on_prefilled(self, req: InferenceRequest, endpoint: Endpoint) -> None:
        """A 2xx reply whose usage the door did not read (too large to hold, passed through): the engine
        ran its prefill (``ResponseObserver.on_prefilled``); before ``on_finished``."""
        if self._prefill_observers:
            now = self.clock()
            for obs in self._prefill_observers:
                obs.on_prefilled(req, endpoint, now)

    def _batch(self, endpoint: Endpoint, now: float) -> float:
        """Sequences decoding on ``endpoint``: this picker's own count, or the fresh scraped running count
        when larger (traffic from other gateways)."""
        n = endpoint.inflight.decoding
        met = endpoint.metrics
        if met.updated_at is not None and now - met.updated_at <= self.handle.staleness:
            n = max(n, met.running_requests)
        return float(n)

    @staticmethod
    def _unmark(endpoint: Endpoint, track: _Track) -> None:
        """A certain miss sent to ``endpoint`` started (or ended before it did): fewer pending there."""
        inf = endpoint.inflight
        n = inf.certain_misses - track.seqs
        inf.certain_misses = n if n > 0 else 0

    def _flow_ended(self, track: _Track) -> None:
        """A tracked request ended: finished, a preempted victim or a forgotten track. Each end gives
        its slot back (``fairShareRunningReserve`` counts them all)."""
        if track.flow is not None and self.flow is not None:
            self.flow.ctl.ended(track.flow, self.clock(), track.seqs)

    def _release(self, address: str, endpoint: Endpoint | None, track: _Track) -> None:
        if track.keys is not None:
            self._held.release(address, track.keys.keys)
        if endpoint is None:
            return
        if track.miss and not track.first_token:
            self._unmark(endpoint, track)
        inf = endpoint.inflight
        # (``max(0, ...)`` as comparisons: these run on every request)
        left = inf.requests - track.seqs
        inf.requests = left if left > 0 else 0
        left = inf.calls - 1
        inf.calls = left if left > 0 else 0
        if track.first_token:
            left = inf.decoding - track.seqs
            inf.decoding = left if left > 0 else 0
        else:
            left = inf.pending_prefill_tokens - track.prefill
            inf.pending_prefill_tokens = left if left > 0 else 0
            left = inf.unstarted_tokens - track.sent
            inf.unstarted_tokens = left if left > 0 else 0
        left = inf.pending_decode_tokens - track.decode
        inf.pending_decode_tokens = left if left > 0 else 0

    # -- pool gauges --------------------------------------------------------------------------------

    def update_pool_metrics(self, pool: str | None = None) -> None:
        """Refresh the ``inference_pool_*`` gauges (call after each scrape round, not per pick): ready
        endpoints by ``datalayer.health.ready_endpoints``, the averages over those (0 over none, as the
        ``llm_d_epp_*`` twins and ``inference_pool_average_running_requests`` read); drop the picks
        series of endpoints gone from every picker's store."""
        by_pool: dict[str, list[Endpoint]] = {}
        for ep in self.store.all():
            if pool is None or ep.pool == pool:
                by_pool.setdefault(ep.pool, []).append(ep)
        # A pool shown with ready endpoints whose last endpoint left the store (NotReady, deleted, its
        # InferencePool gone): its gauges go to 0 and its per-endpoint series go (review s31-qa31 Q2).
        for name in self._per_pod:
            if name not in by_pool and (pool is None or name == pool):
                by_pool[name] = []
        if pool is not None:  # (a pool asked by name reads 0 with no endpoint, never seen or not)
            by_pool.setdefault(pool, [])
        now = self.clock()
        for name, eps in by_pool.items():
            # The health model routing uses (scrape failures, staleness), not only the ejection flag.
            ready = ready_endpoints(eps, now, self.health) if eps else []
            if (bound := self.gauge_staleness_s) is not None:
                ready = [e for e in ready if (t := e.metrics.updated_at) is not None and now - t <= bound]
            n = len(ready)
            metrics.POOL_READY.labels(name=name).set(n)
            metrics.POOL_KV.labels(name=name).set(sum(e.metrics.kv_cache_usage for e in ready) / (n or 1))
            metrics.POOL_QUEUE.labels(name=name).set(
                sum(e.metrics.waiting_queue_size for e in ready) / (n or 1)
            )
            self._per_pod_queues(name, ready)
        metrics.trim_picks()  # (and an endpoint no store holds, its picks series)

    def take_series(self, other: Director) -> None:
        """Remove, when their endpoints go, the per-endpoint queue series ``other`` has shown (a picker
        swap: the Gauge children are process-wide, and a new Director that never saw them would leave
        them at their last value for good; review s27-rev-fixes27a F3). The same map: only the serving
        Director updates it, and a dropped swap leaves the old one's intact."""
        self._per_pod = other._per_pod

    def _per_pod_queues(self, pool: str, ready: list[Endpoint]) -> None:
        """``inference_pool_per_pod_queue_size`` (and llm-d's ``llm_d_epp_per_endpoint_queue_size``) for
        the ready endpoints (as the reference: those with fresh metrics); a series whose endpoint is no
        longer ready goes."""
        shown = self._per_pod.pop(pool, {})
        now: dict[tuple[str, str], tuple[Any, Any]] = {}
        for e in ready:
            # The reference's name for a discovered pod's endpoint; a static endpoint has only its address.
            key = (e.name or e.address, e.address)
            series = shown.pop(key, None) or (
                metrics.POOL_PER_POD_QUEUE.labels(pool, key[0]),
                metrics.LLMD_PER_ENDPOINT_QUEUE.labels(pool, key[1]),
            )
            q = e.metrics.waiting_queue_size
            series[0].set(q)
            series[1].set(q)
            now[key] = series
        # (no longer ready, or renamed; a StatefulSet pod back under its name at a new address keeps the
        # series its name labels)
        pods, addresses = {k[0] for k in now}, {k[1] for k in now}
        for pod, address in shown:
            if pod not in pods:
                metrics.POOL_PER_POD_QUEUE.remove(pool, pod)
            if address not in addresses:
                metrics.LLMD_PER_ENDPOINT_QUEUE.remove(pool, address)
        if now:
            self._per_pod[pool] = now
