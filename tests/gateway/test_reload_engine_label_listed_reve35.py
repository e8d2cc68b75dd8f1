"""rev-e35 F2: a pool of listed endpoints reads no pod labels (its engineLabelKey names nothing, said at
load), so a ``--workers`` reload editing that key, or switching from ``policy:`` to an
EndpointPickerConfig naming the reference's default label, is not refused (before, the whole file was:
its endpoints edit too). A pool from an InferencePool still is (rev-a35 F5)."""

from __future__ import annotations

from typing import Any

import pytest

from kvgate.config.gateway import GatewayConfigError, parse_gateway_config
from kvgate.gateway.reload import check_pickers, not_applied


def _picker(label: str) -> dict[str, Any]:
    return {
        "apiVersion": "inference.networking.x-k8s.io/v1alpha1",
        "kind": "EndpointPickerConfig",
        "plugins": [
            {"type": "queue-scorer"},
            {"type": "metrics-data-source"},
            {"type": "core-metrics-extractor", "name": "x", "parameters": {"engineLabelKey": label}},
        ],
        "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": "queue-scorer"}]}],
        "data": {"sources": [{"pluginRef": "metrics-data-source", "extractors": [{"pluginRef": "x"}]}]},
    }


def _cfg(picker: dict[str, Any] | None, endpoints: list[str] | None = None) -> Any:
    pool: dict[str, Any] = {"name": "llm", "models": ["m"]}
    if endpoints is None:
        pool["inferencePool"] = {"name": "llm"}
    else:
        pool["endpoints"] = endpoints
    if picker is None:
        pool["policy"] = "kvgate"
    else:
        pool["endpointPickerConfig"] = picker
    return parse_gateway_config({"pools": [pool]})


def test_a_listed_pool_label_change_is_taken_with_its_endpoints_edit() -> None:
    old = _cfg(_picker("example.com/a"), ["127.0.0.1:1"])
    new = _cfg(_picker("example.com/b"), ["127.0.0.1:1", "127.0.0.1:2"])
    assert check_pickers(old, new) == ["llm"]
    assert not_applied(old, new, pickers=["llm"]) == []


def test_policy_to_a_picker_naming_the_default_label_is_taken_for_listed_endpoints() -> None:
    old = _cfg(None, ["127.0.0.1:1"])
    new = _cfg(_picker("llm-d.ai/engine-type"), ["127.0.0.1:1"])
    assert check_pickers(old, new) == ["llm"]
    assert not_applied(old, new, pickers=["llm"]) == []


def test_a_discovered_pool_label_change_is_still_refused() -> None:
    with pytest.raises(GatewayConfigError, match=r"engineLabelKey: changed .* restart kvgate serve"):
        check_pickers(_cfg(_picker("example.com/a")), _cfg(_picker("example.com/b")))
