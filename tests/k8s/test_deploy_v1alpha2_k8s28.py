"""k8s28: ``deploy/kvgate-epp-v1alpha2.yaml``, the plain manifest for a v1alpha2 InferencePool
(``inference.networking.x-k8s.io``, llm-d v0.3's pools). Main (2a9ab840) shipped ``deploy/kvgate-epp.yaml``
with a v1 pool only (the chart renders v1alpha2 since k8s27).

Validated as deploy/ is: the objects schema-checked (built-in kinds with kubernetes-validate, strict, as
tests/k8s/test_chart.py; the pool against tests/k8s/v1alpha2_pool.py's schema, written from upstream's
v1alpha2 fields, closed as pruning sees it), the EPP's args parsed by ``kvgate epp``'s parser, and the
manifest's pool read by discovery from the API-server double in the group those args name. It is
``deploy/kvgate-epp.yaml`` with two changes and nothing else (so the two cannot drift): ``--pool-group`` in
the EPP's args and the pool in v1alpha2's shape, saying what the v1 pool says. A real API server's
``kubectl apply --dry-run=server``: tests/k8s_real/test_real_apiserver_k8s28.py.
"""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from k8s.test_chart import validate
from k8s.v1alpha2_pool import spec_schema
from kvgate.datalayer.store import EndpointStore
from kvgate.extproc.cli import parser as epp_parser
from kvgate.k8s import crdrules
from kvgate.k8s import resources as R
from kvgate.k8s.apiserver import ApiServerDouble
from kvgate.k8s.client import KubeClient
from kvgate.k8s.discovery import PoolDiscovery

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
V1, V1ALPHA2 = DEPLOY / "kvgate-epp.yaml", DEPLOY / "kvgate-epp-v1alpha2.yaml"


def docs(path: Path) -> dict[str, dict[str, Any]]:
    out = {d["kind"]: d for d in yaml.safe_load_all(path.read_text()) if d}
    assert len(out) == len([d for d in yaml.safe_load_all(path.read_text()) if d]), "one object per kind"
    return out


def args(manifest: dict[str, dict[str, Any]]) -> list[str]:
    out: list[str] = manifest["Deployment"]["spec"]["template"]["spec"]["containers"][0]["args"]
    return out


def test_it_is_the_v1_manifest_with_the_pool_group_and_a_v1alpha2_pool() -> None:
    v1, v1alpha2 = docs(V1), docs(V1ALPHA2)
    assert set(v1) == set(v1alpha2)
    for kind in set(v1) - {"Deployment", "InferencePool"}:
        assert v1alpha2[kind] == v1[kind], kind
    # The Deployment: --pool-group added, nothing else.
    a1, a2 = args(v1), args(v1alpha2)
    i = a2.index("--pool-group")
    assert a2[i : i + 2] == ["--pool-group", R.LEGACY_GROUP] and a2[:i] + a2[i + 2 :] == a1
    same = copy.deepcopy(v1alpha2["Deployment"])
    same["spec"]["template"]["spec"]["containers"][0]["args"] = a1
    assert same == v1["Deployment"]
    # The pool says what the v1 pool says, in v1alpha2's words.
    p1, p2 = v1["InferencePool"], v1alpha2["InferencePool"]
    assert p2["apiVersion"] == R.LEGACY_INFERENCE_POOL.api_version and p2["metadata"] == p1["metadata"]
    [port] = p1["spec"]["targetPorts"]
    ref = p1["spec"]["endpointPickerRef"]
    v1_ref = {**ref, "portNumber": ref["port"]["number"]}
    del v1_ref["port"]
    want = {"selector": p1["spec"]["selector"]["matchLabels"], "targetPortNumber": port["number"]}
    assert p2["spec"] == {**want, "extensionRef": v1_ref}


def test_its_objects_validate_and_the_epp_watches_its_pool_in_v1alpha2() -> None:
    manifest = docs(V1ALPHA2)
    for kind, doc in manifest.items():
        if kind != "InferencePool":
            validate(doc)  # (kubernetes-validate, strict)
    pool = manifest["InferencePool"]
    jsonschema.Draft7Validator(crdrules.closed(spec_schema())).validate(pool["spec"])
    ns, unknown = epp_parser().parse_known_args(args(manifest))
    assert unknown == [] and ns.pool_group == R.LEGACY_GROUP
    assert (ns.pool_name, ns.pool_namespace) == (pool["metadata"]["name"], pool["metadata"]["namespace"])
    svc = manifest["Service"]
    assert pool["spec"]["extensionRef"]["name"] == svc["metadata"]["name"]
    assert pool["spec"]["extensionRef"]["portNumber"] == ns.port


async def test_discovery_reads_the_manifests_pool_in_the_group_its_epp_is_run_with() -> None:
    manifest = docs(V1ALPHA2)
    pool = manifest["InferencePool"]
    ns, _ = epp_parser().parse_known_args(args(manifest))
    async with ApiServerDouble() as double:
        double.create(pool)
        double.create({"apiVersion": "v1", "kind": "Pod",
                       "metadata": {"name": "m0", "namespace": "default",
                                    "labels": dict(pool["spec"]["selector"])}})  # fmt: skip
        double.set_pod_status("m0", ip="10.0.0.7", ready=True)
        store = EndpointStore()
        async with await KubeClient.connect(server=double.url) as kube:
            disc = PoolDiscovery(kube, store, pool_name=ns.pool_name, namespace=ns.pool_namespace,
                                 pool_type=R.POOL_GROUPS[ns.pool_group])  # fmt: skip
            disc.start()
            try:
                await disc.wait_synced()
                loop = asyncio.get_running_loop()
                end = loop.time() + 30.0
                while {e.address for e in store.all()} != {"10.0.0.7:8000"}:
                    assert loop.time() < end, f"the pod's endpoint not within 30 s ({disc.problem()})"
                    await asyncio.sleep(0.02)
                assert disc.pool is not None and disc.pool.endpoint_picker is not None
                assert disc.pool.endpoint_picker["name"] == manifest["Service"]["metadata"]["name"]
                assert disc.pool.failure_mode == "FailClose"
            finally:
                await disc.stop()
