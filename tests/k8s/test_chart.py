"""The Helm chart, rendered by Helm's own Go engine (helm-python-sdk) and schema-checked: built-in kinds
with kubernetes-validate (Kubernetes 1.37 schemas, strict), the pool with the CRD schemas in deploy/crds
(themselves checked as CustomResourceDefinitions). The EPP's rendered args must parse as kvgate epp flags."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

from kvgate.extproc.cli import parser as epp_parser

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "charts" / "kvgate-epp"
CRDS = sorted((ROOT / "deploy" / "crds").glob("*.yaml"))
K8S_VERSION = "1.37.0"
BASE = {"inferencePool": {"modelServers": {"matchLabels": {"app": "vllm-llama3-8b"}}}}


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    with helm.Chart.load(str(CHART)) as chart:
        out = chart.render(values, name="llama", namespace="serving")
    docs = [d for text in out.values() for d in yaml.safe_load_all(text) if d]
    assert docs
    return docs


def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    schemas = {}
    for path in CRDS:
        crd = yaml.safe_load(path.read_text())
        for v in crd["spec"]["versions"]:
            schemas[(f"{crd['spec']['group']}/{v['name']}", crd["spec"]["names"]["kind"])] = v["schema"][
                "openAPIV3Schema"
            ]
    return schemas


def validate(doc: dict[str, Any]) -> None:
    schema = crd_schemas().get((doc["apiVersion"], doc["kind"]))
    if schema is not None:
        jsonschema.Draft7Validator(schema).validate(doc)
    else:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    [doc] = [d for d in docs if d["kind"] == kind]
    return doc


def epp_args(docs: list[dict[str, Any]]) -> list[str]:
    args: list[str] = by_kind(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    return args


@pytest.mark.parametrize("path", CRDS, ids=lambda p: p.name)
def test_crds_are_valid_custom_resource_definitions(path: Path) -> None:
    kubernetes_validate.validate(yaml.safe_load(path.read_text()), K8S_VERSION, strict=True)


VALUES = {
    "default": {},
    "ha": {"inferenceExtension": {"replicas": 2}},
    "custom-config": {
        "inferenceExtension": {
            "pluginsCustomConfig": {"epp.yaml": "kind: EndpointPickerConfig\nplugins: []\n"},
            "certSecretName": "epp-tls",
            "flags": {"scrape-interval": "0.1"},
            "env": [{"name": "EXTRA", "value": "1"}],
        },
        "inferencePool": {"targetPorts": [{"number": 8000}, {"number": 8001}],
                          "appProtocol": "kubernetes.io/h2c", "failureMode": "FailOpen",
                          "modelServerType": "sglang"},
    },
}  # fmt: skip


@pytest.mark.parametrize("name", list(VALUES))
def test_rendered_manifests_validate(name: str) -> None:
    values = {
        **VALUES[name],
        "inferencePool": {**BASE["inferencePool"], **VALUES[name].get("inferencePool", {})},
    }
    docs = render(values)
    kinds = sorted(d["kind"] for d in docs)
    assert {"InferencePool", "Deployment", "Service", "ServiceAccount", "Role", "RoleBinding"} <= set(kinds)
    for doc in docs:
        validate(doc)
    # Every rendered flag is one kvgate epp knows (parse_known_args would only warn on unknown ones).
    args = epp_args(docs)
    assert args[0] == "epp"
    ns, unknown = epp_parser().parse_known_args(args[1:])
    assert unknown == [] and ns.pool_name == "llama" and ns.pool_namespace == "serving"
    pool = by_kind(docs, "InferencePool")
    assert pool["spec"]["endpointPickerRef"]["name"] == by_kind(docs, "Service")["metadata"]["name"]


def test_ha_values_turn_on_leader_election() -> None:
    assert "--ha-enable-leader-election=true" not in epp_args(render(BASE))
    assert "--ha-enable-leader-election=true" in epp_args(render({**BASE, **VALUES["ha"]}))
    active_active = {**BASE, "inferenceExtension": {"replicas": 2, "leaderElection": False}}
    assert "--ha-enable-leader-election=true" not in epp_args(render(active_active))


def test_custom_config_is_mounted() -> None:
    docs = render({**VALUES["custom-config"], "inferencePool": {**BASE["inferencePool"]}})
    assert "--config-file=/etc/kvgate/config/epp.yaml" in epp_args(docs)
    assert by_kind(docs, "ConfigMap")["data"]["epp.yaml"].startswith("kind: EndpointPickerConfig")


def test_a_pool_without_a_selector_is_refused() -> None:
    with pytest.raises(helm.HelmError, match="matchLabels is required"):
        render({})


def test_the_validator_catches_a_bad_pool() -> None:
    pool = by_kind(render(BASE), "InferencePool")
    pool["spec"]["targetPorts"] = [{"number": p} for p in range(8000, 8009)]  # 9 > 8
    with pytest.raises(jsonschema.ValidationError):
        validate(pool)


def test_dockerfile_is_slim_non_root_and_product_only() -> None:
    text = (ROOT / "Dockerfile").read_text()
    froms = [line.split()[1] for line in text.splitlines() if line.startswith("FROM ")]
    assert froms and all(f.endswith("-slim") or f.startswith("python:3.11-slim") for f in froms)
    installs = [line for line in text.splitlines() if "pip install" in line and not line.startswith("#")]
    assert installs and not any("[" in line for line in installs)  # no extras
    user = [line.split()[1] for line in text.splitlines() if line.startswith("USER ")]
    assert user and user[-1].split(":")[0] not in ("0", "root")
    # The chart runs the image as the same non-root user.
    pod = by_kind(render(BASE), "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == int(user[-1].split(":")[0])


async def test_the_charts_pool_is_what_discovery_reads(double, kubectl, kube) -> None:  # type: ignore[no-untyped-def]
    """kubectl applies the CRDs and the chart's InferencePool to the double; discovery serves its pods."""
    import asyncio

    from kvgate.datalayer.store import EndpointStore
    from kvgate.k8s.discovery import PoolDiscovery

    for path in CRDS:
        await kubectl.run("apply", "-f", str(path))
    pool = by_kind(render(BASE), "InferencePool")
    pool["metadata"]["namespace"] = "default"
    await kubectl.run("apply", "-f", "-", stdin=yaml.safe_dump(pool))
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "m0", "labels": {"app": "vllm-llama3-8b"}}}
    await kubectl.run("create", "-f", "-", stdin=yaml.safe_dump(pod))
    double.set_pod_status("m0", ip="10.0.0.7", ready=True)
    store = EndpointStore()
    disc = PoolDiscovery(kube, store, pool_name="llama", namespace="default")
    disc.start()
    try:
        await disc.wait_synced()
        for _ in range(200):
            if {e.address for e in store.all()} == {"10.0.0.7:8000"}:
                break
            await asyncio.sleep(0.02)
        assert {e.address for e in store.all()} == {"10.0.0.7:8000"}
        assert disc.pool is not None and disc.pool.endpoint_picker is not None
        assert disc.pool.endpoint_picker["name"] == "llama-epp" and disc.pool.failure_mode == "FailClose"
    finally:
        await disc.stop()
