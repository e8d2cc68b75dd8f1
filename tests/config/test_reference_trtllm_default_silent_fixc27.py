"""Review s27-rev-fixes27a F5: the reference's own ``trtllm-serve`` engineConfigs entry is not warned.

GIE's and llm-d-router's core-metrics-extractor defaults hold ``trtllm-serve`` (trtllm_num_requests_waiting,
trtllm_num_requests_running, trtllm_kv_cache_utilization; no lora / cacheInfo), an engine kvgate maps
(datalayer/mappings.py). On 44e88aec a config repeating it got "engineConfigs 'trtllm-serve' not applied":
the entries were compared with a copy holding vllm and sglang only, not with kvgate's mappings.
"""

from __future__ import annotations

from kvgate.scheduling.framework import Params, PluginHandle
from kvgate.scheduling.plugins.wiring import CoreMetricsExtractor

TRTLLM = {
    "name": "trtllm-serve",
    "queuedRequestsSpec": "trtllm_num_requests_waiting",
    "runningRequestsSpec": "trtllm_num_requests_running",
    "kvUsageSpec": "trtllm_kv_cache_utilization",
    "loraSpec": "",
    "cacheInfoSpec": "",
}


def _warnings(*entries: dict[str, str]) -> list[str]:
    params = Params({"engineConfigs": list(entries)}, "plugins[0].parameters")
    CoreMetricsExtractor.create("x", params, PluginHandle())
    return params.warnings


def test_the_references_trtllm_serve_default_is_silent() -> None:
    assert _warnings(TRTLLM) == []
    # llm-d-router's entry adds the block gauges kvgate reads for it too.
    llmd = {
        **TRTLLM,
        "cacheBlockSizeSpec": "trtllm_kv_cache_tokens_per_block",
        "cacheNumBlocksSpec": "trtllm_kv_cache_max_blocks",
    }
    assert _warnings(llmd) == []


def test_an_engine_kvgate_does_not_map_or_another_metric_is_still_warned() -> None:
    triton = {"name": "triton", "queuedRequestsSpec": "nv_inference_pending_request_count"}
    (line,) = _warnings(triton, {**TRTLLM, "kvUsageSpec": "mine"})
    assert "engineConfigs 'triton', engineConfigs 'trtllm-serve' not applied" in line
