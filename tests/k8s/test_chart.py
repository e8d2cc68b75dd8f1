"""The Helm chart, rendered by Helm's own Go engine (helm-python-sdk) and schema-checked: built-in kinds
with kubernetes-validate (Kubernetes 1.37 schemas, strict), the pool with the CRD schemas in deploy/crds,
closed as pruning sees them (a field the schema does not list fails; a real API server would drop it). The
CRDs themselves are checked as CustomResourceDefinitions and under the API server's own CRD rules
(kvgate.k8s.crdrules: a real one refused them all once while kubernetes-validate took them). The EPP's
rendered args must parse as kvgate epp flags."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml
from aiohttp import web

from kvgate.extproc.cli import parser as epp_parser
from kvgate.k8s import crdrules
from kvgate.k8s import resources as R
from kvgate.k8s.apiserver import ApiServerDouble
from kvgate.k8s.client import KubeClient
from kvgate.multicluster.clusters import ParentRef
from kvgate.multicluster.imports import EXPORT_ANNOTATION, ImportController, Member

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
        jsonschema.Draft7Validator(crdrules.closed(schema)).validate(doc)
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
    crd = yaml.safe_load(path.read_text())
    kubernetes_validate.validate(crd, K8S_VERSION, strict=True)
    # What the API server itself refuses in a CRD (properties beside additionalProperties; a *.k8s.io
    # group without api-approved.kubernetes.io): kubernetes-validate checks only the CRD's shape.
    assert crdrules.causes(crd) == []


def test_the_pool_schema_as_checked_refuses_a_field_it_does_not_list() -> None:
    pool = by_kind(render(BASE), "InferencePool")
    pool["spec"]["endpointPickerRef"]["prot"] = {"number": 9002}  # misspelt: pruned by a real server
    with pytest.raises(jsonschema.ValidationError, match="prot"):
        validate(pool)
    pool["spec"]["endpointPickerRef"].pop("prot")
    pool["spec"]["selector"]["matchLabels"]["any-label"] = "ok"  # a map takes any key
    validate(pool)


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


def test_the_default_profile_is_the_named_kvgate_policy() -> None:
    # No profile copied into the chart (a copy drifted once in deploy/kvgate-epp.yaml): the picker builds
    # the code's own ``kvgate`` policy.
    docs = render(BASE)
    args = epp_args(docs)
    assert "--policy=kvgate" in args and not any(a.startswith("--config-file") for a in args)
    assert not [d for d in docs if d["kind"] == "ConfigMap" and "epp" in str(d.get("data", {}))]


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
        for _ in range(1500):  # (30 s: 4 s before)
            if {e.address for e in store.all()} == {"10.0.0.7:8000"}:
                break
            await asyncio.sleep(0.02)
        assert {e.address for e in store.all()} == {"10.0.0.7:8000"}
        assert disc.pool is not None and disc.pool.endpoint_picker is not None
        assert disc.pool.endpoint_picker["name"] == "llama-epp" and disc.pool.failure_mode == "FailClose"
    finally:
        await disc.stop()


# -- multi-cluster: the hub (global gateway + InferencePoolImport controller) and member access -------------

HUB = {
    "enabled": True, "import": "default/llama", "membersSecretName": "hub-members",
    "members": [{"name": "east", "rtt_ms": 5}, {"name": "west", "rtt_ms": 40, "priority": 1}],
    "settings": {"ttl_s": 3.0, "local": "east", "limits": {"maxBodyBytes": 1048576}},
}  # fmt: skip


def _named(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    [doc] = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


@pytest.mark.parametrize("with_epp", [True, False], ids=["with-epp", "hub-only"])
def test_hub_values_render_a_valid_global_gateway(with_epp: bool) -> None:
    from kvgate.gateway.cli import _parser as serve_parser
    from kvgate.multicluster.clusters import parse

    values: dict[str, Any] = {**BASE, "hub": HUB, "hubMember": {"enabled": True}}
    if not with_epp:
        values = {"inferenceExtension": {"enabled": False}, "hub": HUB}
    docs = render(values)
    for doc in docs:
        validate(doc)
    kinds = {d["kind"] for d in docs}
    roles = {d["metadata"]["name"] for d in docs if d["kind"] == "Role"}
    # (the EPP's Role with the EPP; the hub gateway's on the writers' Lease either way)
    assert ("InferencePool" in kinds) == with_epp and roles == ({"llama-epp"} if with_epp else set()) | {
        "llama-hub"
    }
    deploy = _named(docs, "Deployment", "llama-hub")
    pod = deploy["spec"]["template"]["spec"]
    [container] = pod["containers"]
    args = serve_parser().parse_args(container["args"][1:])  # kvgate serve's own flags
    assert container["args"][0] == "serve" and args.cluster_policy == "kvgate" and args.port == 8080
    _writable_tmp(pod, container)
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert args.clusters == mounts["clusters"] + "/clusters.yaml"
    assert volumes["members"]["secret"]["secretName"] == "hub-members"
    # The rendered clusters file is one kvgate reads: the import, the parent, a kubeconfig per member.
    cfg = parse(yaml.safe_load(_named(docs, "ConfigMap", "llama-hub")["data"]["clusters.yaml"]))
    assert cfg.kubernetes is not None and (cfg.kubernetes.namespace, cfg.kubernetes.name) == (
        "default",
        "llama",
    )
    assert cfg.kubernetes.parent is not None
    # The default parent is the hub's own Service (an object that exists), not a Gateway name.
    p = cfg.kubernetes.parent
    assert (p.group, p.kind, p.namespace, p.name) == ("", "Service", "serving", "llama-hub")
    assert _named(docs, "Service", "llama-hub")
    named = render({**BASE, "hub": {**HUB, "parent": "gateways/global"}})
    given = parse(yaml.safe_load(_named(named, "ConfigMap", "llama-hub")["data"]["clusters.yaml"]))
    assert given.kubernetes is not None and given.kubernetes.parent is not None
    assert given.kubernetes.parent.as_status() == {"group": "gateway.networking.k8s.io", "kind": "Gateway",
                                                   "namespace": "gateways", "name": "global"}  # fmt: skip
    members = mounts["members"]
    assert [(m.name, m.kubeconfig, m.rtt_ms, m.priority) for m in cfg.kubernetes.members] == [
        ("east", f"{members}/east", 5.0, 0), ("west", f"{members}/west", 40.0, 1)]  # fmt: skip
    assert cfg.local == "east" and cfg.limits.max_body_bytes == 1048576
    assert pod["serviceAccountName"] == "llama-hub"
    binding = _named(docs, "ClusterRoleBinding", "llama-hub")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "llama-hub", "namespace": "serving"}]


def test_hub_values_refuse_a_missing_import() -> None:
    with pytest.raises(helm.HelmError, match=r"hub\.import"):
        render({**BASE, "hub": {**HUB, "import": ""}})


def test_an_exported_pool_carries_the_export_annotation_and_addresses() -> None:
    export = {
        "enabled": True,
        "gateway": "10.1.0.2:8080",
        "aggregate": "http://10.1.0.2:9090/v1/pool/aggregate",
    }
    pool = by_kind(render({"inferencePool": {**BASE["inferencePool"], "export": export}}), "InferencePool")
    validate(pool)
    assert pool["metadata"]["annotations"] == {
        "inference.networking.x-k8s.io/export": "ClusterSet", "kvgate.io/gateway": "10.1.0.2:8080",
        "kvgate.io/aggregate": "http://10.1.0.2:9090/v1/pool/aggregate"}  # fmt: skip
    assert "annotations" not in by_kind(render(BASE), "InferencePool")["metadata"]


def _rules(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
            for v in rule["verbs"]}  # fmt: skip


def _rbac_verb(method: str, path: str, query: Any) -> tuple[str, str, str] | None:
    """(apiGroup, resource[/subresource], verb) of one request, as the API server's RBAC sees it."""
    parts = path.strip("/").split("/")
    if parts[0] != "apis" or len(parts) < 4:
        return None  # discovery (/apis, /apis/group/version): allowed to every authenticated user
    group, rest = parts[1], parts[3:]
    if rest[0] == "namespaces" and len(rest) > 2:
        rest = rest[2:]
    resource = rest[0] + (f"/{rest[2]}" if len(rest) > 2 else "")
    if method == "GET":
        verb = "get" if len(rest) > 1 else ("watch" if query.get("watch") in ("true", "1") else "list")
    else:
        verb = {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}[method]
    return group, resource, verb


class _Recording(ApiServerDouble):
    """An API-server double that records the RBAC verb of every request it serves."""

    def __init__(self) -> None:
        super().__init__(bookmark_interval=0.2)
        self.used: set[tuple[str, str, str]] = set()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        verb = _rbac_verb(request.method, request.path, request.query)
        if verb is not None:
            self.used.add(verb)
        return await super()._handle(request)


def _export_pool(name: str, exported: bool, **ann: str) -> dict[str, Any]:
    annotations = {EXPORT_ANNOTATION: "ClusterSet", **ann} if exported else ann
    spec = {"selector": {"matchLabels": {"app": name}}, "targetPorts": [{"number": 8000}]}
    return {"apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool",
            "metadata": {"name": name, "namespace": "default", "annotations": annotations},
            "spec": spec}  # fmt: skip


async def _until(cond: Any) -> None:
    for _ in range(600):  # (30 s: 20 s before)
        if cond():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached")


async def _every_controller_path(hub_d: ApiServerDouble, member_d: ApiServerDouble,
                                 written: Any) -> None:  # fmt: skip
    """Drive a running controller through every path: an import that exists already (read back), one
    created and later deleted, the followed import's parent entry, the Exported condition on the member's
    pool. ``written()``: the controller's ``written`` map."""
    await _until(lambda: written().get(("default", "gone")) == ("east",))
    member_d.patch(R.INFERENCE_POOL, "gone", "default",
                   {"metadata": {"annotations": {EXPORT_ANNOTATION: None}}})  # fmt: skip

    def exported() -> bool:
        parents = member_d.get(R.INFERENCE_POOL, "llama", "default").get("status", {}).get("parents")
        return bool(parents) and parents[0]["conditions"][0]["reason"] == "Exported"

    await _until(lambda: ("default", "gone") not in written() and exported())


def _seed(hub_d: ApiServerDouble, member_d: ApiServerDouble) -> None:
    hub_d.create({"apiVersion": "inference.networking.x-k8s.io/v1alpha1", "kind": "InferencePoolImport",
                  "metadata": {"name": "llama", "namespace": "default"}})  # fmt: skip
    member_d.create(_export_pool("llama", True, **{"kvgate.io/gateway": "10.1.0.2:8080"}))
    member_d.create(_export_pool("gone", True))


async def test_the_hub_rbac_is_exactly_what_the_controller_does() -> None:
    """The gateway's hub controller (``ClusterSource``, as ``kvgate serve --clusters`` runs it, from the
    chart's own clusters file) against API-server doubles that record every request: the verbs it used in
    the hub (the writers' Lease included) and in a member are exactly the chart's roles (no more, no
    less)."""
    from kvgate.multicluster.clusters import ClustersConfig, KubeMember, parse
    from kvgate.multicluster.source import ClusterSource

    docs = render({**BASE, "hub": HUB, "hubMember": {"enabled": True}})
    chart = parse(yaml.safe_load(_named(docs, "ConfigMap", "llama-hub")["data"]["clusters.yaml"])).kubernetes
    assert chart is not None and chart.lease_ref == ("serving", "llama-hub-controller")
    async with _Recording() as hub_d, _Recording() as member_d:
        _seed(hub_d, member_d)
        kube = dataclasses.replace(chart, server=hub_d.url, members=(KubeMember("east", member_d.url),))
        source = ClusterSource(ClustersConfig(clusters=(), kubernetes=kube), lambda _cfg: None)
        await source.start()
        try:
            await _every_controller_path(hub_d, member_d, lambda: source.imports.written)  # type: ignore[union-attr]
        finally:
            await source.stop()  # (the Lease released: read and updated)
    roles = _rules(_named(docs, "ClusterRole", "llama-hub")) | _rules(_named(docs, "Role", "llama-hub"))
    assert hub_d.used == roles
    assert member_d.used == _rules(_named(docs, "ClusterRole", "llama-hub-member"))


STANDALONE = {**HUB, "controller": {"standalone": True}}


def _writable_tmp(pod: dict[str, Any], container: dict[str, Any]) -> None:
    """A read-only root filesystem with a writable /tmp (an emptyDir): kubernetes_asyncio writes a
    kubeconfig's inline ``*-data`` (the members' kubeconfigs) to ``tempfile.mkstemp()`` files."""
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    [tmp] = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert not tmp.get("readOnly")
    assert {v["name"]: v for v in pod["volumes"]}[tmp["name"]] == {"name": tmp["name"], "emptyDir": {}}


def test_a_standalone_hub_controller_renders_valid() -> None:
    from kvgate.multicluster.clusters import parse
    from kvgate.multicluster.hub_controller import build_parser

    docs = render({"inferenceExtension": {"enabled": False}, "hub": STANDALONE})
    for doc in docs:
        validate(doc)
    ctl = _named(docs, "Deployment", "llama-hub-controller")
    pod = ctl["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["args"][0] == "hub-controller"
    args = build_parser().parse_args(container["args"][1:])  # kvgate hub-controller's own flags
    assert args.ha_enable_leader_election and args.ha_lease_namespace == "serving"
    assert args.ha_lease_name == "llama-hub-controller" and args.port == 8081
    assert ctl["spec"]["replicas"] == 2 and pod["serviceAccountName"] == "llama-hub-controller"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert args.clusters == mounts["clusters"] + "/clusters.yaml"
    assert {v["name"]: v for v in pod["volumes"]}["clusters"]["configMap"]["name"] == "llama-hub"
    _writable_tmp(pod, container)
    # The gateway reads the same file, told not to write; it has no role in the hub.
    cfg = parse(yaml.safe_load(_named(docs, "ConfigMap", "llama-hub")["data"]["clusters.yaml"]))
    assert cfg.kubernetes is not None and cfg.kubernetes.controller is False
    # (one Lease for every writer: a gateway switched to controller: true competes for the controller's)
    assert cfg.kubernetes.lease_ref == (args.ha_lease_namespace, args.ha_lease_name)
    roles = {(d["kind"], d["metadata"]["name"]) for d in docs if d["kind"].endswith("Role")}
    assert roles == {("ClusterRole", "llama-hub-controller"), ("Role", "llama-hub-controller")}
    # Inside the gateway (the default), the file says so.
    inside = parse(yaml.safe_load(_named(render({**BASE, "hub": HUB}), "ConfigMap", "llama-hub")["data"]
                                  ["clusters.yaml"]))  # fmt: skip
    assert inside.kubernetes is not None and inside.kubernetes.controller is True


def test_the_hub_controllers_grace_covers_its_stop() -> None:
    """The pod's grace outlasts what the controller's stop may wait on stuck tasks before it releases the
    Lease (review s11-hard L1: 30 s against 35 s on a stuck follower alone)."""
    from kvgate.multicluster.hub_controller import STOP_BOUND_S

    pod = _named(render({"inferenceExtension": {"enabled": False}, "hub": STANDALONE}), "Deployment",
                 "llama-hub-controller")["spec"]["template"]["spec"]  # fmt: skip
    assert pod["terminationGracePeriodSeconds"] >= STOP_BOUND_S + 5


async def test_the_standalone_rbac_is_exactly_what_the_controller_and_gateway_do() -> None:
    """``kvgate hub-controller`` with leader election against recording doubles: its verbs in the hub are
    exactly its ClusterRole and Lease Role; the read-only gateway's, in a member, only list and watch."""
    from kvgate.multicluster.clusters import KubeImports, KubeMember
    from kvgate.multicluster.hub_controller import Election, HubController

    docs = render(
        {"inferenceExtension": {"enabled": False}, "hub": STANDALONE, "hubMember": {"enabled": True}}
    )
    async with _Recording() as hub_d, _Recording() as member_d, _Recording() as gw_member_d:
        _seed(hub_d, member_d)
        kube = KubeImports("default", "llama", (KubeMember("east", member_d.url),), server=hub_d.url,
                           parent=ParentRef("serving", "llama-hub"))  # fmt: skip
        hc = HubController(kube, Election(namespace="serving", retry_period_s=0.1))
        await hc.start()
        try:
            await _until(lambda: hc.controller is not None)
            await _every_controller_path(hub_d, member_d, lambda: hc.controller.written)  # type: ignore[union-attr]
            await asyncio.sleep(0.3)  # a renewal or two
        finally:
            await hc.stop()
        gw_member_d.create(_export_pool("llama", True, **{"kvgate.io/gateway": "10.1.0.2:8080"}))
        client = await KubeClient.connect(server=gw_member_d.url)
        fed: list[Any] = []
        reader = ImportController(None, [Member("east", client)], follow=("default", "llama"),
                                  on_clusters=fed.append, writes=False)  # fmt: skip
        await reader.start()
        try:
            await _until(lambda: bool(fed))
        finally:
            await reader.stop()
            await client.close()
    ctl_rules = _rules(_named(docs, "ClusterRole", "llama-hub-controller"))
    assert hub_d.used == ctl_rules | _rules(_named(docs, "Role", "llama-hub-controller"))
    assert member_d.used == _rules(_named(docs, "ClusterRole", "llama-hub-member"))
    assert gw_member_d.used == {
        ("inference.networking.k8s.io", "inferencepools", v) for v in ("list", "watch")
    }
