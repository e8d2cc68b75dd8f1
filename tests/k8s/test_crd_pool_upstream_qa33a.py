"""qa33a-F4: deploy/crds' v1 InferencePool CRD is upstream's schema (GIE api/v1, v1.6), and the documented
install never changes a CRD the cluster has.

Before, the file had none of upstream's defaults (``endpointPickerRef.failureMode: FailClose``, ``kind:
Service``, ``group: ""``, ``appProtocol: http``), no label-value pattern, ``targetPorts`` a ``map`` list
instead of ``atomic`` with the CEL rule "port number must be unique", no "port is required when kind is
'Service'" rule, and a free-form status; a pool stored through it without ``failureMode`` was stored without
one (a gateway reading it saw no FailClose). And docs/kubernetes.md said ``kubectl apply -f deploy/crds/``,
which replaces the schema of an installed CRD (GIE's, llm-d's) with the file's.
The expected values below are upstream's (api/v1 inferencepool_types.go and shared_types.go markers, as
controller-gen writes them into config/crd/bases/inference.networking.k8s.io_inferencepools.yaml).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from kvgate.k8s.apiserver import ApiServerDouble

from .conftest import Kubectl

ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = ROOT / "deploy" / "crds"
POOL_CRD = CRD_DIR / "inferencepools.inference.networking.k8s.io.yaml"
GROUP_RE = r"^$|^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
KIND_RE = r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$"
LABEL_VALUE_RE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
PORT = {"type": "integer", "format": "int32", "minimum": 1, "maximum": 65535}


def _schema() -> dict[str, Any]:
    crd = yaml.safe_load(POOL_CRD.read_text())
    [version] = crd["spec"]["versions"]
    assert version["name"] == "v1" and version["served"] and version["storage"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def test_spec_is_upstreams() -> None:
    spec = _schema()["properties"]["spec"]
    assert spec["required"] == ["selector", "targetPorts"]  # endpointPickerRef optional since v1.6
    p = spec["properties"]
    assert set(p) == {"selector", "targetPorts", "appProtocol", "endpointPickerRef"}
    labels = p["selector"]["properties"]["matchLabels"]
    assert p["selector"]["required"] == ["matchLabels"]
    assert (labels["minProperties"], labels["maxProperties"]) == (1, 64)
    value = {"type": "string", "minLength": 0, "maxLength": 63, "pattern": LABEL_VALUE_RE}
    assert labels["additionalProperties"] == value
    ports = p["targetPorts"]
    assert (ports["minItems"], ports["maxItems"], ports["x-kubernetes-list-type"]) == (1, 8, "atomic")
    assert "x-kubernetes-list-map-keys" not in ports
    unique = "self.all(p1, self.exists_one(p2, p1.number==p2.number))"
    assert ports["x-kubernetes-validations"] == [{"message": "port number must be unique", "rule": unique}]
    assert ports["items"] == {"type": "object", "required": ["number"], "properties": {"number": PORT}}
    assert p["appProtocol"] == {"type": "string", "default": "http", "enum": ["http", "kubernetes.io/h2c"]}
    ref = p["endpointPickerRef"]
    assert ref["required"] == ["name"]
    assert ref["x-kubernetes-validations"] == [
        {"message": "port is required when kind is 'Service' or unspecified (defaults to 'Service')",
         "rule": "self.kind != 'Service' || has(self.port)"}]  # fmt: skip
    rp = ref["properties"]
    assert rp["failureMode"] == {"type": "string", "default": "FailClose", "enum": ["FailOpen", "FailClose"]}
    assert rp["group"] == {"type": "string", "default": "", "minLength": 0, "maxLength": 253,
                           "pattern": GROUP_RE}  # fmt: skip
    assert rp["kind"] == {"type": "string", "default": "Service", "minLength": 1, "maxLength": 63,
                          "pattern": KIND_RE}  # fmt: skip
    assert rp["name"] == {"type": "string", "minLength": 1, "maxLength": 253}
    assert rp["port"] == {"type": "object", "required": ["number"], "properties": {"number": PORT}}


def test_status_is_upstreams() -> None:
    parents = _schema()["properties"]["status"]["properties"]["parents"]
    assert set(_schema()["properties"]["status"]["properties"]) == {"parents"}
    assert (parents["maxItems"], parents["x-kubernetes-list-type"]) == (32, "atomic")
    item = parents["items"]
    assert item["required"] == ["parentRef"]
    assert set(item["properties"]) == {"conditions", "controllerName", "parentRef"}
    conds = item["properties"]["conditions"]
    assert (conds["maxItems"], conds["x-kubernetes-list-type"], conds["x-kubernetes-list-map-keys"]) == (
        8, "map", ["type"])  # fmt: skip
    assert sorted(conds["items"]["required"]) == ["lastTransitionTime", "message", "reason", "status", "type"]
    ref = item["properties"]["parentRef"]["properties"]
    assert (ref["group"]["default"], ref["kind"]["default"]) == ("gateway.networking.k8s.io", "Gateway")
    assert item["properties"]["parentRef"]["required"] == ["name"]
    # kvgate's own status write (the member pool's Exported entry) fits the controllerName rule
    from kvgate.multicluster.imports import CONTROLLER_NAME

    assert re.match(item["properties"]["controllerName"]["pattern"], CONTROLLER_NAME)


def install_command() -> str:
    """docs/kubernetes.md's command for deploy/crds/ (the Helm section's code block)."""
    text = (ROOT / "docs" / "kubernetes.md").read_text()
    [line] = [ln for ln in text.splitlines() if ln.startswith("kubectl ") and "deploy/crds/" in ln]
    return line.split("#", 1)[0].strip()


async def test_the_documented_install_leaves_an_installed_crd_as_it_is(
    double: ApiServerDouble, kubectl: Kubectl
) -> None:
    """An "upstream" pool CRD installed with ``kubectl apply`` (a field this file lacks stands for a newer
    upstream, and its bundle annotation), then the documented command: the installed CRD is unchanged,
    every CRD the cluster lacked is created."""
    upstream = yaml.safe_load(POOL_CRD.read_text())
    upstream["metadata"]["annotations"]["inference.networking.k8s.io/bundle-version"] = "v1.9.0"
    spec = upstream["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec["properties"]["newerField"] = {"type": "string"}
    await kubectl.run("apply", "-f", "-", stdin=yaml.safe_dump(upstream))
    name = POOL_CRD.name.removesuffix(".yaml")
    before = yaml.safe_load(await kubectl.run("get", "crd", name, "-o", "yaml"))

    words = install_command().split()
    assert words[0] == "kubectl"
    args = [str(ROOT / w) if w.startswith("deploy/") else w for w in words[1:]]
    out = await kubectl.run(*args, check=False)  # (exits 1 for the CRD that is there: AlreadyExists)

    after = yaml.safe_load(await kubectl.run("get", "crd", name, "-o", "yaml"))
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"], out
    assert after["spec"] == before["spec"]
    assert after["metadata"]["annotations"] == before["metadata"]["annotations"]
    got = {n.strip().removeprefix("customresourcedefinition.apiextensions.k8s.io/")
           for n in (await kubectl.run("get", "crd", "-o", "name")).split()}  # fmt: skip
    assert got >= {p.name.removesuffix(".yaml") for p in CRD_DIR.glob("*.yaml")}


@pytest.mark.parametrize("failure_mode", [None, "FailOpen"])
def test_a_pool_the_chart_renders_validates_against_the_schema(failure_mode: str | None) -> None:
    """The upstream schema still takes what kvgate's chart renders (with or without a failureMode)."""
    from k8s.test_chart import BASE, by_kind, render, validate

    values = copy.deepcopy(BASE)
    if failure_mode:
        values["inferencePool"]["failureMode"] = failure_mode
    validate(by_kind(render(values), "InferencePool"))
