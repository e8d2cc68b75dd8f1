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
(Before: 8cf0a73's top-16 relabelling every 256 requests removed demoted ids' series, losing their
increments and resetting counters, and handed labels to one-shot ids; before that, 64 first-come ids
per flow controller.)
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from kvgate.stickylabels import CANDIDATES as FLOW_CANDIDATES
from kvgate.stickylabels import DEFAULT_FLOW as DEFAULT_FLOW
from kvgate.stickylabels import MAX_LABELS as MAX_FLOW_LABELS
from kvgate.stickylabels import OTHER as OTHER_FLOW
from kvgate.stickylabels import PROMOTE_AT as PROMOTE_AT
from kvgate.stickylabels import StickyLabels

# ``DEFAULT_FLOW`` (a request that names none) always has its own label, outside ``MAX_FLOW_LABELS``, as on
# llm-d's per-request families (``openai.labels.FairnessLabels``) and as the reference labels it (review
# s19-qa2 L1: before, ``other`` here until 32 of its outcomes).

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


class FlowLabels(StickyLabels):
    """Which fairness ids have a label of their own (the module docstring; the rule is
    ``kvgate.stickylabels``, shared with llm-d's per-request families); one per process. Beside it, the
    requests queued per id and priority, so a promoted id's queued requests move to its own gauge."""

    def __init__(
        self, size: int = MAX_FLOW_LABELS, candidates: int = FLOW_CANDIDATES, promote_at: int = PROMOTE_AT
    ) -> None:
        super().__init__(size, candidates, promote_at)
        self.queued: dict[str, dict[str, int]] = {}  # id -> priority -> requests queued (> 0 only)

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

    def promoted(self, flow: str) -> None:
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
