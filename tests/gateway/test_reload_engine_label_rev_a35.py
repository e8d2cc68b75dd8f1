"""rev-a35 F5: under ``--workers`` a reload changing a pool's engineLabelKey is refused (the supervisor's
``check_pickers``): a worker restarted after it would otherwise read the new label while the others keep
the one they started with (one pod, two engines across workers)."""

from __future__ import annotations

import copy

import pytest

from kvgate.config.gateway import GatewayConfigError, parse_gateway_config
from kvgate.gateway.pools import build_pool
from kvgate.gateway.reload import check_pickers, take_applied


def _cfg(label: str, weight: float = 1.0):  # type: ignore[no-untyped-def]
    picker = {  # (one metrics extractor naming the label; the queue scorer the profile)
        "apiVersion": "inference.networking.x-k8s.io/v1alpha1",
        "kind": "EndpointPickerConfig",
        "plugins": [
            {"type": "queue-scorer"},
            {"type": "metrics-data-source"},
            {"type": "core-metrics-extractor", "name": "x", "parameters": {"engineLabelKey": label}},
        ],
        "schedulingProfiles": [
            {"name": "default", "plugins": [{"pluginRef": "queue-scorer", "weight": weight}]}
        ],
        "data": {"sources": [{"pluginRef": "metrics-data-source", "extractors": [{"pluginRef": "x"}]}]},
    }
    pool = {"name": "llm", "models": ["m"], "inferencePool": {"name": "llm"}, "endpointPickerConfig": picker}
    return parse_gateway_config({"pools": [pool]})


def test_a_changed_engine_label_is_refused_by_the_supervisor() -> None:
    running = _cfg("example.com/a")
    before = build_pool(copy.deepcopy(running.pools[0]), announce=False).store.engine_labels
    with pytest.raises(GatewayConfigError) as e:
        check_pickers(running, _cfg("example.com/b"))
    assert e.value.key == "pools[llm].endpointPickerConfig engineLabelKey" and "restart" in str(e.value)
    # The same label, another weight: taken, and a worker restarted after it reads the label as before.
    new = _cfg("example.com/a", 2.0)
    pickers = check_pickers(running, new)
    assert pickers == ["llm"]
    take_applied(running, new, pickers=pickers)
    assert build_pool(running.pools[0], announce=False).store.engine_labels == before == ("example.com/a",)
