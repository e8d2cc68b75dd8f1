"""qa33a-F4 on a real kube-apiserver (1.20.2, marker ``k8sreal``): the shipped v1 InferencePool CRD defaults
a pool as upstream's does, refuses what upstream's schema refuses (that 1.20 can check: no CEL there), and
the documented install (docs/kubernetes.md) over an installed CRD leaves it unchanged.

Before: a pool applied without ``failureMode`` / ``kind`` / ``appProtocol`` was stored without them (no
defaults), a label value ``-x-`` was taken, and ``kubectl apply -f deploy/crds/`` replaced an installed
(upstream) CRD's schema with the file's."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import yaml

from k8s.test_crd_pool_upstream_qa33a import install_command
from k8s_real.test_real_apiserver import CRDS, Kubectl, apply_crd, installable

ROOT = Path(__file__).resolve().parents[2]
[POOL_CRD] = [p for p in CRDS if p.name == "inferencepools.inference.networking.k8s.io.yaml"]
NAME = POOL_CRD.name.removesuffix(".yaml")

pytestmark = pytest.mark.k8sreal


def _pool(name: str, labels: dict[str, str]) -> str:
    spec = {"selector": {"matchLabels": labels}, "targetPorts": [{"number": 8000}],
            "endpointPickerRef": {"name": "epp", "port": {"number": 9002}}}  # fmt: skip
    return yaml.safe_dump({"apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool",
                           "metadata": {"name": name}, "spec": spec})  # fmt: skip


async def test_a_pool_gets_upstreams_defaults_and_label_rules(server: tuple[str, str]) -> None:
    ns = f"kvg-{uuid.uuid4().hex[:8]}"
    k = Kubectl(server[1], ns)
    await k.run("create", "namespace", ns)
    await apply_crd(k, POOL_CRD)
    await k.run("apply", "-f", "-", stdin=_pool("plain", {"app": "vllm"}))
    spec = (await k.get("inferencepool", "plain"))["spec"]
    assert spec["appProtocol"] == "http"
    assert (spec["endpointPickerRef"]["failureMode"], spec["endpointPickerRef"]["kind"]) == (
        "FailClose", "Service")  # fmt: skip
    with pytest.raises(AssertionError, match="should match"):
        await k.run("apply", "--validate=false", "-f", "-", stdin=_pool("badlabel", {"app": "-x-"}))


async def test_the_documented_install_over_an_installed_crd_leaves_it_as_it_is(
    server: tuple[str, str], tmp_path: Path
) -> None:
    """The CRD as this server takes it, plus a field this file lacks (a newer upstream) and upstream's
    bundle annotation, applied first; then docs/kubernetes.md's command on deploy/crds (as this server
    takes them)."""
    k = Kubectl(server[1], "default")
    upstream = yaml.safe_load(installable(POOL_CRD))
    upstream["metadata"]["annotations"]["inference.networking.k8s.io/bundle-version"] = "v1.9.0"
    spec = upstream["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec["properties"]["newerField"] = {"type": "string"}
    await k.run("apply", "-f", "-", stdin=yaml.safe_dump(upstream))
    await k.run("wait", "--for=condition=established", "--timeout=60s", f"crd/{NAME}")
    before = await k.get("crd", NAME)

    crds = tmp_path / "crds"
    crds.mkdir()
    for p in CRDS:
        (crds / p.name).write_text(installable(p))
    words = install_command().split()
    args = [str(crds) if w.startswith("deploy/crds") else w for w in words[1:]]
    try:
        out = await k.run(*args)
    except AssertionError as e:  # (kubectl create exits 1 where one is there: AlreadyExists)
        out = str(e)
        assert "AlreadyExists" in out and "error validating" not in out, out
    after = await k.get("crd", NAME)
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"], out
    assert after["spec"] == before["spec"]
    assert after["metadata"]["annotations"] == before["metadata"]["annotations"]
