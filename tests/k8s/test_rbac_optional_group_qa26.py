"""qa26 F5: RBAC not granting one of the two objective/rewrite API groups kept the EPP not ready for good.

kvgate watches InferenceObjective and InferenceModelRewrite in both ``llm-d.ai`` and the legacy
``inference.networking.x-k8s.io`` (docs/kubernetes.md "What kvgate watches"). ``PoolDiscovery.problem``
reports any 403 of any reflector first, so /readyz is 503 while the pool and its pods are synced and routable.
An operator's RBAC written for the reference EPP (GIE's chart and GKE's docs grant ``inferenceobjectives``,
``inferencemodelrewrites`` in ``inference.networking.x-k8s.io`` only) plus the ``llm-d.ai`` CRDs installed
(kvgate's docs: ``kubectl create -f deploy/crds/``; or llm-d in the cluster) = an EPP that never turns ready:
the readiness probe keeps it out of its Service, the gateway's FailClose refuses every request. Reproduced
live on the real kube-apiserver 1.20.2 with ``--authorization-mode RBAC`` (the report). The same absent CRD
(404) is tolerated: ready.
Here: the API-server double forbids the ``llm-d.ai`` group; the legacy group holds an objective.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from prometheus_client import REGISTRY, generate_latest

from kvgate.datalayer.store import EndpointStore
from kvgate.k8s import resources as R
from kvgate.k8s.apiserver import ApiServerDouble
from kvgate.k8s.runtime import KubeOptions, KubePool

POOL = {
    "apiVersion": "inference.networking.k8s.io/v1",
    "kind": "InferencePool",
    "metadata": {"name": "llm"},
    "spec": {"selector": {"matchLabels": {"app": "vllm"}}, "targetPorts": [{"number": 8000}]},
}


async def _until(cond: Callable[[], bool], what: str, within_s: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + within_s
    while not cond():
        assert loop.time() < end, f"not within {within_s} s: {what}"
        await asyncio.sleep(0.05)


async def test_a_forbidden_objective_group_does_not_keep_the_epp_unready() -> None:
    async with ApiServerDouble() as double:
        double.create(POOL)
        double.create(
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p0", "labels": {"app": "vllm"}}}
        )
        double.set_pod_status("p0", ip="10.0.0.1", ready=True)
        double.create({"apiVersion": "inference.networking.x-k8s.io/v1alpha2", "kind": "InferenceObjective",
                       "metadata": {"name": "crit"},
                       "spec": {"priority": 5, "poolRef": {"name": "llm"}}})  # fmt: skip
        # the reference EPP's RBAC: nothing in llm-d.ai
        double.forbid(R.INFERENCE_OBJECTIVE)
        double.forbid(R.INFERENCE_MODEL_REWRITE)
        store = EndpointStore()
        policies: list[tuple[dict[str, int], list[Any]]] = []
        kp = KubePool(KubeOptions("llm", "default", server=double.url), store, store_pool="llm",
                      on_policy=lambda o, r: policies.append((o, r)))  # fmt: skip
        await kp.start()
        try:
            await _until(lambda: {e.address for e in store.all()} == {"10.0.0.1:8000"}, "the pod's endpoint")
            await _until(lambda: bool(policies) and policies[-1][0] == {"crit": 5}, "the legacy objective")
            # routable, objectives applied: ready (main: "inferenceobjectives.llm-d.ai/v1alpha2 in default:
            # 403 Forbidden ...", for good)
            await _until(lambda: kp.problem() is None, f"ready (problem: {kp.problem()!r})")
            # and said: the gauge (beside one WARNING)
            from kvgate.k8s.staleness import FORBIDDEN_METRIC

            text = generate_latest(REGISTRY).decode()
            assert (
                f'{FORBIDDEN_METRIC}{{name="inferenceobjectives.llm-d.ai/v1alpha2 in default"}} 1.0' in text
            )
            legacy = "inferenceobjectives.inference.networking.x-k8s.io/v1alpha2 in default"
            assert f'{FORBIDDEN_METRIC}{{name="{legacy}"}} 0.0' in text
        finally:
            await kp.stop()


async def test_a_kind_no_group_of_which_is_readable_keeps_the_epp_unready() -> None:
    """Strict where nothing of a kind can be read: both groups forbidden (RBAC with no objective rule), or
    one forbidden and the other's CRD absent: the objects may exist where kvgate cannot read them."""
    async with ApiServerDouble() as double:
        double.create(POOL)
        double.create(
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p0", "labels": {"app": "vllm"}}}
        )
        double.set_pod_status("p0", ip="10.0.0.1", ready=True)
        double.forbid(R.INFERENCE_OBJECTIVE)
        double.forbid(R.LEGACY_INFERENCE_OBJECTIVE)
        double.forbid(R.INFERENCE_MODEL_REWRITE)  # (its legacy group readable: tolerated)
        store = EndpointStore()
        kp = KubePool(KubeOptions("llm", "default", server=double.url), store, store_pool="llm")
        await kp.start()
        try:
            await _until(lambda: {e.address for e in store.all()} == {"10.0.0.1:8000"}, "the pod's endpoint")
            await _until(
                lambda: "inferenceobjectives" in (kp.problem() or ""), "the objectives' 403 reported"
            )
            # the rewrites (the legacy group readable) are no reason; the objectives stay one, for good
            await _until(
                lambda: kp.discovery is not None and bool(kp.discovery.tolerated_forbidden()),
                "the forbidden rewrite group tolerated",
            )
            assert "403 Forbidden" in (kp.problem() or "") and "inferenceobjectives" in (kp.problem() or "")
            double.forbid(R.LEGACY_INFERENCE_OBJECTIVE, False)  # the legacy group granted: ready
            await _until(lambda: kp.problem() is None, f"ready (problem: {kp.problem()!r})")
        finally:
            await kp.stop()
