"""The double refuses a CRD as a real API server does (422 Invalid) for the two rules deploy/crds once broke:
``properties`` beside ``additionalProperties`` in one schema node, and a protected group (``*.k8s.io``,
``*.kubernetes.io``) without the ``api-approved.kubernetes.io`` annotation. Before, the double took both,
and only a real kube-apiserver (tests/k8s_real) showed every shipped CRD refused."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from kvgate.k8s.apiserver import ApiServerDouble
from kvgate.k8s.client import KubeClient, KubeError

from .conftest import KUBECTL, Kubectl

CRDS = sorted((Path(__file__).resolve().parents[2] / "deploy" / "crds").glob("*.yaml"))
PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


def crd(group: str, schema: dict[str, Any], annotations: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": f"widgets.{group}"}
    if annotations is not None:
        meta["annotations"] = annotations
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": meta,
            "spec": {"group": group, "scope": "Namespaced", "names": {"kind": "Widget", "plural": "widgets"},
                     "versions": [{"name": "v1", "served": True, "storage": True,
                                   "schema": {"openAPIV3Schema": schema}}]}}  # fmt: skip


def obj(**props: Any) -> dict[str, Any]:
    return {"type": "object", "properties": props}


SPEC_CLOSED = obj(spec={**obj(n={"type": "integer"}), "additionalProperties": False})


async def test_properties_beside_additional_properties_false_is_refused(double: ApiServerDouble) -> None:
    async with (
        aiohttp.ClientSession() as s,
        s.post(double.url + PATH, json=crd("example.com", SPEC_CLOSED)) as r,
    ):
        assert r.status == 422
        body = await r.json()
    assert body["kind"] == "Status" and body["reason"] == "Invalid" and body["code"] == 422
    assert body["message"] == (
        'CustomResourceDefinition.apiextensions.k8s.io "widgets.example.com" is invalid: '
        "spec.validation.openAPIV3Schema.properties[spec].additionalProperties: "
        "Forbidden: additionalProperties and properties are mutual exclusive"
    )
    assert [c["reason"] for c in body["details"]["causes"]] == ["FieldValueForbidden"]
    # Refused means not created: the resource is not served either.
    async with (
        aiohttp.ClientSession() as s,
        s.get(double.url + "/apis/example.com/v1/namespaces/default/widgets") as r,
    ):
        assert r.status == 404


@pytest.mark.parametrize("extra", [{"type": "string"}, False], ids=["a-schema", "false"])
async def test_the_rule_holds_in_any_schema_node(
    double: ApiServerDouble, kube: KubeClient, extra: Any
) -> None:
    deep = obj(spec=obj(rules={"type": "array", "items": {**obj(name={"type": "string"}),
                                                          "additionalProperties": extra}}))  # fmt: skip
    with pytest.raises(KubeError) as e:
        await kube.request("POST", PATH, body=crd("example.com", deep))
    assert e.value.status == 422 and e.value.reason == "Invalid"
    assert "properties[spec].properties[rules].items.additionalProperties: Forbidden" in e.value.message


async def test_what_a_real_server_takes_the_double_takes(double: ApiServerDouble, kube: KubeClient) -> None:
    open_obj = obj(spec={**obj(n={"type": "integer"}), "additionalProperties": True})  # true is allowed
    a_map = obj(spec=obj(labels={"type": "object", "additionalProperties": {"type": "string"}}))
    await kube.request("POST", PATH, body=crd("example.com", open_obj))
    await kube.request("POST", PATH, body=crd("example.org", a_map))
    await kube.request("POST", PATH, body=crd("inference.networking.x-k8s.io", obj()))  # not protected


@pytest.mark.parametrize("group", ["inference.networking.k8s.io", "k8s.io", "x.kubernetes.io"])
async def test_a_protected_group_needs_the_approval_annotation(kube: KubeClient, group: str) -> None:
    with pytest.raises(KubeError) as e:
        await kube.request("POST", PATH, body=crd(group, obj()))
    assert e.value.status == 422 and e.value.reason == "Invalid"
    assert e.value.message == (
        f'CustomResourceDefinition.apiextensions.k8s.io "widgets.{group}" is invalid: '
        "metadata.annotations[api-approved.kubernetes.io]: Required value: protected groups must have "
        'approval annotation "api-approved.kubernetes.io", see https://github.com/kubernetes/enhancements/pull/1111'
    )
    with pytest.raises(KubeError) as e:
        await kube.request("POST", PATH, body=crd(group, obj(), {"api-approved.kubernetes.io": "yes"}))
    assert e.value.status == 422 and 'Invalid value: "yes"' in e.value.message
    await kube.request(
        "POST", PATH, body=crd(group, obj(), {"api-approved.kubernetes.io": "unapproved, a test"})
    )
    await kube.request("DELETE", f"{PATH}/widgets.{group}")
    url = "https://github.com/kubernetes-sigs/gateway-api-inference-extension/pull/1173"
    await kube.request("POST", PATH, body=crd(group, obj(), {"api-approved.kubernetes.io": url}))


async def test_both_refusals_are_listed_together(kube: KubeClient) -> None:
    with pytest.raises(KubeError) as e:
        await kube.request("POST", PATH, body=crd("a.k8s.io", copy.deepcopy(SPEC_CLOSED)))
    assert e.value.message.startswith(
        'CustomResourceDefinition.apiextensions.k8s.io "widgets.a.k8s.io" is invalid: '
        "[spec.validation.openAPIV3Schema.properties[spec].additionalProperties: Forbidden: "
    )  # the schema's cause first, as a real 1.20.2 lists them
    assert ", metadata.annotations[api-approved.kubernetes.io]: Required value: " in e.value.message


async def test_versions_with_different_schemas_are_named_by_version(kube: KubeClient) -> None:
    two = crd("example.com", obj())
    two["spec"]["versions"].append({"name": "v2", "served": True, "storage": False,
                                    "schema": {"openAPIV3Schema": copy.deepcopy(SPEC_CLOSED)}})  # fmt: skip
    two["spec"]["versions"][0]["storage"] = True
    with pytest.raises(KubeError) as e:
        await kube.request("POST", PATH, body=two)
    assert "is invalid: spec.versions[1].schema.openAPIV3Schema.properties[spec].additionalProperties" in (
        e.value.message
    )


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")
@pytest.mark.parametrize("path", CRDS, ids=lambda p: p.name)
async def test_the_shipped_crds_apply_with_the_real_kubectl(kubectl: Kubectl, path: Path) -> None:
    await kubectl.run("apply", "-f", str(path))
    name = path.name.removesuffix(".yaml")  # each file is named after its CRD
    got = await kubectl.run("get", "crd", name, "-o", "name")
    assert got.strip() == f"customresourcedefinition.apiextensions.k8s.io/{name}"
