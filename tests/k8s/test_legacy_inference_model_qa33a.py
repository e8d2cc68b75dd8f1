"""qa33a-F5: kvgate does not read the legacy InferenceModel (GIE v1alpha2: modelName, criticality,
targetModels); a cluster that serves it gets one WARNING at start naming what to use instead
(InferenceObjective + InferenceModelRewrite), and docs/kubernetes.md says so. Before: nothing, silently.

``KubePool`` as ``kvgate epp --pool-name`` / ``kvgate serve --pool-name`` builds it, against the API-server
double with GIE's InferenceModel CRD installed (and one InferenceModel), and without it (no warning)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from k8s.test_rbac_pool_groups_k8s27 import _until, pool
from kvgate.datalayer.store import EndpointStore
from kvgate.k8s import resources as R
from kvgate.k8s.apiserver import ApiServerDouble
from kvgate.k8s.runtime import KubeOptions, KubePool

ROOT = Path(__file__).resolve().parents[2]

MODEL_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "inferencemodels.inference.networking.x-k8s.io"},
    "spec": {"group": "inference.networking.x-k8s.io", "scope": "Namespaced",
             "names": {"kind": "InferenceModel", "listKind": "InferenceModelList",
                       "plural": "inferencemodels", "singular": "inferencemodel"},
             "versions": [{"name": "v1alpha2", "served": True, "storage": True,
                           "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                               "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}}}]},
}  # fmt: skip


@pytest.mark.parametrize("served", [True, False], ids=["crd-installed", "no-crd"])
async def test_a_cluster_serving_inference_model_gets_one_warning(
    caplog: pytest.LogCaptureFixture, served: bool
) -> None:
    async with ApiServerDouble(bookmark_interval=0.2) as d:
        d.create(pool(R.INFERENCE_POOL.group))
        if served:
            d.create(MODEL_CRD)
            d.create({"apiVersion": "inference.networking.x-k8s.io/v1alpha2", "kind": "InferenceModel",
                      "metadata": {"name": "chat"},
                      "spec": {"modelName": "chat", "criticality": "Critical", "poolRef": {"name": "llm"},
                               "targetModels": [{"name": "m1", "weight": 50},
                                                {"name": "m2", "weight": 50}]}})  # fmt: skip
        opts = KubeOptions("llm", "default", server=d.url)
        kp = KubePool(opts, EndpointStore(), on_policy=lambda _o, _r: None)
        with caplog.at_level(logging.WARNING, logger="kvgate.k8s.legacy"):
            await kp.start()
            try:
                await _until(lambda: kp.legacy_check is not None and kp.legacy_check.done(), "the check done")
                await _until(lambda: kp.problem() is None, f"ready (last: {kp.problem()})")
            finally:
                await kp.stop()
    assert kp.legacy_check is not None and kp.legacy_check.result() is served
    warned = [r.getMessage() for r in caplog.records if r.name == "kvgate.k8s.legacy"]
    if served:
        [msg] = warned
        assert "does not read InferenceModels" in msg and "InferenceObjective" in msg
        assert "InferenceModelRewrite" in msg
    else:
        assert warned == []


def test_the_docs_say_inference_model_is_not_read() -> None:
    text = (ROOT / "docs" / "kubernetes.md").read_text()
    [row] = [ln for ln in text.splitlines() if ln.startswith("| `InferenceModel` ")]
    assert "not read" in row and "InferenceObjective" in row and "InferenceModelRewrite" in row
