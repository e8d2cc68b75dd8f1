"""Kubernetes objects and read-backs the multi-cluster import tests share (API-server doubles, kubectl)."""

from __future__ import annotations

from typing import Any

from kvgate.k8s import resources as R
from kvgate.k8s.apiserver import ApiServerDouble
from kvgate.multicluster.imports import CONTROLLER_NAME, EXPORT_ANNOTATION


def inference_pool(
    name: str, gateway: str | None = None, *, exported: bool = True, aggregate: bool = False
) -> dict[str, Any]:
    """A member cluster's InferencePool in ``default``: exported to the ClusterSet (the annotation) unless
    ``exported`` is False, with its cluster gateway's address (``kvgate.io/gateway``) and, with
    ``aggregate``, its aggregate URL there (``kvgate.io/aggregate``)."""
    ann = {EXPORT_ANNOTATION: "ClusterSet"} if exported else {}
    if gateway:
        ann["kvgate.io/gateway"] = gateway
        if aggregate:
            ann["kvgate.io/aggregate"] = f"http://{gateway}/v1/pool/aggregate"
    return {
        "apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool",
        "metadata": {"name": name, "namespace": "default", "annotations": ann},
        "spec": {"selector": {"matchLabels": {"app": name}}, "targetPorts": [{"number": 8000}]},
    }  # fmt: skip


def exporters(hub: ApiServerDouble, name: str) -> list[str] | None:
    """The clusters kvgate's controller entry of the hub's import ``name`` lists (None: no import)."""
    try:
        obj = hub.get(R.INFERENCE_POOL_IMPORT, name, "default")
    except Exception:
        return None
    ctrls = obj.get("status", {}).get("controllers", [])
    return [c["name"] for ctrl in ctrls if ctrl["name"] == CONTROLLER_NAME for c in ctrl["exportingClusters"]]
