"""Review s26-qa F2: an upstream EndpointPickerConfig ``flowControl`` section loads as the reference's does.

GIE's config API (``apix/config/v1alpha1`` ``FlowControlConfig``): ``maxBytes``, ``maxRequests``,
``defaultRequestTTL``, ``defaultPriorityBand`` (the template for priorities not listed) and
``priorityBands[]`` of ``{priority, maxBytes, maxRequests, fairnessPolicyRef, orderingPolicyRef}``, the
policies referenced by plugin name (declared under ``plugins:``, or the policy type), the limits as
Kubernetes quantities. Before:
``defaultPriorityBand`` / ``fairnessPolicyRef`` / ``orderingPolicyRef`` refused as unknown keys, the policy
plugin types unknown, ``1Gi`` refused. Unknown keys and wrong references are still refused, naming the key.
(QA's two tests first, as filed.)
"""

from __future__ import annotations

from typing import Any

import pytest

from kvgate.config.picker import parse_config, validate
from kvgate.flowcontrol.config import parse_flow_control
from kvgate.scheduling.framework import ConfigError

HEAD: dict[str, Any] = {
    "apiVersion": "inference.networking.x-k8s.io/v1alpha1",
    "kind": "EndpointPickerConfig",
    "featureGates": ["flowControl"],
    "plugins": [{"type": "queue-scorer"}],
    "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": "queue-scorer"}]}],
}


def test_default_priority_band_loads() -> None:
    fc = {"maxBytes": 1 << 30, "defaultRequestTTL": "30s", "defaultPriorityBand": {"maxBytes": 100 << 20}}
    cfg = parse_config({**HEAD, "flowControl": fc})
    validate(cfg)
    # a band nobody listed gets the template's limit
    assert parse_flow_control(cfg.flow_control).band(7).max_bytes == 100 << 20


def test_policy_refs_by_upstream_names_load() -> None:
    fc = {"priorityBands": [{"priority": 100, "fairnessPolicyRef": "round-robin-fairness-policy",
                             "orderingPolicyRef": "edf-ordering-policy"}]}  # fmt: skip
    cfg = parse_config({**HEAD, "flowControl": fc})
    validate(cfg)
    band = parse_flow_control(cfg.flow_control).band(100)
    assert (band.fairness, band.ordering) == ("round-robin", "edf")


def test_policies_declared_as_plugins_are_named_by_their_plugin_name() -> None:
    """The reference's way: the policy declared under ``plugins:`` (its type), the band naming the plugin;
    the template's policies and quantities reach every priority not listed, and the director builds."""
    from kvgate.config.director import build_director
    from kvgate.datalayer.store import EndpointStore

    plugins = [*HEAD["plugins"], {"name": "fair", "type": "global-strict-fairness-policy"},
               {"type": "edf-ordering-policy"}]  # fmt: skip
    fc = {"maxBytes": "2Gi", "maxRequests": "1k",
          "defaultPriorityBand": {"maxRequests": "100", "maxBytes": "500M", "fairnessPolicyRef": "fair",
                                  "orderingPolicyRef": "edf-ordering-policy"},
          "priorityBands": [{"priority": 1, "fairnessPolicyRef": "fair", "maxBytes": "1.5Ki"}]}  # fmt: skip
    cfg = parse_config({**HEAD, "plugins": plugins, "flowControl": fc})
    got = parse_flow_control(cfg.flow_control, plugins=cfg.plugin_types())
    assert (got.max_bytes, got.max_requests) == (2 << 30, 1000)
    b = got.band(1)
    assert (b.fairness, b.max_bytes, b.max_requests) == ("global-strict", 1536, 0)
    t = got.band(-3)
    assert (t.fairness, t.ordering, t.max_requests, t.max_bytes) == ("global-strict", "edf", 100, 500_000_000)
    d = build_director(cfg, EndpointStore.from_addresses(["127.0.0.1:1"]))
    assert d.flow is not None and d.flow.ctl.band(-3).max_requests == 100


@pytest.mark.parametrize(
    ("fc", "key"),
    [
        ({"defaultPriorityBand": {"maxByte": 1}}, "flowControl.defaultPriorityBand.maxByte: unknown"),
        ({"priorityBands": [{"priority": 1, "fairnessPolicyRef": "queue-scorer"}]},
         "flowControl.priorityBands[0].fairnessPolicyRef: must name a plugin"),
        ({"priorityBands": [{"priority": 1, "orderingPolicyRef": "lifo-ordering-policy"}]},
         "flowControl.priorityBands[0].orderingPolicyRef: must name a plugin"),
        ({"priorityBands": [{"priority": 1, "fairnessPolicyRef": "round-robin-fairness-policy",
                             "fairnessPolicy": "round-robin"}]},
         "flowControl.priorityBands[0].fairnessPolicyRef: flowControl.priorityBands[0].fairnessPolicy is"),
        ({"maxBytes": "1.5"}, "flowControl.maxBytes: must be an integer >= 0 or a Kubernetes quantity"),
        ({"defaultPriorityBand": {"maxRequests": "-1"}}, "flowControl.defaultPriorityBand.maxRequests: must"),
        ({"usageLimitPolicyPluginRef": "x"}, "flowControl.usageLimitPolicyPluginRef: unknown"),
    ],
)  # fmt: skip
def test_wrong_keys_and_references_are_refused_naming_the_key(fc: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config({**HEAD, "flowControl": fc})
    assert str(e.value).startswith(key), e.value


def test_a_policy_plugin_loads_and_takes_no_parameters() -> None:
    parse_config({**HEAD, "plugins": [*HEAD["plugins"], {"type": "round-robin-fairness-policy"}]})
    with pytest.raises(ConfigError, match=r"plugins\[1\]\.parameters\.x: unknown parameter"):
        bad = {"type": "fcfs-ordering-policy", "parameters": {"x": 1}}
        parse_config({**HEAD, "plugins": [*HEAD["plugins"], bad]})
