"""qa23 F5, F6: one rule for a non-finite SLO or duration. An ``x-slo-ttft-ms`` / ``x-slo-tpot-ms`` of
``inf`` (or ``1e400``, which ``float`` reads as inf) is no SLO to flow control (``sloAdmission``, the
``slo-deadline`` / ``slo-feasible`` orderings) as it is to the latency model; a config duration of
YAML's ``.inf`` (``defaultRequestTTL``, ``defaultTTFTSLO``, any plugin's duration) is refused naming its
key, as ``1e300`` and the other float keys' non-finite values are."""

from __future__ import annotations

import pytest
import yaml

from kvgate.config.picker import parse_config
from kvgate.flowcontrol.policies import SLO_TPOT_HEADERS, SLO_TTFT_HEADERS, header_ms
from kvgate.scheduling.framework import ConfigError
from kvgate.scheduling.plugins.predicted_latency import slo_targets
from kvgate.scheduling.types import InferenceRequest


@pytest.mark.parametrize("value", ["inf", "1e400", "Infinity", "-inf", "nan"])
def test_flow_control_and_the_latency_model_read_a_non_finite_slo_alike(value: str) -> None:
    headers = {"x-slo-ttft-ms": value, "x-slo-tpot-ms": value}
    req = InferenceRequest(request_id="r", model="m", headers=headers)
    assert slo_targets(req) == (None, None)
    flow = header_ms(headers, SLO_TTFT_HEADERS), header_ms(headers, SLO_TPOT_HEADERS)
    assert flow == (None, None), f"flow control reads x-slo-*-ms: {value} as an SLO of {flow} s"


def test_the_next_header_still_counts_after_a_non_finite_one() -> None:
    headers = {"x-slo-ttft-ms": "inf", "x-llm-d-slo-ttft-ms": "250"}
    req = InferenceRequest(request_id="r", model="m", headers=headers)
    assert header_ms(headers, SLO_TTFT_HEADERS) == slo_targets(req)[0] == 0.25


@pytest.mark.parametrize("key", ["defaultRequestTTL", "defaultTTFTSLO"])
@pytest.mark.parametrize("value", [".inf", "1e300"])
def test_a_non_finite_flow_control_duration_is_refused(key: str, value: str) -> None:
    doc = yaml.safe_load(
        f"featureGates: [flowControl]\nflowControl: {{{key}: {value}}}\n"
        "plugins: [{type: queue-scorer}]\n"
        "schedulingProfiles: [{name: default, plugins: [{pluginRef: queue-scorer}]}]\n"
    )
    with pytest.raises(ConfigError, match=rf"^flowControl\.{key}: must be a"):
        parse_config(doc)


def test_a_non_finite_plugin_duration_is_refused() -> None:
    doc = yaml.safe_load(
        "saturationDetector: {metricsStalenessThreshold: .inf}\n"
        "plugins: [{type: queue-scorer}]\n"
        "schedulingProfiles: [{name: default, plugins: [{pluginRef: queue-scorer}]}]\n"
    )
    with pytest.raises(
        ConfigError, match=r"^saturationDetector\.parameters\.metricsStalenessThreshold: must be a finite"
    ):
        parse_config(doc)
