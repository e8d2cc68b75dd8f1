"""Review s26-qa F4: the reference's scheduler / prefix-indexer histograms carry GIE's buckets, and its
``inference_extension_scheduler_attempts_total{status}`` counter is exported and counts.

GIE ``pkg/epp/metrics``: ``..._scheduler_e2e_duration_seconds`` 0.0001 .. 0.1 (with 0.02),
``..._prefix_indexer_hit_ratio`` 0.0, 0.1, .., 1.0, ``..._prefix_indexer_hit_bytes`` 0, 16, 32, .., 65536. A
fleet mixing both EPPs sums their buckets by ``le`` (``histogram_quantile(0.9, sum by (le) (...))``): other
``le`` sets make the quantile wrong. Before: 1e-05 .. 0.1 without 0.02; 0, 0.1, 0.25, ..; 0, 256, 1024, ..;
no attempts counter. Read from the process's registry as /metrics renders it (QA's two tests first).
"""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import kvgate.scheduling.metrics  # noqa: F401  (registers the families)
from kvgate.config.director import build_director
from kvgate.datalayer.store import EndpointStore
from kvgate.scheduling.types import InferenceRequest, SchedulingError

WANT = {
    "inference_extension_scheduler_e2e_duration_seconds":
        [0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1],
    "inference_extension_prefix_indexer_hit_ratio": [round(0.1 * i, 1) for i in range(11)],
    "inference_extension_prefix_indexer_hit_bytes":
        [0, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536],
}  # fmt: skip


def _buckets() -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for fam in text_string_to_metric_families(generate_latest(REGISTRY).decode()):
        les = [float(s.labels["le"]) for s in fam.samples if s.name.endswith("_bucket")]
        if les:
            out[fam.name] = sorted({le for le in les if le != float("inf")})
    return out


def test_reference_histograms_have_the_reference_buckets() -> None:
    got = _buckets()
    wrong = {name: got.get(name) for name, want in WANT.items() if got.get(name) != [float(x) for x in want]}
    assert not wrong, wrong


def test_scheduler_attempts_total_is_exported() -> None:
    names = {fam.name for fam in text_string_to_metric_families(generate_latest(REGISTRY).decode())}
    assert "inference_extension_scheduler_attempts" in names  # (the parser drops ``_total``)


def _attempts() -> dict[str, float]:
    for fam in text_string_to_metric_families(generate_latest(REGISTRY).decode()):
        if fam.name == "inference_extension_scheduler_attempts":
            assert fam.type == "counter"
            return {s.labels["status"]: s.value for s in fam.samples if s.name.endswith("_total")}
    raise AssertionError("inference_extension_scheduler_attempts_total missing")


def test_attempts_count_each_pick_as_success_or_failure() -> None:
    """A pick that returns is a ``success``, one that finds no endpoint a ``failure``."""
    store = EndpointStore.from_addresses(["127.0.0.1:1"])
    d = build_director("round-robin", store)
    before = _attempts()
    d.pick(InferenceRequest(request_id="r1", model="m", prompt_text="hi"))
    d.pick(InferenceRequest(request_id="r2", model="m", prompt_text="hi"))
    empty = build_director("round-robin", EndpointStore.from_addresses([]))
    with pytest.raises(SchedulingError):
        empty.pick(InferenceRequest(request_id="r3", model="m", prompt_text="hi"))
    after = _attempts()
    assert after.get("success", 0) - before.get("success", 0) == 2
    assert after.get("failure", 0) - before.get("failure", 0) == 1
