"""Session 11 (review s10-fc L1's last point): the flow label of the flow-control metrics is the
client-supplied fairness id; it takes at most ``MAX_FLOW_LABELS + 1`` values per process, whatever ids
clients send, however many pools and reloads, and the labels follow the busiest ids."""

from __future__ import annotations

from prometheus_client import REGISTRY

from kvgate.flowcontrol import metrics as fm
from kvgate.flowcontrol.config import FlowControlConfig
from kvgate.flowcontrol.controller import FlowController
from kvgate.scheduling.types import InferenceRequest

FAMILIES = (
    "inference_extension_flow_control_queue_size",
    "kvgate_flow_control_requests_total",
    "inference_extension_flow_control_request_queue_duration_seconds",
)


def req(rid: str, flow: str, prio: int = 0) -> InferenceRequest:
    return InferenceRequest(rid, "m", prompt_tokens=10, max_tokens=4, priority=prio, fairness_id=flow)


def flow_values(prefix: str) -> set[str]:
    """The fairness-id label values of the flow-control series for ids starting with ``prefix``
    (other tests write into the same registry), ``other`` included."""
    seen: set[str] = set()
    for metric in REGISTRY.collect():
        if metric.name not in FAMILIES and metric.name + "_total" not in FAMILIES:
            continue
        for s in metric.samples:
            f = s.labels.get("fairness_id", "")
            if f.startswith(prefix) or f == fm.OTHER_FLOW:
                seen.add(f)
    return seen


def queued_gauge(prio: str) -> float:
    total = 0.0
    for metric in REGISTRY.collect():
        if metric.name == "inference_extension_flow_control_queue_size":
            total += sum(s.value for s in metric.samples if s.labels["priority"] == prio)
    return total


def test_pools_and_reloads_share_one_bound() -> None:
    """Each Director (pool, reload) builds its own FlowMetrics; the bound is the process's. Before: 64
    first-come ids per instance, so two instances labelled 128 ids."""
    for pool in ("a", "b", "c"):
        ctl = FlowController(FlowControlConfig(), fm.FlowMetrics(True))
        for i in range(100):
            item = ctl.enqueue(req(f"{pool}{i}", f"s11pool-{pool}-{i}", prio=31), 0.0)
            ctl.take(item, 0.1)
    assert len(flow_values("s11pool-") - {fm.OTHER_FLOW}) <= fm.MAX_FLOW_LABELS


def test_a_heavy_id_gets_its_label_after_a_spray_and_the_sprayed_ids_lose_theirs() -> None:
    """A spray of one-shot ids came first (it took every label); a tenant that then sends steadily gets
    its own label, and the sprayed ids' series go. Before: first come, labelled for ever."""
    labels = fm.FlowLabels()
    ctl = FlowController(FlowControlConfig(), fm.FlowMetrics(True, labels))
    for i in range(5000):
        item = ctl.enqueue(req(f"s{i}", f"s11spray-{i}", prio=32), 0.0)
        ctl.take(item, 0.1)
    assert len(labels.labelled) == fm.MAX_FLOW_LABELS
    for i in range(3 * fm.RELABEL_EVERY):
        flow = "s11heavy" if i % 2 else f"s11spray-late-{i}"
        item = ctl.enqueue(req(f"h{i}", flow, prio=32), 1.0)
        ctl.take(item, 1.1)
    assert "s11heavy" in labels.labelled
    values = flow_values("s11")
    assert "s11heavy" in values
    assert len(values - {fm.OTHER_FLOW}) <= fm.MAX_FLOW_LABELS  # the spray's series were removed
    assert len(labels.counts) <= fm.FLOW_CANDIDATES


def test_the_queue_gauges_add_up_through_relabels() -> None:
    """Requests queued under an id that gains or loses its label move with it: the gauges never go
    negative and add up to the requests queued."""
    labels = fm.FlowLabels(size=2, candidates=4, every=8)
    ctl = FlowController(FlowControlConfig(), fm.FlowMetrics(True, labels))
    held = [ctl.enqueue(req(f"q{i}", f"s11g-{i % 5}", prio=33), 0.0) for i in range(20)]
    assert queued_gauge("33") == 20
    for i in range(200):  # churn: other ids come and go, relabelling every 8
        item = ctl.enqueue(req(f"c{i}", f"s11g-{(i * 7) % 11}", prio=33), 1.0)
        ctl.take(item, 1.1)
        assert queued_gauge("33") == 20
        for metric in REGISTRY.collect():
            if metric.name == "inference_extension_flow_control_queue_size":
                assert all(s.value >= 0 for s in metric.samples)
    for item in held:
        ctl.take(item, 2.0)
    assert queued_gauge("33") == 0
    assert len(labels.labelled) <= 2
