"""Session 11 (review s10-fc L1's last point): the flow label of the flow-control metrics is the
client-supplied fairness id; it takes at most ``MAX_FLOW_LABELS + 1`` values per process, whatever ids
clients send, however many pools and reloads. Since review s11-fc (H1, H2): an id earns a label once it
has been counted ``PROMOTE_AT`` times (a guaranteed count), and keeps it for the process's life."""

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
            for _ in range(fm.PROMOTE_AT):  # each id is busy enough for a label
                item = ctl.enqueue(req(f"{pool}{i}", f"s11pool-{pool}-{i}", prio=31), 0.0)
                ctl.take(item, 0.1)
    assert len(flow_values("s11pool-") - {fm.OTHER_FLOW}) <= fm.MAX_FLOW_LABELS


def test_a_heavy_id_gets_its_label_after_a_spray_and_the_sprayed_ids_get_none() -> None:
    """A spray of one-shot ids came first; a tenant that then sends steadily gets its own label after
    ``PROMOTE_AT`` of its requests, and no sprayed id ever has a series. Before (8cf0a73): the spray
    took every label at its first requests and kept taking them at relabels."""
    labels = fm.FlowLabels()
    ctl = FlowController(FlowControlConfig(), fm.FlowMetrics(True, labels))
    for i in range(5000):
        item = ctl.enqueue(req(f"s{i}", f"s11spray-{i}", prio=32), 0.0)
        ctl.take(item, 0.1)
    assert labels.labelled == {fm.DEFAULT_FLOW}  # (always its own: review s19-qa2 L1)
    for i in range(4 * fm.PROMOTE_AT):
        flow = "s11heavy" if i % 2 else f"s11spray-late-{i}"
        item = ctl.enqueue(req(f"h{i}", flow, prio=32), 1.0)
        ctl.take(item, 1.1)
    assert labels.labelled == {fm.DEFAULT_FLOW, "s11heavy"}
    assert flow_values("s11spray") == {fm.OTHER_FLOW} and "s11heavy" in flow_values("s11heavy")
    assert len(labels.counts) <= fm.FLOW_CANDIDATES


def test_an_id_counts_under_other_until_promoted_then_under_its_own_label_for_ever() -> None:
    """No double count, no series removed: the id's first PROMOTE_AT - 1 requests stay in 'other', the
    promoting one and every later one are its own; labels taken by busier ids later change nothing."""
    prio = "34"
    labels = fm.FlowLabels(size=2)
    m = fm.FlowMetrics(True, labels)

    def total(flow: str) -> float:
        key = {"priority": prio, "fairness_id": flow, "outcome": "Dispatched"}
        return REGISTRY.get_sample_value("kvgate_flow_control_requests_total", key) or 0.0

    for _ in range(fm.PROMOTE_AT - 1):
        m.outcome(34, "s11p-a", "Dispatched", 0.0)
    assert (
        labels.labelled == {fm.DEFAULT_FLOW}
        and total("s11p-a") == 0
        and total(fm.OTHER_FLOW) == fm.PROMOTE_AT - 1
    )
    m.outcome(34, "s11p-a", "Dispatched", 0.0)
    assert labels.labelled == {fm.DEFAULT_FLOW, "s11p-a"} and total("s11p-a") == 1
    for _ in range(10 * fm.PROMOTE_AT):  # much busier ids come later: 'a' keeps its label
        for f in ("s11p-b", "s11p-c", "s11p-d"):
            m.outcome(34, f, "Dispatched", 0.0)
    m.outcome(34, "s11p-a", "Dispatched", 0.0)
    assert labels.labelled == {fm.DEFAULT_FLOW, "s11p-a", "s11p-b"}
    assert total("s11p-a") == 2 and total("s11p-c") == 0 and total("s11p-d") == 0
    assert total(fm.OTHER_FLOW) + total("s11p-a") + total("s11p-b") == fm.PROMOTE_AT + 1 + 30 * fm.PROMOTE_AT
    assert not labels.counts  # the labels are all given: nothing more is counted


def test_ids_sent_many_times_each_but_spread_thinner_than_the_table_never_get_a_label() -> None:
    """A sprayer cycling through 3 x FLOW_CANDIDATES ids, each sent PROMOTE_AT times in all: each id
    leaves the table before it comes back, so its guaranteed count never passes 1 (Space-Saving's
    inherited count grows past PROMOTE_AT, and must not promote)."""
    labels = fm.FlowLabels()
    for _ in range(fm.PROMOTE_AT):
        for i in range(3 * fm.FLOW_CANDIDATES):
            labels.count(f"s11rep-{i}")
    assert labels.labelled == {fm.DEFAULT_FLOW}  # (always its own: review s19-qa2 L1)
    assert max(c for c, _ in labels.counts.values()) > fm.PROMOTE_AT


def test_the_queue_gauges_add_up_through_promotions() -> None:
    """Requests queued under an id that earns its label move with it: the gauges never go negative
    and add up to the requests queued."""
    labels = fm.FlowLabels(size=2, candidates=16, promote_at=3)
    ctl = FlowController(FlowControlConfig(), fm.FlowMetrics(True, labels))
    held = [ctl.enqueue(req(f"q{i}", f"s11g-{i % 5}", prio=33), 0.0) for i in range(20)]
    assert queued_gauge("33") == 20
    for i in range(200):  # churn: other ids come and go; two of them earn labels
        item = ctl.enqueue(req(f"c{i}", f"s11g-{(i * 7) % 11}", prio=33), 1.0)
        ctl.take(item, 1.1)
        assert queued_gauge("33") == 20
        for metric in REGISTRY.collect():
            if metric.name == "inference_extension_flow_control_queue_size":
                assert all(s.value >= 0 for s in metric.samples)
    for item in held:
        ctl.take(item, 2.0)
    assert queued_gauge("33") == 0
    assert len(labels.labelled) == 3  # (the default flow's too)
