"""Review rev-b33 F1, F2, F3: a missing ``poolRef.group`` as upstream's CRD of the object's own group stores
it, ``active-ports`` items trimmed of every whitespace, and a config ``engineLabelKey`` kvgate does not read
alone was warned about (by the plugin; small34 (b): kvgate epp applies it, kvgate serve warns)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from kvgate.k8s import resources as R
from kvgate.k8s.discovery import PoolDiscovery, PoolSpec, pod_endpoints
from kvgate.scheduling.framework import Params, PluginHandle
from kvgate.scheduling.plugins.wiring import CoreMetricsExtractor


def _mine(pool_type: R.ResourceType, obj: dict[str, Any], group: str) -> bool:
    fake = SimpleNamespace(pool_type=pool_type, pool_name="p")
    return PoolDiscovery._mine(fake, obj, group)  # type: ignore[arg-type]


@pytest.mark.parametrize("group", [R.OBJECTIVE_GROUP, R.LEGACY_GROUP])
def test_a_missing_pool_ref_group_reads_as_the_objects_crd_stores_it(group: str) -> None:
    # llm-d-router apix/v1alpha2 PoolObjectReference.Group: +kubebuilder:default="llm-d.ai"; GIE's x-k8s
    # CRDs default it to inference.networking.k8s.io. Upstream's reconcilers compare the stored group.
    stored = R.POOL_REF_GROUP_DEFAULT[group]
    bare = {"spec": {"poolRef": {"name": "p"}, "priority": 1}}
    as_stored = {"spec": {"poolRef": {"name": "p", "group": stored}, "priority": 1}}
    for pool_type in (R.INFERENCE_POOL, R.LEGACY_INFERENCE_POOL):
        assert _mine(pool_type, bare, group) == _mine(pool_type, as_stored, group)
    assert _mine(R.INFERENCE_POOL, bare, group) == (group == R.LEGACY_GROUP)
    assert {"llm-d.ai": "llm-d.ai", R.LEGACY_GROUP: R.INFERENCE_POOL.group} == R.POOL_REF_GROUP_DEFAULT


SPEC = PoolSpec("p", "default", {"app": "sim"}, (8000, 8001))


def _ports(value: str) -> set[int]:
    meta = {"name": "p0", "labels": {"app": "sim"}, "annotations": {"llm-d.ai/active-ports": value}}
    status = {"podIP": "10.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "status": status}
    return {int(e.address.rsplit(":", 1)[1]) for e in pod_endpoints(pod, SPEC)}


@pytest.mark.parametrize("value", ["8000,8001\n", "8000,\t8001", "8000,\r\n8001\r\n", " 8000 ,\u00a08001"])
def test_active_ports_items_are_trimmed_of_every_whitespace(value: str) -> None:
    # (upstream ExtractActivePorts: fmt.Sscanf(strings.TrimSpace(item), "%d"); a YAML block scalar ends in \n)
    assert _ports(value) == {8000, 8001}


def _warnings(params: dict[str, Any]) -> list[str]:
    p = Params(params, "plugins[0].parameters")
    CoreMetricsExtractor.create("x", p, PluginHandle())
    return p.warnings


def test_engine_label_key_is_the_doors_not_the_plugins_warning() -> None:
    # small34 (b): kvgate epp applies the key; kvgate serve warns of one it does not read, per pool
    # (tests/k8s/test_epp_engine_label_key_config_small34.py). The plugin itself says nothing of it.
    assert _warnings({"engineLabelKey": "inference.networking.k8s.io/engine-type"}) == []
    assert _warnings({"engineLabelKey": "llm-d.ai/engine-type"}) == []
    assert _warnings({}) == []
    with pytest.raises(ValueError, match="engineLabelKey"):  # (still a string)
        _warnings({"engineLabelKey": 3})
