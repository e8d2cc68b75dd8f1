"""small34 (c) on a real kube-apiserver (marker ``k8sreal``): an InferenceObjective / InferenceModelRewrite
applied with no ``poolRef.group`` through the shipped CRD of each API group is stored with the group the
code reads for a missing one (``R.POOL_REF_GROUP_DEFAULT``) and ``kind: InferencePool``, as through
upstream's CRDs. Before, the shipped CRDs had no default: stored with no group, no kind."""

from __future__ import annotations

import uuid

import pytest
import yaml

from k8s_real.test_real_apiserver import CRDS, Kubectl, apply_crd
from kvgate.k8s import resources as R

pytestmark = pytest.mark.k8sreal


@pytest.mark.parametrize("group", [R.OBJECTIVE_GROUP, R.LEGACY_GROUP])
async def test_pool_ref_is_stored_with_the_default_group_and_kind(
    server: tuple[str, str], group: str
) -> None:
    ns = f"kvg-{uuid.uuid4().hex[:8]}"
    k = Kubectl(server[1], ns)
    await k.run("create", "namespace", ns)
    for kind, plural, extra in (
        ("InferenceObjective", "inferenceobjectives", {"priority": 1}),
        ("InferenceModelRewrite", "inferencemodelrewrites", {"rules": []}),
    ):
        [crd] = [p for p in CRDS if p.name == f"{plural}.{group}.yaml"]
        await apply_crd(k, crd)
        obj = {"apiVersion": f"{group}/v1alpha2", "kind": kind, "metadata": {"name": "o"},
               "spec": {"poolRef": {"name": "llm"}, **extra}}  # fmt: skip
        await k.run("apply", "-f", "-", stdin=yaml.safe_dump(obj))
        ref = (await k.get(f"{plural}.{group}", "o"))["spec"]["poolRef"]
        assert ref == {"name": "llm", "group": R.POOL_REF_GROUP_DEFAULT[group], "kind": "InferencePool"}, ref
