"""The ``flowControl`` section and the feature gate: parsed into the Director, errors name the key."""

from __future__ import annotations

from typing import Any

import pytest

from kvgate.config.director import build_director
from kvgate.config.picker import parse_config
from kvgate.datalayer.store import EndpointStore
from kvgate.scheduling.framework import ConfigError

BASE: dict[str, Any] = {
    "plugins": [{"type": "queue-scorer"}],
    "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": "queue-scorer"}]}],
}


def _director(**extra: Any) -> Any:
    return build_director(
        {**BASE, **extra}, EndpointStore.from_addresses(["10.0.0.1:8000"]), flow_metrics=False
    )


def test_gate_off_means_no_flow_control_even_with_a_section() -> None:
    assert _director(flowControl={"maxRequests": 5}).flow is None


def test_gate_on_builds_the_controller_with_bands() -> None:
    d = _director(
        featureGates=["flowControl"],
        flowControl={
            "maxRequests": 50,
            "defaultRequestTTL": "1500ms",
            "fairnessPolicy": "global-strict-fairness-policy",
            "orderingPolicy": "edf",
            "priorityBands": [
                {"priority": 1, "maxRequests": 7, "fairnessPolicy": "least-attained-service"},
                {"priority": -1, "maxBytes": 1000},
            ],
        },
    )
    cfg = d.flow.ctl.cfg
    assert (cfg.max_requests, cfg.ttl, cfg.fairness, cfg.ordering) == (50, 1.5, "global-strict", "edf")
    assert cfg.bands[1].max_requests == 7 and cfg.bands[1].fairness == "least-attained-service"
    assert cfg.bands[1].ordering == "edf"  # the section's default
    assert cfg.bands[-1].max_bytes == 1000
    assert cfg.band(3).fairness == "global-strict"  # an unlisted band gets the defaults


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"maxRequests": -1}, "flowControl.maxRequests"),
        ({"fairnessPolicy": "fair"}, "flowControl.fairnessPolicy"),
        ({"orderingPolicy": "lifo"}, "flowControl.orderingPolicy"),
        ({"defaultRequestTTL": "soon"}, "flowControl.defaultRequestTTL"),
        ({"defaultRequestTTL": 0}, "flowControl.defaultRequestTTL"),
        ({"maxRequets": 1}, "flowControl.maxRequets"),
        ({"fairShareHeadroom": 1.0}, "flowControl.fairShareHeadroom"),
        ({"fairShareHeadroom": -0.1}, "flowControl.fairShareHeadroom"),
        ({"fairShareHeadroom": "half"}, "flowControl.fairShareHeadroom"),
        ({"fairShareHeadroomOn": "running"}, "flowControl.fairShareHeadroomOn"),
        ({"priorityBands": {"priority": 1}}, "flowControl.priorityBands"),
        ({"priorityBands": [{"maxRequests": 1}]}, "flowControl.priorityBands[0].priority"),
        (
            {"priorityBands": [{"priority": 0}, {"priority": 1, "maxBytes": "x"}]},
            "flowControl.priorityBands[1].maxBytes",
        ),
        ({"priorityBands": [{"priority": 0}, {"priority": 0}]}, "flowControl.priorityBands[1].priority"),
        ({"priorityBands": [{"priority": 0, "ordering": "fcfs"}]}, "flowControl.priorityBands[0].ordering"),
    ],
)
def test_errors_name_the_exact_key(section: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config({**BASE, "featureGates": ["flowControl"], "flowControl": section})
    assert str(e.value).startswith(key + ":"), str(e.value)


@pytest.mark.parametrize("detector", ["utilization-detector", "concurrency-detector"])
def test_a_pending_headroom_without_a_pending_bound_is_refused(detector: str) -> None:
    """``fairShareHeadroomOn: pending`` takes the headroom off ``maxPendingRequests``: a detector without
    one would silently use the whole score instead. The error names the key."""
    fc = {"fairShareHeadroom": 0.25, "fairShareHeadroomOn": "pending"}
    with pytest.raises(ConfigError) as e:
        _director(featureGates=["flowControl"], flowControl=fc, saturationDetector={"type": detector})
    assert str(e.value).startswith("flowControl.fairShareHeadroomOn:"), str(e.value)
    assert f"saturationDetector ('{detector}') has none" in str(e.value)
    # With the bound, or the default ``saturation``, it loads.
    bound = {"type": "concurrency-detector", "parameters": {"maxPendingRequests": 2}}
    assert _director(featureGates=["flowControl"], flowControl=fc, saturationDetector=bound).flow is not None
    whole = {"fairShareHeadroom": 0.25}
    d = _director(featureGates=["flowControl"], flowControl=whole, saturationDetector={"type": detector})
    assert d.flow is not None


def test_max_pending_requests_on_the_concurrency_detector() -> None:
    with pytest.raises(ConfigError, match=r"saturationDetector.parameters.maxPendingRequests"):
        parse_config(
            {
                **BASE,
                "saturationDetector": {
                    "type": "concurrency-detector",
                    "parameters": {"maxPendingRequests": -1},
                },
            }
        )
    d = _director(
        saturationDetector={"type": "concurrency-detector", "parameters": {"maxPendingRequests": 2}}
    )
    assert d.detector.max_pending == 2


def test_a_lower_bound_alone_is_said_in_words() -> None:
    # Review s21-qa (noticed): "must be in [0, None]" for a negative maxRequests.
    with pytest.raises(ConfigError) as e:
        parse_config({**BASE, "featureGates": ["flowControl"], "flowControl": {"maxRequests": -1}})
    assert "must be >= 0, got -1" in str(e.value) and "None" not in str(e.value), str(e.value)
