"""Review s27-rev-fixes27a F2: llm-d-router's ``dataLayer`` / ``requestHandler`` / engineConfigs keys load.

qa27 Q4 (b74abe77) took ``dataLayer`` (llm-d-router's spelling, apix/config/v1alpha1 there) but refused
what llm-d-router puts in it: ``injectDefaults`` (``*bool``), ``discovery``, ``peerDiscovery``,
``crossReplicaSyncerPluginRef``, ``crossReplicaSyncInterval``; its ``requestHandler: {parsers:
[{pluginRef}]}`` (replacing ``parser``); and its core-metrics-extractor's engineConfigs keys
``cacheBlockSizeLabelName`` / ``cacheNumBlocksLabelName`` / ``cacheBlockSizeSpec`` / ``cacheNumBlocksSpec``
(its built-in sglang entry: ``sglang:cache_config_info`` with ``page_size`` / ``num_pages``, exactly what
kvgate's sglang mapping reads). The three loads below fail on 44e88aec ("unknown key").
"""

from __future__ import annotations

import logging

import pytest

from kvgate.config.picker import ConfigError, load_config

BASE = """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: metrics-data-source
- type: core-metrics-extractor
  parameters: {extractor}
- type: openai-parser
schedulingProfiles:
- name: default
  plugins: [{{pluginRef: queue-scorer}}]
{top}
"""
SOURCES = "sources: [{pluginRef: metrics-data-source, extractors: [{pluginRef: core-metrics-extractor}]}]"
# llm-d-router's built-in engine entries (extractor/metrics defaultEngineConfigs), repeated by a config.
LLMD_DEFAULTS = (
    "{engineConfigs: ["
    "{name: sglang, queuedRequestsSpec: 'sglang:num_queue_reqs', "
    "runningRequestsSpec: 'sglang:num_running_reqs', "
    "kvUsageSpec: 'sglang:token_usage', loraSpec: '', cacheInfoSpec: 'sglang:cache_config_info', "
    "cacheBlockSizeLabelName: page_size, cacheNumBlocksLabelName: num_pages}, "
    "{name: triton-tensorrt-llm, queuedRequestsSpec: 'nv_trt_llm_request_metrics{request_type=waiting}', "
    "runningRequestsSpec: 'nv_trt_llm_request_metrics{request_type=scheduled}', "
    "kvUsageSpec: 'nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=fraction}', "
    "cacheBlockSizeSpec: 'nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=tokens_per}', "
    "cacheNumBlocksSpec: 'nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=max}'}]}"
)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "kvgate.config.picker"]


@pytest.mark.parametrize(
    "extractor, top",
    [
        ("{}", "dataLayer: {injectDefaults: false, " + SOURCES + "}"),
        ("{}", "dataLayer: {" + SOURCES + "}\nrequestHandler: {parsers: [{pluginRef: openai-parser}]}"),
        (LLMD_DEFAULTS, "dataLayer: {" + SOURCES + "}"),
    ],
    ids=["injectDefaults", "requestHandler.parsers", "engineConfigs-llm-d-defaults"],
)
def test_llm_d_router_data_layer_configs_load_without_a_word(
    extractor: str, top: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="kvgate.config.picker")
    load_config(BASE.format(extractor=extractor, top=top))
    assert _warnings(caplog) == []


def test_discovery_and_cross_replica_sync_are_one_warning_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="kvgate.config.picker")
    top = (
        "dataLayer: {injectDefaults: true, discovery: {pluginRef: d}, crossReplicaSyncerPluginRef: s, "
        "crossReplicaSyncInterval: 1s, " + SOURCES + "}"
    )
    load_config(BASE.format(extractor="{}", top=top))
    assert _warnings(caplog) == [
        "dataLayer: discovery, crossReplicaSyncerPluginRef, crossReplicaSyncInterval not applied: kvgate "
        "finds endpoints itself (--endpoints, pools, Kubernetes) and shares no state between replicas"
    ]


def test_a_changed_cache_spec_is_named_in_the_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="kvgate.config.picker")
    extractor = "{engineConfigs: [{name: vllm, queuedRequestsSpec: 'vllm:num_requests_waiting', "
    extractor += "runningRequestsSpec: 'vllm:num_requests_running', kvUsageSpec: 'vllm:kv_cache_usage_perc', "
    extractor += "cacheBlockSizeLabelName: bs}]}"
    load_config(BASE.format(extractor=extractor, top=""))
    (line,) = _warnings(caplog)
    assert line.startswith("plugins[2].parameters: engineConfigs 'vllm' not applied")


@pytest.mark.parametrize(
    "top, error",
    [
        ("dataLayer: {injectDefaults: 'no'}", "dataLayer.injectDefaults: must be true or false"),
        ("dataLayer: {injectDefault: false}", "dataLayer.injectDefault: unknown key"),
        ("requestHandler: {parsers: [{pluginRef: queue-scorer}]}", "requestHandler.parsers[0].pluginRef:"),
        ("requestHandler: {parser: {pluginRef: openai-parser}}", "requestHandler.parser: unknown key"),
    ],
)
def test_wrong_llm_d_router_keys_stay_errors_naming_them(top: str, error: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(BASE.format(extractor="{}", top=top))
    assert str(e.value).startswith(error)
