"""Review s23-rev-fixqa23 R3 (the reviewer's test, adapted): ``concurrency-detector`` with no
``concurrencyMode`` counts requests only, as upstream GIE's default (``concurrencydetector/config.go``:
``defaultConcurrencyMode = modeRequests``). kvgate's in-flight tokens include ``max_tokens x n`` of
expected output, so its old unset rule (the larger of requests and tokens, 1,000,000 a endpoint) dropped
an endpoint at 31 requests of ``max_tokens: 32768`` where GIE keeps it until 100. That rule stays
reachable as ``concurrencyMode: both``, or kvgate's older key ``maxTokens`` with no mode."""

from __future__ import annotations

from typing import Any

from kvgate.config.picker import PluginSpec, instantiate
from kvgate.datalayer.endpoint import Endpoint
from kvgate.flowcontrol.saturation import ConcurrencyDetector
from kvgate.scheduling.framework import CycleState, PluginHandle
from kvgate.scheduling.types import InferenceRequest


def detector(**params: Any) -> ConcurrencyDetector:
    d = instantiate(PluginSpec("c", "concurrency-detector", params, "plugins[0]"), PluginHandle())
    assert isinstance(d, ConcurrencyDetector)
    return d


def long_outputs(requests: int) -> Endpoint:
    """An endpoint with ``requests`` in flight, each of a 200-token prompt and ``max_tokens: 32768``."""
    ep = Endpoint("10.0.0.1:8000")
    ep.inflight.requests = requests
    ep.inflight.pending_prefill_tokens = requests * 200
    ep.inflight.pending_decode_tokens = requests * 32768
    return ep


def test_gies_default_config_filters_on_requests_only() -> None:
    ep = long_outputs(31)
    kept = detector(maxConcurrency=100).filter(
        CycleState(InferenceRequest(request_id="r", model="m"), 0.0), [ep]
    )
    assert kept == [ep], "GIE's default (requests mode) keeps an endpoint at 31 of 100 requests"


def test_gies_default_config_saturates_on_requests_only() -> None:
    assert detector(maxConcurrency=100).endpoint_saturation(long_outputs(31), 0.0) == 0.31


def test_kvgates_old_rule_is_asked_for_by_a_key() -> None:
    ep = long_outputs(31)
    cycle = CycleState(InferenceRequest(request_id="r", model="m"), 0.0)
    for params in ({"concurrencyMode": "both"}, {"maxTokens": 1_000_000}):
        d = detector(maxConcurrency=100, **params)
        assert d.filter(cycle, [ep]) == [], params
        assert d.endpoint_saturation(ep, 0.0) > 1.0, params
