"""The flow controller's policies and limits, on an injected clock (no asyncio)."""

from __future__ import annotations

import pytest

from kvgate.flowcontrol.config import BandConfig, FlowControlConfig
from kvgate.flowcontrol.controller import EVICTED_TTL, FlowController, QueuedRequest
from kvgate.scheduling.types import InferenceRequest, ShedError


def _req(
    rid: str, flow: str = "default-flow", prio: int = 0, *, text: str = "x" * 40, **kw: object
) -> InferenceRequest:
    return InferenceRequest(rid, "m", prompt_text=text, priority=prio, fairness_id=flow, **kw)  # type: ignore[arg-type]


def _drain(ctl: FlowController, now: float = 1.0) -> list[str]:
    out = []
    while (item := ctl.head()) is not None:
        ctl.take(item, now)
        out.append(item.req.request_id)
    return out


def _ctl(fairness: str = "round-robin", ordering: str = "fcfs", **kw: object) -> FlowController:
    return FlowController(FlowControlConfig(fairness=fairness, ordering=ordering, **kw))  # type: ignore[arg-type]


def test_strict_priority_bands_higher_first() -> None:
    ctl = _ctl()
    for rid, prio in (("low", -1), ("mid", 0), ("high", 5), ("mid2", 0)):
        ctl.enqueue(_req(rid, prio=prio), 0.0)
    assert _drain(ctl) == ["high", "mid", "mid2", "low"]
    assert len(ctl) == 0 and ctl.bytes == 0


def test_round_robin_alternates_flows_and_fcfs_inside_a_flow() -> None:
    ctl = _ctl("round-robin")
    for i in range(4):
        ctl.enqueue(_req(f"flood{i}", "flood"), float(i))
    ctl.enqueue(_req("quiet0", "quiet"), 5.0)
    ctl.enqueue(_req("quiet1", "quiet"), 6.0)
    assert _drain(ctl) == ["flood0", "quiet0", "flood1", "quiet1", "flood2", "flood3"]


def test_global_strict_is_one_fifo_across_flows() -> None:
    ctl = _ctl("global-strict")
    for i in range(3):
        ctl.enqueue(_req(f"flood{i}", "flood"), float(i))
    ctl.enqueue(_req("quiet0", "quiet"), 5.0)
    assert _drain(ctl) == ["flood0", "flood1", "flood2", "quiet0"]


def test_least_attained_service_favours_the_flow_served_least() -> None:
    ctl = _ctl("least-attained-service")
    big = "y" * 4000  # ~1000 tokens each
    for i in range(3):
        ctl.enqueue(_req(f"big{i}", "heavy", text=big, max_tokens=500), 0.0)
    for i in range(3):
        ctl.enqueue(_req(f"small{i}", "light", max_tokens=10), 0.0)
    order = _drain(ctl)
    # After one heavy request (1,500 tokens) every light one (20 tokens) goes before the next heavy one.
    assert order.index("small2") < order.index("big1")


def test_las_new_flow_does_not_claim_credit_for_idle_time() -> None:
    ctl = _ctl("least-attained-service")
    for i in range(5):
        ctl.enqueue(_req(f"a{i}", "a", max_tokens=10), 0.0)
    _drain(ctl)  # flow a served 5 x 20 tokens, then left (no queue)
    for i in range(2):
        ctl.enqueue(_req(f"b{i}", "b", max_tokens=10), 1.0)
    ctl.enqueue(_req("c0", "c", max_tokens=10), 1.0)
    # b and c both start at the active minimum: they alternate rather than c waiting behind all of b.
    assert _drain(ctl)[:2] in (["b0", "c0"], ["c0", "b0"])


def test_edf_orders_by_deadline_and_slo_deadline_by_ttft_header() -> None:
    ctl = _ctl("global-strict", "edf", ttl=10.0)
    ctl.enqueue(_req("late"), 5.0)
    ctl.enqueue(_req("early"), 1.0)
    assert _drain(ctl) == ["early", "late"]
    ctl = _ctl("global-strict", "slo-deadline", default_ttft_slo=5.0)
    ctl.enqueue(_req("relaxed", arrival_time=0.0), 0.0)  # default: 0 + 5 s
    ctl.enqueue(_req("tight", headers={"x-slo-ttft-ms": "200"}, arrival_time=1.0), 1.0)  # 1.2 s
    ctl.enqueue(_req("llmd", headers={"x-llm-d-slo-ttft-ms": "2000"}, arrival_time=1.0), 1.0)  # 3 s
    assert _drain(ctl) == ["tight", "llmd", "relaxed"]


def test_fairness_id_from_llmd_header_when_gie_header_is_absent() -> None:
    ctl = _ctl()
    item = ctl.enqueue(_req("r", headers={"x-llm-d-inference-fairness-id": "tenant-b"}), 0.0)
    assert item.flow == "tenant-b"
    item = ctl.enqueue(_req("s", "tenant-a", headers={"x-llm-d-inference-fairness-id": "tenant-b"}), 0.0)
    assert item.flow == "tenant-b"  # (both: llm-d's, as llm-d-router prefers it; rev-c36 F3)
    item = ctl.enqueue(_req("t", "tenant-a", headers={"x-llm-d-inference-fairness-id": ""}), 0.0)
    assert item.flow == "tenant-a"


def test_band_and_global_limits_reject_with_429() -> None:
    cfg = FlowControlConfig(max_requests=3, max_bytes=0, bands={0: BandConfig(0, max_requests=2)})
    ctl = FlowController(cfg)
    ctl.enqueue(_req("a"), 0.0)
    ctl.enqueue(_req("b"), 0.0)
    with pytest.raises(ShedError, match="band 0 is full") as e:
        ctl.enqueue(_req("c"), 0.0)
    assert e.value.status == 429
    ctl.enqueue(_req("d", prio=1), 0.0)
    with pytest.raises(ShedError, match="queue is full"):
        ctl.enqueue(_req("e", prio=2), 0.0)
    cfg = FlowControlConfig(max_bytes=100, bands={0: BandConfig(0, max_bytes=60)})
    ctl = FlowController(cfg)
    ctl.enqueue(_req("a", text="x" * 50), 0.0)
    with pytest.raises(ShedError, match="60 bytes"):
        ctl.enqueue(_req("b", text="x" * 20), 0.0)
    ctl.enqueue(_req("c", prio=1, text="x" * 40), 0.0)
    with pytest.raises(ShedError, match="100 bytes"):
        ctl.enqueue(_req("d", prio=2, text="x" * 20), 0.0)


def test_ttl_expiry_and_cancel_free_capacity() -> None:
    ctl = FlowController(FlowControlConfig(ttl=2.0, max_requests=2))
    a = ctl.enqueue(_req("a"), 0.0)
    b = ctl.enqueue(_req("b"), 1.0)
    assert ctl.expire(1.9) == []
    expired = ctl.expire(2.0)
    assert expired == [a] and a.outcome == EVICTED_TTL and len(ctl) == 1
    assert ctl.cancel(b, 2.5) and not ctl.cancel(b, 2.6)  # idempotent
    assert len(ctl) == 0 and ctl.head() is None and ctl.next_deadline() is None
    ctl.enqueue(_req("c"), 3.0)
    ctl.enqueue(_req("d"), 3.0)  # both slots are free again
    assert _drain(ctl) == ["c", "d"]


def test_cancelled_head_is_skipped() -> None:
    ctl = _ctl("global-strict")
    items: list[QueuedRequest] = [ctl.enqueue(_req(f"r{i}"), 0.0) for i in range(3)]
    ctl.cancel(items[0], 0.1)
    assert _drain(ctl) == ["r1", "r2"]


def test_metrics_count_queue_and_outcomes_with_capped_flow_labels() -> None:
    from prometheus_client import REGISTRY

    from kvgate.flowcontrol import metrics as fm

    ctl = FlowController(FlowControlConfig(), fm.FlowMetrics(True, fm.FlowLabels()))

    def sample(name: str, **labels: str) -> float:
        """The sum over the series carrying ``labels`` (the queue gauge has pool and model labels too)."""
        return sum(
            s.value
            for metric in REGISTRY.collect()
            for s in metric.samples
            if s.name == name and labels.items() <= s.labels.items()
        )

    for i in range(fm.PROMOTE_AT):  # m-a earns its label (its requests so far count under "other")
        ctl.take(ctl.enqueue(_req(f"warm{i}", "m-a", prio=7), 0.0), 0.0)
    before = sample(
        "kvgate_flow_control_requests_total", priority="7", fairness_id="m-a", outcome="Dispatched"
    )
    item = ctl.enqueue(_req("a", "m-a", prio=7), 0.0)
    assert sample("inference_extension_flow_control_queue_size", priority="7", fairness_id="m-a") == 1
    ctl.take(item, 0.5)
    assert sample("inference_extension_flow_control_queue_size", priority="7", fairness_id="m-a") == 0
    after = sample(
        "kvgate_flow_control_requests_total", priority="7", fairness_id="m-a", outcome="Dispatched"
    )
    assert after == before + 1
    m = fm.FlowLabels()
    for i in range(fm.MAX_FLOW_LABELS + 10):
        for _ in range(fm.PROMOTE_AT):
            m.count(f"f{i}")
    labels = {m.label(f"f{i}") for i in range(fm.MAX_FLOW_LABELS + 10)}
    assert len(labels) == fm.MAX_FLOW_LABELS + 1 and fm.OTHER_FLOW in labels
