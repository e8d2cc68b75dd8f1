"""Review s29-rev-cfg29 F2 (fixcfg29). ``prefix-cache-affinity-filter`` with
``ttftSource: latencyPredictor`` and ``maxTTFTPenaltyMs: 0`` ("always stick", llm-d-router's documented
setting: its gate and its Consumes() need no latency signal then) loads without a
``predicted-latency-scorer``; every pick with a prefix hit then raised ``ConfigError`` (``ttftSource:
'latencyPredictor': no predicted-latency-scorer in plugins``): the filter read the oracle whether or not a
penalty was set (dependencies() resolves it at build only with a penalty). Fails on 013fa4b8 (c98428a9)."""

from __future__ import annotations

import pytest

from config.test_affinity_reference_gate_cfg29 import TEXT
from config.test_affinity_reference_gate_cfg29 import _config as _cfg
from kvgate.config.director import build_director
from kvgate.config.picker import parse_config
from kvgate.datalayer.endpoint import Endpoint, EndpointMetrics
from kvgate.datalayer.store import EndpointStore
from kvgate.scheduling.types import InferenceRequest


@pytest.mark.parametrize("tokens_penalty", [None, 1000])  # (the older tokens gate beside it: same)
def test_always_stick_with_the_predictor_source_needs_no_predictor(tokens_penalty: int | None) -> None:
    params: dict[str, object] = {"ttftSource": "latencyPredictor", "maxTTFTPenaltyMs": 0}
    if tokens_penalty is not None:
        params["maxTokensInFlightPenalty"] = tokens_penalty
    store = EndpointStore(
        Endpoint(address=f"10.0.0.{i}:8000", metrics=EndpointMetrics(updated_at=0.0)) for i in range(3)
    )
    d = build_director(
        parse_config(_cfg(params)),
        store,
        clock=lambda: 0.0,
        seed=0,
    )
    first = d.pick(InferenceRequest("r0", "m", prompt_text=TEXT)).primary.address
    for i in range(1, 4):  # the prefix holder is sticky: no load gate, no latency signal read
        assert d.pick(InferenceRequest(f"r{i}", "m", prompt_text=TEXT)).primary.address == first
