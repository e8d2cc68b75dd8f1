"""qa35a F3: a legacy-group object logs its deprecation once, as docs/kubernetes.md says, however many
pools' discoveries watch it (one gateway with two pools in a namespace logged it once per pool: two
identical WARNING lines). Failed before: 2 lines."""

from __future__ import annotations

import copy

import pytest

from kvgate.datalayer.store import EndpointStore
from kvgate.k8s import resources as R
from kvgate.k8s.apiserver import ApiServerDouble
from kvgate.k8s.client import KubeClient
from kvgate.k8s.discovery import PoolDiscovery

from .test_discovery import POOL, Policy, _until


async def test_two_pools_one_legacy_objective_one_warning(
    double: ApiServerDouble, kube: KubeClient, caplog: pytest.LogCaptureFixture
) -> None:
    other = copy.deepcopy(POOL)
    other["metadata"]["name"] = "llm2"
    double.create(POOL)
    double.create(other)
    pool_ref = {"group": "inference.networking.k8s.io", "kind": "InferencePool", "name": "llm"}
    double.create({"apiVersion": f"{R.LEGACY_GROUP}/v1alpha2", "kind": "InferenceObjective",
                   "metadata": {"name": "tier"}, "spec": {"priority": 7, "poolRef": pool_ref}})  # fmt: skip
    policies = [Policy(), Policy()]
    discs = [
        PoolDiscovery(kube, EndpointStore(), pool_name=name, namespace="default", on_policy=policy)
        for name, policy in zip(("llm", "llm2"), policies, strict=True)
    ]
    try:
        for d in discs:
            d.start()
        legacy = (R.LEGACY_GROUP, "InferenceObjective")
        await _until(lambda: all("tier" in str(d.policy_reflectors[legacy].items) for d in discs))
        await _until(lambda: policies[0].objectives == {"tier": 7})
        lines = [r for r in caplog.records if "tier uses the deprecated group" in r.getMessage()]
        assert len(lines) == 1, [r.getMessage() for r in lines]
    finally:
        for d in discs:
            await d.stop()
