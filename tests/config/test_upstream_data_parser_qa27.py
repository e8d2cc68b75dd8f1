"""qa27 Q4: the reference's data-layer and parser configuration loads.

The reference EPP's Helm chart renders a config listing ``metrics-data-source`` (scheme, path,
insecureSkipVerify) and ``core-metrics-extractor`` beside its scorers; its ``EndpointPickerConfig`` has a
``data`` (newer: ``dataLayer``) section wiring sources to extractors and a ``parser: {pluginRef}`` section
(default ``openai-parser``). On 6782b99d each of these was refused (an unknown plugin type, ``data:
unknown key``, ``dataLayer``/``parser`` "not supported"), so the config of every Helm install of the
reference did not start. kvgate scrapes and parses itself: what means the same is taken silently, what it
cannot honour is one WARNING line naming the keys; wrong wiring and unknown keys stay errors naming them.
"""

from __future__ import annotations

import logging

import pytest

from kvgate.config.director import build_director
from kvgate.config.picker import ConfigError, load_config
from kvgate.datalayer.store import EndpointStore

# The reference chart's default-plugins.yaml as rendered with its defaults (latencyPredictor off).
CHART_DEFAULT = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: prefix-cache-scorer
- type: metrics-data-source
  parameters:
    scheme: "http"
    path: "/metrics"
    insecureSkipVerify: true
- type: core-metrics-extractor
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: queue-scorer
    weight: 2
  - pluginRef: kv-cache-utilization-scorer
    weight: 2
  - pluginRef: prefix-cache-scorer
    weight: 3
"""

HEAD = """\
plugins:
{plugins}- type: queue-scorer
- type: max-score-picker
{tail}"""


def _doc(plugins: str = "", tail: str = "") -> str:
    return HEAD.format(plugins=plugins, tail=tail)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "kvgate.config.picker"]


def test_the_reference_charts_default_config_loads_without_a_word(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="kvgate.config.picker")
    build_director(load_config(CHART_DEFAULT), EndpointStore(), clock=lambda: 0.0, seed=0)
    assert _warnings(caplog) == []  # (all it says kvgate does: http://<endpoint>/metrics, vllm's mapping)


@pytest.mark.parametrize("key", ["data", "dataLayer"])
def test_the_data_layer_section_and_the_parser_load(key: str) -> None:
    plugins = "- type: metrics-data-source\n- type: core-metrics-extractor\n- type: openai-parser\n"
    tail = (
        f"{key}:\n  sources:\n  - pluginRef: metrics-data-source\n    extractors:\n"
        "    - pluginRef: core-metrics-extractor\nparser:\n  pluginRef: openai-parser\n"
    )
    cfg = load_config(_doc(plugins, tail))
    assert cfg.parser == {"pluginRef": "openai-parser"}
    # Without schedulingProfiles the default profile takes every plugin but these (no scheduling role).
    assert [r.plugin_ref for r in cfg.profiles[0].plugins] == ["queue-scorer", "max-score-picker"]
    build_director(cfg, EndpointStore(), clock=lambda: 0.0, seed=0)


def test_settings_kvgate_cannot_honour_are_one_warning_line_per_plugin(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="kvgate.config.picker")
    plugins = (
        "- type: metrics-data-source\n  parameters: {scheme: https, path: /stats, insecureSkipVerify: true}\n"
        "- type: core-metrics-extractor\n  parameters:\n    defaultEngine: sglang\n    engineConfigs:\n"
        "    - {name: vllm, queuedRequestsSpec: 'vllm:num_requests_waiting', runningRequestsSpec:"
        " 'vllm:num_requests_running', kvUsageSpec: 'vllm:kv_cache_usage_perc', loraSpec:"
        " 'vllm:lora_requests_info', cacheInfoSpec: 'vllm:cache_config_info'}\n"
        "    - {name: mine, queuedRequestsSpec: 'mine:waiting'}\n"
    )
    load_config(_doc(plugins))
    lines = _warnings(caplog)
    # (the data source's scheme and path are honoured by the scraper since cfg28: nothing to say)
    assert len(lines) == 1, lines
    assert lines[0].startswith(
        "plugins[1].parameters: defaultEngine 'sglang', engineConfigs 'mine' not applied: kvgate scrapes"
    )  # (the vllm entry repeats the reference's own specs: nothing to say)


MDS = "- type: metrics-data-source\n"
SRC = "  sources:\n  - pluginRef: "
PROFILE = "schedulingProfiles:\n- name: d\n  plugins:\n  - pluginRef: metrics-data-source\n"
BAD = [
    (
        "",
        f"data:\n{SRC}queue-scorer\n",
        "data.sources[0].pluginRef: 'queue-scorer' is not a data source plugin",
    ),
    (
        MDS,
        f"dataLayer:\n{SRC}metrics-data-source\n    extractors:\n    - pluginRef: nope\n",
        "dataLayer.sources[0].extractors[0].pluginRef: no plugin named 'nope'",
    ),
    ("", "data:\n  sorces: []\n", "data.sorces: unknown key"),
    ("", "data: {sources: []}\ndataLayer: {sources: []}\n", "dataLayer: the data layer is given twice"),
    ("", "parser:\n  pluginRef: openai-parser\n", "parser.pluginRef: no plugin named 'openai-parser'"),
    ("- type: openai-parser\n", "parser:\n  pluginRef: openai-parser\n  x: 1\n", "parser.x: unknown key"),
    ("- type: vllmgrpc-parser\n", "", "plugins[0].type: unknown plugin type 'vllmgrpc-parser'"),
    (MDS + "  parameters: {pth: /metrics}\n", "", "plugins[0].parameters.pth: unknown parameter"),
    (MDS + "  parameters: {scheme: ftp}\n", "", "plugins[0].parameters.scheme: must be one of"),
    (
        "- type: core-metrics-extractor\n  parameters: {engineConfigs: [{name: x, kvUsgeSpec: y}]}\n",
        "",
        "plugins[0].parameters.engineConfigs[0].kvUsgeSpec: unknown key",
    ),
    (
        MDS,
        PROFILE,
        "schedulingProfiles[0].plugins[0].pluginRef: 'metrics-data-source' is a data source plugin, not a "
        "scheduling one",
    ),
]


@pytest.mark.parametrize(("plugins", "tail", "error"), BAD)
def test_wrong_wiring_and_unknown_keys_stay_errors_naming_them(plugins: str, tail: str, error: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(_doc(plugins, tail))
    assert str(e.value).startswith(error)
