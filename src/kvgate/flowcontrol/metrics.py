"""Flow-control metrics (default Prometheus registry), by priority band and flow.

Names follow the reference's flow-control metrics. The flow label is the client-supplied fairness id,
so its cardinality is bounded, process-wide (every pool and every config reload share one set):
- at most ``MAX_FLOW_LABELS`` ids have a label of their own; every other id is reported as ``other``;
- the labelled ids are the busiest: requests leaving the queue are counted per id in a Space-Saving
  summary of ``FLOW_CANDIDATES`` ids (an id not in it replaces the least counted one, and inherits its
  count: a heavy id enters within a few of its requests, a spray of one-shot ids keeps only
  ``FLOW_CANDIDATES`` entries), and every ``RELABEL_EVERY`` of those requests the labels go to the
  ``MAX_FLOW_LABELS`` most counted (ties: the ids labelled already), then the counts are halved, so the
  choice follows the last few thousand requests; until the labels are all taken, a new id takes one
  at its first request;
- an id that loses its label has its series removed (its counters restart from 0 if it gets one
  again: Prometheus' ``rate`` reads that as a counter reset) and its queued requests move to ``other``'s
  gauge, so the queue-size gauges always add up to the requests queued.
So the flow label takes at most ``MAX_FLOW_LABELS + 1`` values at any time, whatever ids clients send
(review s10-fc: the old cap, 64 first-come ids per flow controller, grew by 64 at every pool and
reload and kept a sprayer's ids for ever).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

MAX_FLOW_LABELS = 16
FLOW_CANDIDATES = 4 * MAX_FLOW_LABELS
RELABEL_EVERY = 256
OTHER_FLOW = "other"

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
        self, size: int = MAX_FLOW_LABELS, candidates: int = FLOW_CANDIDATES, every: int = RELABEL_EVERY
    ) -> None:
        self.size, self.candidates, self.every = size, max(size, candidates), every
        self.counts: dict[str, float] = {}  # the Space-Saving summary: id -> requests (over-estimated)
        self.labelled: set[str] = set()
        self.queued: dict[str, dict[str, int]] = {}  # id -> priority -> requests queued (> 0 only)
        self.series: dict[str, set[tuple[str, ...]]] = {}  # labelled id -> its series' other labels
        self._events = 0

    def label(self, flow: str) -> str:
        """``flow``'s label: its own (taking a free one), else ``other``."""
        if flow not in self.labelled and len(self.labelled) < self.size:
            self._enter(flow)
        return flow if flow in self.labelled else OTHER_FLOW

    def count(self, flow: str) -> None:
        """A request of ``flow`` left the queue (or was refused at it)."""
        counts = self.counts
        if flow in counts:
            counts[flow] += 1.0
        elif len(counts) < self.candidates:
            counts[flow] = 1.0
        else:  # (O(FLOW_CANDIDATES), bounded)
            low = min(counts, key=counts.__getitem__)
            counts[flow] = counts.pop(low) + 1.0
        self._events += 1
        if self._events >= self.every:
            self.relabel()

    def relabel(self) -> None:
        self._events = 0
        labelled, counts = self.labelled, self.counts
        ranked = sorted(counts, key=lambda f: (counts[f], f in labelled), reverse=True)
        top = set(ranked[: self.size])
        for flow in [f for f in labelled if f not in top]:
            self._leave(flow)
        for flow in top:
            if flow not in labelled:
                self._enter(flow)
        for flow in counts:
            counts[flow] *= 0.5

    def queue(self, priority: str, flow: str, delta: int) -> None:
        label = self.label(flow)
        by = self.queued.setdefault(flow, {})
        n = by.get(priority, 0) + delta
        if n > 0:
            by[priority] = n
        else:
            by.pop(priority, None)
            if not by:
                del self.queued[flow]
        QUEUE_SIZE.labels(priority, label).inc(delta)
        if flow in self.labelled:
            self.series[flow].add(("q", priority))

    def recorded(self, flow: str, key: tuple[str, ...]) -> None:
        if flow in self.labelled:
            self.series[flow].add(key)

    def _move_queued(self, flow: str, src: str, dst: str) -> None:
        for priority, n in self.queued.get(flow, {}).items():
            QUEUE_SIZE.labels(priority, src).dec(n)
            QUEUE_SIZE.labels(priority, dst).inc(n)

    def _enter(self, flow: str) -> None:
        self.labelled.add(flow)
        self.series[flow] = set()
        self._move_queued(flow, OTHER_FLOW, flow)
        for priority in self.queued.get(flow, {}):
            self.series[flow].add(("q", priority))

    def _leave(self, flow: str) -> None:
        self._move_queued(flow, flow, OTHER_FLOW)
        self.labelled.discard(flow)
        for key in self.series.pop(flow, ()):
            kind, priority, *rest = key
            try:
                if kind == "q":
                    QUEUE_SIZE.remove(priority, flow)
                elif kind == "o":
                    OUTCOMES.remove(priority, flow, rest[0])
                    QUEUE_DURATION.remove(priority, flow, rest[0])
                else:
                    PREEMPTIONS.remove(priority, flow)
            except KeyError:
                pass


LABELS = FlowLabels()


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
            labels, p = self.labels, str(priority)
            labels.count(flow)
            f = labels.label(flow)
            OUTCOMES.labels(p, f, outcome).inc()
            QUEUE_DURATION.labels(p, f, outcome).observe(waited)
            labels.recorded(flow, ("o", p, outcome))

    def preempted(self, priority: int, flow: str) -> None:
        if self.enabled:
            labels, p = self.labels, str(priority)
            PREEMPTIONS.labels(p, labels.label(flow)).inc()
            labels.recorded(flow, ("p", p))
