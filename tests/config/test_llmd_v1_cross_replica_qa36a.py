"""qa36a F8: llm-d.ai/v1 renamed ``dataLayer.crossReplicaSyncerPluginRef`` / ``crossReplicaSyncInterval`` /
``crossReplicaPublishTimeout`` to ``dataLayer.crossReplica.{syncerPluginRef,syncInterval,publishTimeout}``.
The older spellings load with the "not applied" WARNING; the v1 one was refused as an unknown key."""

from __future__ import annotations

import pytest

from kvgate.config.picker import load_config

HEAD = "kind: EndpointPickerConfig\nplugins:\n- type: queue-scorer\ndataLayer:\n"


@pytest.mark.parametrize(
    "api, layer",
    [
        ("llm-d.ai/v1", "  crossReplica: {syncerPluginRef: sync, syncInterval: 1s, publishTimeout: 2s}\n"),
        ("inference.networking.x-k8s.io/v1alpha1", "  crossReplicaSyncerPluginRef: sync\n"),
    ],
)
def test_cross_replica_is_warned_not_applied_in_both_spellings(api: str, layer: str) -> None:
    cfg = load_config(f"apiVersion: {api}\n{HEAD}{layer}")
    [line] = [w for w in cfg.warnings if "crossReplica" in w]
    assert line.startswith("dataLayer: crossReplica") and "not applied" in line
