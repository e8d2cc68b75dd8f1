"""rev-d32 F2: ``llm_d_epp_flow_control_request_queue_duration_seconds`` (67d34508, qa32b Q7) was a second
prometheus ``Histogram`` observed beside ``inference_extension_flow_control_request_queue_duration_seconds``
on every flow-controlled request (a lock and a bisect each: ``FlowMetrics.outcome`` 1.6 -> 2.3 us). It is now
the old family's samples under llm-d's name, read at the scrape, as the scheduler's twin: one observation per
request (fails on ef684e02: two), the same series, buckets, counts and sums, and the same exposition."""

from __future__ import annotations

from prometheus_client import REGISTRY, Histogram, generate_latest

from kvgate.flowcontrol.metrics import QUEUE_DURATION_BUCKETS, FlowLabels, FlowMetrics

OLD = "inference_extension_flow_control_request_queue_duration_seconds"
NEW = "llm_d_epp_flow_control_request_queue_duration_seconds"


def test_an_outcome_is_one_histogram_observation(monkeypatch) -> None:
    fm = FlowMetrics(True, labels=FlowLabels(), pool="pool-rev-d32-a")
    fm.outcome(0, "t", "Dispatched", 0.001)  # (the children made once, outside the count)
    calls: list[float] = []
    observe = Histogram.observe

    def counted(self, amount: float, exemplar=None) -> None:
        calls.append(amount)
        observe(self, amount, exemplar)

    monkeypatch.setattr(Histogram, "observe", counted)
    fm.outcome(0, "t", "Dispatched", 0.002)
    assert calls == [0.002], "more than one histogram observed per flow-controlled request"


def test_the_llm_d_twin_is_the_old_familys_samples_at_the_scrape() -> None:
    fm = FlowMetrics(True, labels=FlowLabels(), pool="pool-rev-d32-b")
    for waited, outcome in ((0.0002, "Dispatched"), (0.3, "Dispatched"), (7.0, "EvictedTTL")):
        fm.outcome(1, "tenant", outcome, waited)
    # (this test's pool only: the collectors are process-wide; ``_created`` too, the old family's own)
    old = {(s.name[len(OLD) :], tuple(sorted(s.labels.items()))): s.value for s in _samples(OLD)}
    new = {(s.name[len(NEW) :], tuple(sorted(s.labels.items()))): s.value for s in _samples(NEW)}
    assert new == old
    assert sum(k[0] == "_bucket" for k in new) == 2 * (len(QUEUE_DURATION_BUCKETS) + 1)  # two series; +Inf
    counts = {dict(k[1])["outcome"]: v for k, v in new.items() if k[0] == "_count"}
    assert counts == {"Dispatched": 2.0, "EvictedTTL": 1.0}
    # the exposition: one TYPE line each, both histograms, llm-d's HELP
    text = generate_latest(REGISTRY).decode()
    assert text.count(f"# TYPE {NEW} histogram\n") == 1 and text.count(f"# TYPE {OLD} histogram\n") == 1
    assert f"# HELP {NEW} Distribution of total time requests spend in the Flow Control layer" in text
    lines = [line for line in text.splitlines() if line.startswith(f"{NEW}_count{{")]
    assert any('inference_pool="pool-rev-d32-b"' in line and 'outcome="EvictedTTL"' in line for line in lines)


def _samples(name: str) -> list:
    pool = ("inference_pool", "pool-rev-d32-b")
    return [s for m in REGISTRY.collect() if m.name == name for s in m.samples if pool in s.labels.items()]
