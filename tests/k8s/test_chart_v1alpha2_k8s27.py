"""k8s27: the chart's ``inferencePool.apiVersion`` takes the older ``inference.networking.x-k8s.io/v1alpha2``
(llm-d v0.3's pools): the pool is rendered in that version's shape (one ``targetPortNumber``, ``selector`` a
plain map, ``extensionRef``) and the EPP runs with ``--pool-group inference.networking.x-k8s.io``; what that
version cannot say (several ports, ``appProtocol``, the hub export) and any other apiVersion are refused at
render time. Main (6782b99d) rendered v1's shape under the v1alpha2 apiVersion, the EPP watching v1.
The Role for both groups: tests/k8s/test_rbac_pool_groups_k8s27.py; against a real API server:
tests/k8s_real/test_real_apiserver_rbac.py."""

from __future__ import annotations

import asyncio
from typing import Any

import helm_python as helm
import jsonschema
import pytest

from k8s.test_chart import BASE, by_kind, epp_args, render
from k8s.v1alpha2_pool import spec_schema
from kvgate.datalayer.store import EndpointStore
from kvgate.extproc.cli import parser as epp_parser
from kvgate.k8s import crdrules
from kvgate.k8s import resources as R
from kvgate.k8s.apiserver import ApiServerDouble
from kvgate.k8s.client import KubeClient
from kvgate.k8s.discovery import PoolDiscovery

V1ALPHA2 = R.LEGACY_INFERENCE_POOL.api_version


def values(**pool: Any) -> dict[str, Any]:
    return {"inferencePool": {**BASE["inferencePool"], "apiVersion": V1ALPHA2, **pool}}


def test_a_v1alpha2_pool_is_rendered_in_its_own_shape_and_watched_in_its_group() -> None:
    docs = render(values(failureMode="FailOpen"))
    pool = by_kind(docs, "InferencePool")
    assert pool["apiVersion"] == V1ALPHA2
    assert pool["spec"] == {"targetPortNumber": 8000, "selector": {"app": "vllm-llama3-8b"},
                            "extensionRef": {"name": "llama-epp", "portNumber": 9002,
                                             "failureMode": "FailOpen"}}  # fmt: skip
    jsonschema.Draft7Validator(crdrules.closed(spec_schema())).validate(pool["spec"])
    ns, unknown = epp_parser().parse_known_args(epp_args(docs)[1:])
    assert unknown == [] and ns.pool_group == R.LEGACY_GROUP
    # v1 (the default) is unchanged: its shape, no --pool-group.
    v1 = render(BASE)
    assert set(by_kind(v1, "InferencePool")["spec"]) == {"targetPorts", "selector", "endpointPickerRef"}
    assert epp_parser().parse_known_args(epp_args(v1)[1:])[0].pool_group is None


@pytest.mark.parametrize(
    ("pool", "message"),
    [({"apiVersion": "inference.networking.x-k8s.io/v1alpha1"}, "inferencePool.apiVersion"),
     ({"targetPorts": [{"number": 8000}, {"number": 8001}]}, "a v1alpha2 InferencePool has one port"),
     ({"appProtocol": "kubernetes.io/h2c"}, "inferencePool.appProtocol: v1 only"),
     ({"export": {"enabled": True}}, "inferencePool.export: v1 only")],
    ids=["unknown-version", "two-ports", "app-protocol", "export"],
)  # fmt: skip
def test_what_a_v1alpha2_pool_cannot_say_is_refused(pool: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmError, match=message):
        render(values(**pool))


async def test_the_charts_v1alpha2_pool_is_what_discovery_reads() -> None:
    """The rendered pool, created in the double, read by discovery in the group the EPP is run with."""
    docs = render(values())
    pool = by_kind(docs, "InferencePool")
    pool["metadata"]["namespace"] = "default"
    group = epp_parser().parse_known_args(epp_args(docs)[1:])[0].pool_group
    async with ApiServerDouble() as double:
        double.create(pool)
        double.create({"apiVersion": "v1", "kind": "Pod",
                       "metadata": {"name": "m0", "labels": {"app": "vllm-llama3-8b"}}})  # fmt: skip
        double.set_pod_status("m0", ip="10.0.0.7", ready=True)
        store = EndpointStore()
        async with await KubeClient.connect(server=double.url) as kube:
            disc = PoolDiscovery(kube, store, pool_name="llama", pool_type=R.POOL_GROUPS[group])
            disc.start()
            try:
                await disc.wait_synced()
                loop = asyncio.get_running_loop()
                end = loop.time() + 30.0
                while {e.address for e in store.all()} != {"10.0.0.7:8000"}:
                    assert loop.time() < end, "the pod's endpoint not within 30 s"
                    await asyncio.sleep(0.02)
                assert disc.pool is not None and disc.pool.endpoint_picker is not None
                assert disc.pool.endpoint_picker["name"] == "llama-epp"
                assert disc.pool.failure_mode == "FailClose"
            finally:
                await disc.stop()
