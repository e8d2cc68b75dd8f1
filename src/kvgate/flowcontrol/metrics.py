"""Flow-control metrics (default Prometheus registry), by priority band and flow.

Names follow the reference's flow-control metrics. The flow label is the client-supplied fairness id,
so its values are bounded, process-wide (every pool and every config reload share one set), by a
sticky rule that keeps Prometheus' counter semantics (review s11-fc H1, H2, M1):
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
(Before: 8cf0a73's top-16 relabelling every 256 requests removed demoted ids' series, losing their
increments and resetting counters, and handed labels to one-shot ids; before that, 64 first-come ids
per flow controller.)
"""

from __future__ import annotations

import heapq
from itertools import count as _sequence
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

MAX_FLOW_LABELS = 16
FLOW_CANDIDATES = 4 * MAX_FLOW_LABELS
PROMOTE_AT = 32
OTHER_FLOW = "other"
# The flow of a request that names none (GIE's ``x-gateway-inference-fairness-id`` default): always its own
# label, outside ``MAX_FLOW_LABELS``, as on llm-d's per-request families (``openai.labels.FairnessLabels``)
# and as the reference labels it (review s19-qa2 L1: before, ``other`` here until 32 of its outcomes).
DEFAULT_FLOW = "default-flow"

QUEUE_SIZE = Gauge(
    "inference_extension_flow_control_queue_size",
    "Requests waiting in the flow controller.",
    ["priority", "fairness_id"],
)
QUEUE_DURATION = Histogram(
    "inference_extension_flow_control_request_queue_duration_seconds",
    "Time a request spent in the flow controller, by outcome.",
    ["priority", "fairness_id", "outcome"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
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


class FlowLabels:
    """Which fairness ids have a label of their own (the module docstring); one per process."""

    def __init__(
        self, size: int = MAX_FLOW_LABELS, candidates: int = FLOW_CANDIDATES, promote_at: int = PROMOTE_AT
    ) -> None:
        self.size, self.candidates, self.promote_at = size, max(1, candidates), max(1, promote_at)
        self.counts: dict[str, list[int]] = {}  # the Space-Saving table: id -> [count, error]
        # The least counted id, found in O(log n) amortised (review s11-fc L3; was a min() over the
        # table per unknown id): a heap of (count when pushed, seq, id), seq the order ids entered the
        # table, one item per id in it plus at most ``size`` of promoted ids. An increment does not
        # touch the heap, so an item's count is a lower bound; a popped item whose count is stale is
        # pushed back with the current one. The first up-to-date item is the least count, ties to the
        # smallest seq, the id that entered the table first: the same choice as a min() over the
        # table in its (insertion) order.
        self.low: list[tuple[int, int, str]] = []
        self.seq = _sequence()
        self.labelled: set[str] = {DEFAULT_FLOW}  # (not one of ``size``)
        self.queued: dict[str, dict[str, int]] = {}  # id -> priority -> requests queued (> 0 only)

    def label(self, flow: str) -> str:
        """``flow``'s label: its own once promoted, else ``other``."""
        return flow if flow in self.labelled else OTHER_FLOW

    def count(self, flow: str) -> None:
        """A request of ``flow`` left the queue (or was refused at it)."""
        if flow in self.labelled or flow == OTHER_FLOW or len(self.labelled) > self.size:
            return
        counts = self.counts
        entry = counts.get(flow)
        if entry is not None:
            entry[0] += 1
        else:
            n = self._evict() if len(counts) >= self.candidates else 0
            counts[flow] = entry = [n + 1, n]
            heapq.heappush(self.low, (n + 1, next(self.seq), flow))
        if entry[0] - entry[1] >= self.promote_at:
            del counts[flow]  # (its heap item goes when popped: its id is no longer in the table)
            self._enter(flow)
            if len(self.labelled) > self.size:  # (the default flow's is not one of ``size``)
                counts.clear()
                self.low.clear()

    def _evict(self) -> int:
        """Drop the least counted id from the full table; its count."""
        counts, low = self.counts, self.low
        while True:
            n, seq, flow = low[0]
            entry = counts.get(flow)
            if entry is None:  # promoted (an evicted id's item leaves with it; a labelled id stays out)
                heapq.heappop(low)
            elif entry[0] != n:  # counted since pushed
                heapq.heapreplace(low, (entry[0], seq, flow))
            else:
                heapq.heappop(low)
                del counts[flow]
                return n

    def queue(self, priority: str, flow: str, delta: int) -> None:
        by = self.queued.setdefault(flow, {})
        n = by.get(priority, 0) + delta
        if n > 0:
            by[priority] = n
        else:
            by.pop(priority, None)
            if not by:
                del self.queued[flow]
        QUEUE_SIZE.labels(priority, self.label(flow)).inc(delta)

    def _enter(self, flow: str) -> None:
        self.labelled.add(flow)
        for priority, n in self.queued.get(flow, {}).items():
            QUEUE_SIZE.labels(priority, OTHER_FLOW).dec(n)
            QUEUE_SIZE.labels(priority, flow).inc(n)


LABELS = FlowLabels()
# The outcome collectors' children by (priority, flow label, outcome), looked up once: every request records
# an outcome (one admitted at once too, review s19-qa L3), and ``labels()`` costs a few microseconds a call.
# Bounded as the series are (priorities x 18 flow labels x outcomes); a label's series is never removed.
_CHILDREN: dict[tuple[int, str, str], tuple[Any, Any]] = {}


class FlowMetrics:
    """Records into the module's collectors; ``FlowMetrics(None)`` records nothing (simulations).
    ``labels``: the label choice (the process's ``LABELS``; tests pass their own)."""

    def __init__(self, enabled: bool | None = True, labels: FlowLabels | None = None) -> None:
        self.enabled = bool(enabled)
        self.labels = labels or LABELS

    def queued(self, priority: int, flow: str, delta: int) -> None:
        if self.enabled:
            self.labels.queue(str(priority), flow, delta)

    def outcome(self, priority: int, flow: str, outcome: str, waited: float) -> None:
        if self.enabled:
            labels = self.labels
            labels.count(flow)
            key = (priority, labels.label(flow), outcome)
            children = _CHILDREN.get(key)
            if children is None:
                p, f = str(priority), key[1]
                children = _CHILDREN[key] = (
                    OUTCOMES.labels(p, f, outcome),
                    QUEUE_DURATION.labels(p, f, outcome),
                )
            children[0].inc()
            children[1].observe(waited)

    def preempted(self, priority: int, flow: str) -> None:
        if self.enabled:
            PREEMPTIONS.labels(str(priority), self.labels.label(flow)).inc()
