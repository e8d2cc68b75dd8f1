"""Flow-control metrics (default Prometheus registry), by priority band and flow.

Names follow the reference's flow-control metrics. The flow label is the client-supplied fairness id,
so its values are bounded, process-wide (every pool and every config reload share one set), by a
sticky rule that keeps Prometheus' counter semantics (review s11-fc H1, H2, M1; the rule's code is
``kvgate.stickylabels``, which llm-d's per-request families' ``FairnessLabels`` share):
- an id earns a label of its own once it has been counted ``PROMOTE_AT`` times, at most
  ``MAX_FLOW_LABELS`` ids per process; every other id is reported as ``other``, and so is an id that
  is literally ``other`` (it never gets a label apart from the aggregate's); the default flow
  (``default-flow``, a request that names none) always has its own, outside the ``MAX_FLOW_LABELS``;
- a label once given is never taken away: no series is ever removed, every counter is monotonic;
- the requests an id made before its promotion stay counted under ``other`` (nothing is counted
  twice, and its own series starts at 0); its queued requests move from ``other``'s queue-size gauge
  to its own, so the gauges always add up to the requests queued;
- the count: each outcome recorded for an id without a label (a request that leaves the queue or is
  refused at it, and an attempt ``holdPredictedMisses`` turns back, which stays queued), in a
  Space-Saving table of ``FLOW_CANDIDATES`` ids (an id not in it replaces the least counted one and
  inherits that count as its error). An id is promoted on its *guaranteed* count (count minus error),
  which only grows with the id's own requests since it entered the table: a spray of ids each sent
  fewer than ``PROMOTE_AT`` times is never promoted, however long it lasts. Once the labels are all
  given the table is dropped and nothing more is counted.
So the flow label takes at most ``MAX_FLOW_LABELS + 2`` values over the process's whole life, whatever
ids clients send. The cost: a tenant that first shows up after 16 others earned their labels stays in
``other`` until the process restarts (aggregate by the id at the trusted edge that sets it).
The two ``inference_extension_`` families carry the reference's ``inference_pool`` (the pool this flow
controller serves: ``FlowMetrics.pool``), ``model_name`` (the client's) and ``target_model_name`` (after a
rewrite) labels too; the model names are bounded by the same rule, in a table of their own
(``FlowLabels.models``), counted once per outcome as client name and as target. The queue gauge is
computed at the scrape from the requests queued now, by their labels then, and so is its bytes twin
(``inference_extension_flow_control_queue_bytes``: the queued requests' sizes as the queue limits count
them). ``inference_extension_flow_control_pool_saturation{inference_pool}`` is the pool's saturation
detector's score at the scrape (review s26-qa F3).
Each is exported under llm-d's current name too (``llm_d_epp_flow_control_*``: llm-d-router's
``pkg/epp/metrics`` marks the ``inference_extension_`` ones deprecated; qa32b Q7), the same values, labels
and buckets; llm-d's pool saturation adds ``stage`` (``effective`` here: the one score the gate reads).
(Before: 8cf0a73's top-16 relabelling every 256 requests removed demoted ids' series, losing their
increments and resetting counters, and handed labels to one-shot ids; before that, 64 first-come ids
per flow controller.)
"""

from __future__ import annotations

import itertools
import math
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric

from kvgate.scheduling.fastmetrics import Hist
from kvgate.stickylabels import CANDIDATES as FLOW_CANDIDATES
from kvgate.stickylabels import DEFAULT_FLOW as DEFAULT_FLOW
from kvgate.stickylabels import MAX_LABELS as MAX_FLOW_LABELS
from kvgate.stickylabels import OTHER, StickyLabels
from kvgate.stickylabels import PROMOTE_AT as PROMOTE_AT
from kvgate.weakmembers import members

if TYPE_CHECKING:
    from kvgate.scheduling.types import InferenceRequest

# ``DEFAULT_FLOW`` (a request that names none) always has its own label, outside ``MAX_FLOW_LABELS``, as on
# llm-d's per-request families (``openai.labels.FairnessLabels``) and as the reference labels it (review
# s19-qa2 L1: before, ``other`` here until 32 of its outcomes).

# The reference's label sets (GIE / llm-d-router ``pkg/epp/metrics``: ``fairness_id``, ``priority``
# [, ``outcome``], ``inference_pool``, ``model_name``, ``target_model_name``) and its queue-duration buckets
# (100 us .. 60 s).
QUEUE_LABELS = ("fairness_id", "priority", "inference_pool", "model_name", "target_model_name")
QUEUE_DURATION_BUCKETS = (
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
QUEUE_DURATION_LABELS = (*QUEUE_LABELS[:2], "outcome", *QUEUE_LABELS[2:])  # (outcome after the flow's)
QUEUE_DURATION = Histogram(
    "inference_extension_flow_control_request_queue_duration_seconds",
    "Time a request spent in the flow controller, by outcome.",
    QUEUE_DURATION_LABELS,
    buckets=QUEUE_DURATION_BUCKETS,
)


class _LlmdQueueDuration:
    """``llm_d_epp_flow_control_request_queue_duration_seconds`` (llm-d's current name: the module
    docstring): ``QUEUE_DURATION``'s samples under that name, read at the scrape, as the scheduler's twin
    (``scheduling.metrics._LlmdSchedulerE2E``): no second observation per request (review rev-d32 F2)."""

    name = "llm_d_epp_flow_control_request_queue_duration_seconds"
    doc = (
        "Distribution of total time requests spend in the Flow Control layer (from enqueue to final outcome)."
    )

    def describe(self) -> list[Metric]:
        return [HistogramMetricFamily(self.name, self.doc, labels=QUEUE_DURATION_LABELS)]

    def collect(self) -> Iterator[Metric]:
        for fam in QUEUE_DURATION.collect():
            twin = Metric(self.name, self.doc, fam.type, fam.unit)
            cut = len(fam.name)  # (each sample's suffix kept: _bucket, _count, _sum, _created)
            twin.samples = [s._replace(name=self.name + s.name[cut:]) for s in fam.samples]
            yield twin


LLMD_QUEUE_DURATION = _LlmdQueueDuration()
REGISTRY.register(LLMD_QUEUE_DURATION)
# llm-d-router's enqueue and dispatch-cycle histograms (``pkg/epp/metrics``: the same buckets, 100 us ..
# 100 ms, for both; qa36b-F2), exported under both its names from one set of lock-free series
# (``fastmetrics.Hist``): one observe per request (enqueue) and per dispatch pass, nothing more.
FAST_BUCKETS = (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)
ENQUEUE_LABELS = ("fairness_id", "priority", "outcome")
# llm-d-router's outcome of a request its enqueue left in the queue (decided later, at dispatch or eviction).
NOT_YET_FINALIZED = "NotYetFinalized"
_PREFIXES = ("inference_extension_", "llm_d_epp_")


class _EnqueueAndCycle:
    """``{inference_extension_,llm_d_epp_}flow_control_request_enqueue_duration_seconds{fairness_id,
    priority, outcome}`` and ``..._dispatch_cycle_duration_seconds`` (no labels), built at the scrape from
    ``enqueue`` (outcome -> priority -> fairness-id label -> series: looked up without building a key) and
    ``cycle``. The fairness-id labels are the flow families' own (``FlowLabels``): bounded the same way."""

    enqueue_doc = "Distribution of time taken to enqueue requests into the Flow Control layer."
    cycle_doc = "Distribution of time taken for each internal dispatch cycle in the Flow Control layer."

    def __init__(self) -> None:
        self.enqueue: dict[str, dict[int, dict[str, Hist]]] = {}
        self.cycle = Hist(FAST_BUCKETS)

    def series(self, outcome: str, priority: int, flow_label: str) -> Hist:
        by_priority = self.enqueue.get(outcome)
        if by_priority is None:
            by_priority = self.enqueue[outcome] = {}
        by_flow = by_priority.get(priority)
        if by_flow is None:
            by_flow = by_priority[priority] = {}
        h = by_flow.get(flow_label)
        if h is None:
            h = by_flow[flow_label] = Hist(FAST_BUCKETS)
        return h

    def describe(self) -> list[Metric]:
        out: list[Metric] = []
        for prefix in _PREFIXES:
            enq = prefix + "flow_control_request_enqueue_duration_seconds"
            out.append(HistogramMetricFamily(enq, self.enqueue_doc, labels=ENQUEUE_LABELS))
            out.append(
                HistogramMetricFamily(prefix + "flow_control_dispatch_cycle_duration_seconds", self.cycle_doc)
            )
        return out

    def collect(self) -> Iterator[Metric]:
        rows = [
            ([flow, str(priority), outcome], h.cumulative(), h.sum)
            for outcome, by_priority in list(self.enqueue.items())
            for priority, by_flow in list(by_priority.items())
            for flow, h in list(by_flow.items())
        ]
        cycle = (self.cycle.cumulative(), self.cycle.sum)
        for prefix in _PREFIXES:
            fam = HistogramMetricFamily(
                prefix + "flow_control_request_enqueue_duration_seconds",
                self.enqueue_doc,
                labels=ENQUEUE_LABELS,
            )
            for labels, buckets, total in rows:
                fam.add_metric(labels, buckets, total)
            yield fam
            fam = HistogramMetricFamily(
                prefix + "flow_control_dispatch_cycle_duration_seconds", self.cycle_doc, labels=[]
            )
            fam.add_metric([], *cycle)
            yield fam


ENQUEUE_AND_CYCLE = _EnqueueAndCycle()
REGISTRY.register(ENQUEUE_AND_CYCLE)
OUTCOMES = Counter(
    "kvgate_flow_control_requests_total",
    "Requests that left the flow controller, by outcome (Dispatched, RejectedCapacity, EvictedTTL, ...).",
    ["priority", "fairness_id", "outcome"],
)
PREEMPTIONS = Counter(
    "kvgate_flow_control_preemptions_total",
    "Sheddable requests stopped before their first token to place a more important one (the victim's "
    "priority and flow).",
    ["priority", "fairness_id"],
)
OTHER_FLOW = OTHER  # every fairness id without a label of its own
# A request's model labels when its request is not known to the caller (``FlowMetrics``' ``req`` None).
NO_MODEL = ""
# The queue's raw key: (priority, fairness id, pool, model name, target model name), the names as sent.
_QueueKey = tuple[str, str, str, str, str]


class FlowLabels(StickyLabels):
    """Which fairness ids have a label of their own (the module docstring; the rule is
    ``kvgate.stickylabels``, shared with llm-d's per-request families); one per process. Beside it, the
    model names' labels (``models``: the same rule, its own 16, the empty name always its own) and the
    requests queued per raw (priority, id, pool, model, target): the queue-size gauge maps them to their
    labels when scraped, so a promoted id's or name's queued requests are under its own label at once and
    the gauges always add up to the requests queued."""

    def __init__(
        self, size: int = MAX_FLOW_LABELS, candidates: int = FLOW_CANDIDATES, promote_at: int = PROMOTE_AT
    ) -> None:
        super().__init__(size, candidates, promote_at)
        self.models = StickyLabels(size, candidates, promote_at, default=NO_MODEL)
        self.queued: dict[_QueueKey, tuple[int, int]] = {}  # (requests, bytes); requests > 0 only
        _QUEUES.add(self)

    def queue(self, key: _QueueKey, delta: int, size: int = 0) -> None:
        """``delta`` requests of ``size`` bytes each joined (> 0) or left (< 0) the queue under ``key``."""
        n, b = self.queued.get(key, (0, 0))
        n += delta
        if n > 0:
            self.queued[key] = (n, b + delta * size)
        else:
            self.queued.pop(key, None)

    def gauges(self, into: dict[tuple[str, ...], list[int]]) -> None:
        """Adds this instance's queued requests and bytes into ``into`` by their labels now
        (``QUEUE_LABELS``)."""
        label, model = self.label, self.models.label
        for (priority, flow, pool, m, t), (n, b) in list(self.queued.items()):
            key = (label(flow), priority, pool, model(m), model(t))
            row = into.get(key)
            if row is None:
                into[key] = [n, b]
            else:
                row[0] += n
                row[1] += b


class _QueueSize:
    """``inference_extension_flow_control_queue_size`` and ``..._queue_bytes``: every ``FlowLabels``'
    queued requests and their bytes by their labels at the scrape. A series once shown stays, at 0 when
    nothing is queued under it (as a gauge's child did); bounded as the labels are."""

    def __init__(self) -> None:
        self.shown: set[tuple[str, ...]] = set()

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        now: dict[tuple[str, ...], list[int]] = {}
        for labels in members(_QUEUES):
            labels.gauges(now)
        self.shown.update(now)
        size = GaugeMetricFamily(
            "inference_extension_flow_control_queue_size",
            "Requests waiting in the flow controller.",
            labels=QUEUE_LABELS,
        )
        nbytes = GaugeMetricFamily(
            "inference_extension_flow_control_queue_bytes",
            "Bytes of the requests waiting in the flow controller (their bodies, as the queue's maxBytes "
            "counts them).",
            labels=QUEUE_LABELS,
        )
        llmd_size = GaugeMetricFamily(
            "llm_d_epp_flow_control_queue_size",
            "Current number of requests actively held in the Flow Control queue.",
            labels=QUEUE_LABELS,
        )
        llmd_bytes = GaugeMetricFamily(
            "llm_d_epp_flow_control_queue_bytes",
            "Current total size in bytes of requests actively held in the Flow Control queue.",
            labels=QUEUE_LABELS,
        )
        for key in sorted(self.shown):
            n, b = now.get(key, (0, 0))
            values = list(key)
            size.add_metric(values, n)
            nbytes.add_metric(values, b)
            llmd_size.add_metric(values, n)
            llmd_bytes.add_metric(values, b)
        yield size
        yield nbytes
        yield llmd_size
        yield llmd_bytes


class _PoolSaturation:
    """``inference_extension_flow_control_pool_saturation{inference_pool}``: each flow-controlled pool's
    saturation detector score at the scrape (the mean of its endpoints' scores; 1.0 = the dispatch gate
    closes). A pool with no endpoint reads 1.0 (nothing can be dispatched; the detector's own score is
    infinite), one without a detector 0.0 (its gate never closes). Of several flow controllers serving one
    pool name the newest is shown. A reload's swap removes the old picker's series at once
    (``unwatch_saturation``: flow control turned off for the pool shows none); a flow controller no longer
    referenced otherwise goes when it is collected."""

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        newest: dict[str, FlowMetrics] = {}
        for fm in members(_SATURATIONS):
            cur = newest.get(fm.pool)
            if cur is None or fm.order > cur.order:
                newest[fm.pool] = fm
        fam = GaugeMetricFamily(
            "inference_extension_flow_control_pool_saturation",
            "Current saturation level of the inference pool (0.0 = empty, 1.0 = fully saturated).",
            labels=("inference_pool",),
        )
        # llm-d's: its ``stage`` splits a disaggregated pool's prefill and decode signals; ``effective`` is
        # the one the gate reads, the only one here
        llmd = GaugeMetricFamily(
            "llm_d_epp_flow_control_pool_saturation",
            "Pool saturation signal gating Flow Control dispatch (stage effective: the value the gate reads; "
            "1.0 is the gating set point).",
            labels=("inference_pool", "stage"),
        )
        for pool in sorted(newest):
            source = newest[pool].saturation
            if source is None:
                continue
            value = source()
            value = 1.0 if math.isinf(value) else value
            fam.add_metric([pool], value)
            llmd.add_metric([pool, "effective"], value)
        yield fam
        yield llmd


_QUEUES: weakref.WeakSet[FlowLabels] = weakref.WeakSet()
QUEUE_SIZE = _QueueSize()
REGISTRY.register(QUEUE_SIZE)
# Every recording ``FlowMetrics`` with a saturation source (``watch_saturation``), by creation order.
_SATURATIONS: weakref.WeakSet[FlowMetrics] = weakref.WeakSet()
_ORDER = itertools.count()
POOL_SATURATION = _PoolSaturation()
REGISTRY.register(POOL_SATURATION)
LABELS = FlowLabels()
# The outcome collectors' children by (priority, flow label, outcome, pool, model labels), looked up once:
# every request records an outcome (one admitted at once too, review s19-qa L3), and ``labels()`` costs a
# few microseconds a call. Bounded as the series are (priorities x 18 flow labels x outcomes x pools x 18 x
# 18 model labels); a label's series is never removed. The third: its enqueue-duration series, once an
# admission ended under that outcome (``outcome``'s ``enqueue``).
_CHILDREN: dict[tuple[int, str, str, str, str, str], list[Any]] = {}


class FlowMetrics:
    """Records into the module's collectors; ``FlowMetrics(None)`` records nothing (simulations).
    ``labels``: the label choice (the process's ``LABELS``; tests pass their own); ``pool``: the
    ``inference_pool`` label (the pool this flow controller serves; empty when none is named). ``req``:
    the request (its ``model`` is the target model, ``client_model`` the name the client sent when a
    rewrite changed it); None: empty model labels."""

    def __init__(self, enabled: bool | None = True, labels: FlowLabels | None = None, pool: str = "") -> None:
        self.enabled = bool(enabled)
        self.labels = labels or LABELS
        self.pool = pool
        self.order = next(_ORDER)
        self.saturation: Callable[[], float] | None = None

    def watch_saturation(self, source: Callable[[], float]) -> None:
        """Report ``source()`` (the pool's saturation score now) as the pool's saturation gauge at each
        scrape, while this ``FlowMetrics`` lives (the flow controller that holds it)."""
        if self.enabled:
            self.saturation = source
            _SATURATIONS.add(self)

    def unwatch_saturation(self) -> None:
        """The pool's saturation gauge no longer reads this one, from the next scrape: a reload's swap
        calls it on the old picker's (a predecessor draining, or flow control turned off), not left to the
        cycle collector, which may keep it for minutes (review s26-rev-fixqa26b F2)."""
        self.saturation = None
        _SATURATIONS.discard(self)

    def _models(self, req: InferenceRequest | None) -> tuple[str, str]:
        """``req``'s (model name, target model name) as sent."""
        if req is None:
            return NO_MODEL, NO_MODEL
        return req.client_model or req.model, req.model

    def queued(
        self, priority: int, flow: str, delta: int, req: InferenceRequest | None = None, size: int = 0
    ) -> None:
        """``delta`` requests of ``size`` bytes (the queue's count of each) joined or left the queue."""
        if self.enabled:
            m, t = self._models(req)
            self.labels.queue((str(priority), flow, self.pool, m, t), delta, size)

    def outcome(
        self,
        priority: int,
        flow: str,
        outcome: str,
        waited: float,
        req: InferenceRequest | None = None,
        enqueue: float | None = None,
    ) -> None:
        """``enqueue``: the seconds its admission took, when it ends there (admitted at once, or refused
        at the queue's limits): observed on the enqueue histogram under the same outcome."""
        if self.enabled:
            labels = self.labels
            labels.count(flow)
            m, t = self._models(req)
            models = labels.models
            models.count(t)
            if m != t:
                models.count(m)
            key = (priority, labels.label(flow), outcome, self.pool, models.label(m), models.label(t))
            children = _CHILDREN.get(key)
            if children is None:
                p, f = str(priority), key[1]
                children = _CHILDREN[key] = [
                    OUTCOMES.labels(p, f, outcome),
                    QUEUE_DURATION.labels(f, p, outcome, self.pool, key[4], key[5]),
                    None,
                ]
            children[0].inc()
            children[1].observe(waited)
            if enqueue is not None:
                h = children[2]
                if h is None:
                    h = children[2] = ENQUEUE_AND_CYCLE.series(outcome, priority, key[1])
                h.observe(enqueue)

    def enqueued(self, priority: int, flow: str, seconds: float) -> None:
        """A request's admission that queued it took ``seconds`` (outcome ``NotYetFinalized``, as
        llm-d-router's enqueue records a request it leaves queued)."""
        if self.enabled:
            ENQUEUE_AND_CYCLE.series(NOT_YET_FINALIZED, priority, self.labels.label(flow)).observe(seconds)

    def cycle(self, seconds: float) -> None:
        """One dispatch pass (expiry, then dispatch while the gate allows) took ``seconds``."""
        if self.enabled:
            ENQUEUE_AND_CYCLE.cycle.observe(seconds)

    def preempted(self, priority: int, flow: str) -> None:
        if self.enabled:
            PREEMPTIONS.labels(str(priority), self.labels.label(flow)).inc()
