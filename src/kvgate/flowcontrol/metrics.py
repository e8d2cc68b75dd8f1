"""Flow-control metrics (default Prometheus registry), by priority band and flow.

Names follow the reference's flow-control metrics. The flow label is the client-supplied fairness id,
so its cardinality is capped: after ``MAX_FLOW_LABELS`` distinct ids, new flows are reported as
``other`` (a client cannot grow the metrics without bound by inventing ids).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

MAX_FLOW_LABELS = 64
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


class FlowMetrics:
    """Records into the module's collectors; ``FlowMetrics(None)`` records nothing (simulations)."""

    def __init__(self, enabled: bool | None = True) -> None:
        self.enabled = bool(enabled)
        self._flows: set[str] = set()

    def _flow(self, flow: str) -> str:
        if flow in self._flows:
            return flow
        if len(self._flows) >= MAX_FLOW_LABELS:
            return OTHER_FLOW
        self._flows.add(flow)
        return flow

    def queued(self, priority: int, flow: str, delta: int) -> None:
        if self.enabled:
            QUEUE_SIZE.labels(str(priority), self._flow(flow)).inc(delta)

    def outcome(self, priority: int, flow: str, outcome: str, waited: float) -> None:
        if self.enabled:
            f = self._flow(flow)
            OUTCOMES.labels(str(priority), f, outcome).inc()
            QUEUE_DURATION.labels(str(priority), f, outcome).observe(waited)

    def preempted(self, priority: int, flow: str) -> None:
        if self.enabled:
            PREEMPTIONS.labels(str(priority), self._flow(flow)).inc()
