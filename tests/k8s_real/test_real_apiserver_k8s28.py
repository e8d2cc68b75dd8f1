"""k8s28 against a REAL kube-apiserver (1.20.2, the RBAC authorizer on: conftest.py):

- ``kvgate serve --pool-group inference.networking.x-k8s.io`` (its config built by ``kvgate serve``'s own
  parser and ``build_config``, its ``GatewayServer`` started) as the ServiceAccount of
  ``deploy/kvgate-epp-v1alpha2.yaml``, with that manifest's Role and pool: ready, the pod's endpoint, a live
  port change followed. Main (2a9ab840): ``kvgate serve`` had no ``--pool-group`` (and no such manifest).
- ``kubectl apply --dry-run=server`` of both plain manifests (every object but the Deployment: its gRPC
  probes are Kubernetes 1.24's, which this 1.20 server predates; tests/k8s/test_deploy_v1alpha2_k8s28.py
  checks it offline with 1.37's schemas), and a pool this server refuses as the control.
  This 1.20.2 build refuses an empty string in any string field of a custom resource (``Invalid value:
  "null"``, a bare ``{type: string}`` field alike), so the manifests leave ``endpointPickerRef.group`` /
  ``extensionRef.group`` out rather than ``""`` (the core group either way, as the chart renders it), and
  the hub below is given a Gateway as its parent (``hub.parent``): the default, the hub's Service, is
  ``group: ""`` in the import's status (tests/k8s/test_chart.py covers it against the doubles).
- The hub's RBAC as the chart renders it (``hub.enabled``, ``hubMember.enabled``), enforced: the gateway's
  hub controller (``ClusterSource``, as ``kvgate serve --clusters`` runs it) on kubeconfigs holding only the
  ``<release>-hub`` ServiceAccount's token (the hub) and ``<release>-hub-member``'s (the member) goes through
  every path (an import read back, one created then deleted, the followed import's parent entry, the
  member pool's ``Exported`` condition, the writers' Lease); and the server's own SubjectAccessReview over a
  grid of resources, verbs and two namespaces allows each ServiceAccount exactly what the controller uses
  (tests/k8s/test_chart.py proves the use against recording doubles) and nothing else. Before, the hub's
  Roles were checked only against the doubles, which record and do not authorize.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import uuid
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from k8s_real.test_real_apiserver import Kubectl, until
from k8s_real.test_real_apiserver_rbac import crds, token_kubeconfig  # noqa: F401 (crds: a fixture, used)
from kvgate.gateway.cli import _parser as serve_parser
from kvgate.gateway.cli import build_config, build_pools
from kvgate.gateway.server import GatewayServer
from kvgate.k8s import resources as R
from kvgate.k8s.client import KubeClient

pytestmark = [pytest.mark.k8sreal, pytest.mark.usefixtures("crds")]

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "charts" / "kvgate-epp"
DEPLOY = ROOT / "deploy"
MANIFESTS = {"v1": DEPLOY / "kvgate-epp.yaml", "v1alpha2": DEPLOY / "kvgate-epp-v1alpha2.yaml"}


def moved(docs: list[dict[str, Any]], namespace: str) -> list[dict[str, Any]]:
    """The objects in ``namespace`` (their own, and a binding's subjects')."""
    for d in docs:
        d["metadata"]["namespace"] = namespace
        for s in d.get("subjects") or []:
            s["namespace"] = namespace
    return docs


def manifest(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(MANIFESTS[name].read_text()) if d]


async def fresh_namespace(kubeconfig: str) -> tuple[str, Kubectl]:
    ns = f"kvg-{uuid.uuid4().hex[:8]}"
    k = Kubectl(kubeconfig, ns)
    await k.run("create", "namespace", ns)
    return ns, k


def pod(name: str, labels: dict[str, str]) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
                       "spec": {"containers": [{"name": "vllm", "image": "vllm/vllm-openai"}]}})  # fmt: skip


def ready(ip: str) -> str:
    return json.dumps({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                                  "conditions": [{"type": "Ready", "status": "True"}]}})  # fmt: skip


@pytest.mark.timeout(180)
async def test_serve_watches_a_v1alpha2_pool_with_the_v1alpha2_manifests_role(
    server: tuple[str, str], tmp_path: Path
) -> None:
    ns, k = await fresh_namespace(server[1])
    docs = moved(manifest("v1alpha2"), ns)
    objects = [d for d in docs if d["kind"] in ("ServiceAccount", "Role", "RoleBinding", "InferencePool")]
    await k.run("apply", "-f", "-", stdin=yaml.safe_dump_all(objects))
    [pool] = [d for d in docs if d["kind"] == "InferencePool"]
    [sa] = [d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount"]
    await k.run("create", "-f", "-", stdin=pod("m0", pool["spec"]["selector"]))
    await k.run("patch", "pod", "m0", "--subresource=status", "--type=merge", "-p", ready("127.0.0.3"))
    mine = await token_kubeconfig(server[1], ns, sa, tmp_path / "sa.kubeconfig")
    name = pool["metadata"]["name"]
    args = serve_parser().parse_args([
        "--pool-name", name, "--pool-namespace", ns, "--pool-group", R.LEGACY_GROUP, "--model", "m",
        "--kubeconfig", str(mine), "--host", "127.0.0.1", "--port", "0"])  # fmt: skip
    cfg = build_config(args)
    gw = GatewayServer(cfg, build_pools(cfg))
    await gw.start()

    def addrs() -> set[str]:
        return {e.address for e in gw.pools[0].store.all()}

    try:
        [kp] = gw.kube_pools
        await until(lambda: kp.problem() is None and addrs() == {"127.0.0.3:8000"},
                    f"ready with the pod's endpoint (last: {kp.problem()}; {addrs()})", 60.0)  # fmt: skip
        assert kp.discovery is not None
        refused = [(r.rt.group, r.rt.plural, r.error) for r in kp.discovery.reflectors
                   if r.error and r.error.startswith("403")]  # fmt: skip
        assert refused == []
        await k.run("patch", "inferencepool." + R.LEGACY_GROUP, name, "--type=merge", "-p",
                    json.dumps({"spec": {"targetPortNumber": 8001}}))  # fmt: skip
        await until(lambda: addrs() == {"127.0.0.3:8001"}, f"the new port (last: {addrs()})", 60.0)
    finally:
        await gw.stop(drain_timeout=1.0)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("name", sorted(MANIFESTS))
async def test_the_plain_manifests_pass_a_server_dry_run(server: tuple[str, str], name: str) -> None:
    ns, k = await fresh_namespace(server[1])
    docs = moved([d for d in manifest(name) if d["kind"] != "Deployment"], ns)
    out = await k.run("apply", "--dry-run=server", "-f", "-", stdin=yaml.safe_dump_all(docs))
    for d in docs:
        assert f"/{d['metadata']['name']} created (server dry run)" in out, (d["kind"], out)
    # The control: the server judges the pool in this dry run (its schema's minimum port).
    [pool] = [d for d in docs if d["kind"] == "InferencePool"]
    if name == "v1":
        pool["spec"]["targetPorts"] = [{"number": 0}]
    else:
        pool["spec"]["targetPortNumber"] = 0
    with pytest.raises(AssertionError, match="should be greater than or equal to 1"):
        await k.run("apply", "--dry-run=server", "-f", "-", stdin=json.dumps(pool))


# --- the hub's RBAC -------------------------------------------------------------------------------------

IMPORTS = (R.LEGACY_GROUP, "inferencepoolimports")
POOLS = (R.INFERENCE_POOL.group, "inferencepools")
LEASES = ("coordination.k8s.io", "leases")
# SubjectAccessReview's grid: (group, resource[/subresource]) x verb x namespace (the release's, another).
GRID_RESOURCES = [IMPORTS, (R.LEGACY_GROUP, "inferencepoolimports/status"), POOLS,
                  (R.INFERENCE_POOL.group, "inferencepools/status"), (R.LEGACY_GROUP, "inferencepools"),
                  LEASES, ("", "secrets"), ("", "pods"), ("", "configmaps"), ("", "services")]  # fmt: skip
GRID_VERBS = ["get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"]


def hub_render(release: str, ns: str, standalone: bool) -> list[dict[str, Any]]:
    # (the parent a Gateway: the default's group "" is refused by this server, the module's doc)
    values = {"inferenceExtension": {"enabled": False}, "hubMember": {"enabled": True},
              "hub": {"enabled": True, "import": f"{ns}/llama", "membersSecretName": "hub-members",
                      "members": [{"name": "east"}], "settings": {"ttl_s": 3.0},
                      "parent": f"{ns}/global", "controller": {"standalone": standalone}}}  # fmt: skip
    with helm.Chart.load(str(CHART)) as chart:
        out = chart.render(values, name=release, namespace=ns)
    return [d for text in out.values() for d in yaml.safe_load_all(text) if d]


def expected(release_ns: str, other_ns: str, standalone: bool) -> dict[str, set[tuple[str, str, str, str]]]:
    """What each ServiceAccount may do, (namespace, group, resource, verb): what the controller uses (the
    writer: the gateway's ``-hub``, or ``-hub-controller`` standalone, when the gateway gets nothing in the
    hub), and in the member what it reads and the condition it writes."""
    both = (release_ns, other_ns)
    writer = {(n, *IMPORTS, v) for n in both for v in ("create", "get", "list", "delete")}
    writer |= {(n, R.LEGACY_GROUP, "inferencepoolimports/status", "patch") for n in both}
    writer |= {(release_ns, *LEASES, v) for v in ("get", "create", "update")}  # (its namespace only)
    member = {(n, *POOLS, v) for n in both for v in ("list", "watch")}
    member |= {(n, R.INFERENCE_POOL.group, "inferencepools/status", "patch") for n in both}
    if standalone:
        return {"hub-controller": writer, "hub": set(), "hub-member": member}
    return {"hub": writer, "hub-member": member}


async def allowed(
    admin: KubeClient, sa_ns: str, sa: str, namespaces: tuple[str, str]
) -> set[tuple[str, ...]]:
    """The grid's requests the server's RBAC authorizer allows ``sa`` (SubjectAccessReview, by the admin)."""
    user = f"system:serviceaccount:{sa_ns}:{sa}"
    groups = ["system:serviceaccounts", f"system:serviceaccounts:{sa_ns}", "system:authenticated"]
    gate = asyncio.Semaphore(8)

    async def ask(n: str, group: str, resource: str, verb: str) -> tuple[str, ...] | None:
        res, _, sub = resource.partition("/")
        attrs = {"namespace": n, "verb": verb, "group": group, "resource": res, "subresource": sub}
        body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                "spec": {"user": user, "groups": groups, "resourceAttributes": attrs}}  # fmt: skip
        async with gate:
            got = await admin.request("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", body=body)
        return (n, group, resource, verb) if got["status"].get("allowed") else None

    grid = itertools.product(namespaces, GRID_RESOURCES, GRID_VERBS)
    answers = await asyncio.gather(*(ask(n, g, r, v) for n, (g, r), v in grid))
    return {a for a in answers if a is not None}


async def granted(
    admin_conf: str, sa_ns: str, sa: str, namespaces: tuple[str, str], out: Path
) -> set[tuple[str, ...]]:
    """Every grant the server's RBAC gives ``sa`` in ``namespaces``, whatever the resource or verb: its own
    SelfSubjectRulesReview on its own token, one (namespace, group, resource, verb, resourceNames) per
    grant (a ``*`` stays ``*``; non-resource URLs as group ``nonResourceURL``). Beside ``allowed``'s grid,
    which sees no rule outside it (review s28-rev-k8s28 F1)."""
    conf = await token_kubeconfig(admin_conf, sa_ns, sa, out)
    got: set[tuple[str, ...]] = set()
    async with await KubeClient.connect(kubeconfig=str(conf)) as client:
        for n in namespaces:
            body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview",
                    "spec": {"namespace": n}}  # fmt: skip
            review = await client.request(
                "POST", "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews", body=body
            )
            status = review["status"]
            assert not status.get("incomplete"), f"{sa} in {n}: {status.get('evaluationError')}"
            for rule in status.get("resourceRules") or []:
                names = ",".join(sorted(rule.get("resourceNames") or []))
                got |= {(n, g, r, v, names) for g in rule.get("apiGroups") or []
                        for r in rule.get("resources") or [] for v in rule.get("verbs") or []}  # fmt: skip
            for rule in status.get("nonResourceRules") or []:
                got |= {(n, "nonResourceURL", u, v, "") for u in rule.get("nonResourceURLs") or []
                        for v in rule.get("verbs") or []}  # fmt: skip
    return got


async def whole_rule_sets_match(
    admin_conf: str, ns: str, release: str, want: dict[str, set[tuple[str, str, str, str]]], tmp_path: Path
) -> None:
    """Each of ``want``'s ServiceAccounts is granted exactly its set, whole: its rules less those of a
    ServiceAccount bound to nothing (what every ServiceAccount gets: discovery, self reviews)."""
    k = Kubectl(admin_conf, ns)
    nobody = f"{release}-nobody"
    await k.run("create", "serviceaccount", nobody)
    namespaces = (ns, f"{ns}-other")
    base = await granted(admin_conf, ns, nobody, namespaces, tmp_path / "nobody.kubeconfig")
    for who, theirs in want.items():
        got = await granted(
            admin_conf, ns, f"{release}-{who}", namespaces, tmp_path / f"{who}.rules.kubeconfig"
        )
        got -= base
        exact = {(*t, "") for t in theirs}
        assert got == exact, (
            f"{who}: granted past its use {sorted(got - exact)}, not granted {sorted(exact - got)}"
        )


def exported_pool(name: str, **annotations: str) -> str:
    return json.dumps({"apiVersion": R.INFERENCE_POOL.api_version, "kind": "InferencePool",
                       "metadata": {"name": name, "annotations": {"inference.networking.x-k8s.io/export":
                                                                  "ClusterSet", **annotations}},
                       "spec": {"selector": {"matchLabels": {"app": name}},
                                "targetPorts": [{"number": 8000}]}})  # fmt: skip


class Writer:
    """The hub's writer on the writer ServiceAccount's token: the gateway's ``ClusterSource`` (``kvgate serve
    --clusters``), or standalone ``kvgate hub-controller --ha-enable-leader-election`` (``HubController``)
    as the chart runs it."""

    def __init__(self, kube: Any, standalone: bool, lease: tuple[str, str]) -> None:
        from kvgate.multicluster.clusters import ClustersConfig
        from kvgate.multicluster.hub_controller import Election, HubController
        from kvgate.multicluster.source import ClusterSource

        self.runner: Any
        self.controller = "controller" if standalone else "imports"  # (the runner's ImportController)
        if standalone:
            election = Election(name=lease[1], namespace=lease[0], retry_period_s=0.5)
            self.runner = HubController(kube, election)
        else:
            self.runner = ClusterSource(ClustersConfig(clusters=(), kubernetes=kube), lambda _cfg: None)

    def written(self) -> dict[tuple[str, str], Any]:
        ctl = getattr(self.runner, self.controller)
        return ctl.written if ctl is not None else {}

    def identity(self) -> str | None:
        elector = self.runner.elector
        return None if elector is None else str(elector.identity)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("standalone", [False, True], ids=["in-gateway", "standalone"])
async def test_the_hub_roles_allow_what_the_controller_does_and_nothing_else(
    server: tuple[str, str], tmp_path: Path, standalone: bool
) -> None:
    ns, k = await fresh_namespace(server[1])
    release = f"h{uuid.uuid4().hex[:8]}"  # (its ClusterRoles are cluster-wide: a name of this run's own)
    docs = hub_render(release, ns, standalone)
    rbac = [d for d in docs if d["kind"] in ("ServiceAccount", "Role", "RoleBinding", "ClusterRole",
                                             "ClusterRoleBinding")]  # fmt: skip
    want = expected(ns, f"{ns}-other", standalone)
    assert {d["metadata"]["name"] for d in rbac if d["kind"] == "ServiceAccount"} == {
        f"{release}-{who}" for who in want}  # fmt: skip
    cluster_wide = [f"{d['kind'].lower()}/{d['metadata']['name']}" for d in rbac
                    if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]  # fmt: skip
    try:
        await k.run("apply", "-f", "-", stdin=yaml.safe_dump_all(rbac))
        await hub_paths(server, tmp_path, standalone, ns, k, release, docs, want)
    finally:  # (cluster-wide: nothing deletes them with the namespace, review s28-rev-k8s28 F3)
        await k.run("delete", *cluster_wide, "--ignore-not-found", "--wait=false")


async def hub_paths(
    server: tuple[str, str], tmp_path: Path, standalone: bool, ns: str, k: Kubectl, release: str,
    docs: list[dict[str, Any]], want: dict[str, set[tuple[str, str, str, str]]],
) -> None:  # fmt: skip
    from kvgate.multicluster.clusters import KubeMember, parse

    admin_conf = server[1]
    # Nothing else: the server's answers over the grid are exactly what the controller uses, and so is each
    # ServiceAccount's whole rule set (a grant outside the grid shows there: review s28-rev-k8s28 F1).
    async with await KubeClient.connect(kubeconfig=admin_conf) as admin:
        for who, theirs in want.items():
            got = await allowed(admin, ns, f"{release}-{who}", (ns, f"{ns}-other"))
            assert got == theirs, (
                f"{who}: allowed past its use {sorted(got - theirs)}, refused {sorted(theirs - got)}"
            )
    await whole_rule_sets_match(admin_conf, ns, release, want, tmp_path)

    # What it needs: the writer, on those tokens alone, through every path.
    writer_sa = f"{release}-hub-controller" if standalone else f"{release}-hub"
    hub_conf = await token_kubeconfig(admin_conf, ns, writer_sa, tmp_path / "hub.kubeconfig")
    member = f"{release}-hub-member"
    member_conf = await token_kubeconfig(admin_conf, ns, member, tmp_path / "member.kubeconfig")
    [cm] = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == f"{release}-hub"]
    chart = parse(yaml.safe_load(cm["data"]["clusters.yaml"])).kubernetes
    lease = (ns, f"{release}-hub-controller")
    assert chart is not None and chart.lease_ref == lease and chart.controller is not standalone
    await k.run("apply", "-f", "-", stdin=json.dumps({"apiVersion": "inference.networking.x-k8s.io/v1alpha1",
                                                      "kind": "InferencePoolImport",
                                                      "metadata": {"name": "llama"}}))  # fmt: skip
    await k.run("apply", "-f", "-", stdin=exported_pool("llama", **{"kvgate.io/gateway": "10.1.0.2:8080"}))
    await k.run("apply", "-f", "-", stdin=exported_pool("gone"))
    kube = dataclasses.replace(chart, server=None, kubeconfig=str(hub_conf),
                               members=(KubeMember("east", kubeconfig=str(member_conf)),))  # fmt: skip
    w = Writer(kube, standalone, lease)
    await w.runner.start()

    async def get(kind: str, name: str) -> dict[str, Any]:
        return await k.get(kind, name)

    try:
        await until(
            lambda: w.written().get((ns, "gone")) == ("east",), f"import gone written ({w.written()})", 60.0
        )
        assert (await get("inferencepoolimport", "gone"))["metadata"]["name"] == "gone"  # (created)
        await k.run("annotate", "inferencepool.inference.networking.k8s.io", "gone",
                    "inference.networking.x-k8s.io/export-")  # fmt: skip
        await until(lambda: (ns, "gone") not in w.written(), f"import gone dropped ({w.written()})", 60.0)
        imports = await k.run("get", "inferencepoolimports", "-o", "name")
        assert "gone" not in imports, imports  # (deleted: nothing exports it)
        loop = asyncio.get_running_loop()
        end = loop.time() + 60.0
        while True:  # the member's pool: Exported; the followed import: this gateway's parent entry
            pool = await get("inferencepool.inference.networking.k8s.io", "llama")
            imp = await get("inferencepoolimport", "llama")
            conds = [c for p in pool.get("status", {}).get("parents", []) for c in p.get("conditions", [])]
            parents = [p.get("parentRef") for c in imp.get("status", {}).get("controllers", [])
                       for p in c.get("parents", [])]  # fmt: skip
            if any(c.get("reason") == "Exported" for c in conds) and parents:
                break
            assert loop.time() < end, f"not within 60 s: Exported {conds}, parents {parents}"
            await asyncio.sleep(0.5)
        assert parents == [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": ns,
                            "name": "global"}]  # fmt: skip
        holder = (await get("lease", lease[1]))["spec"]["holderIdentity"]
        assert holder is not None and holder == w.identity()
    finally:
        await w.runner.stop()
        for kind in ("inferencepool.inference.networking.k8s.io", "inferencepoolimport"):
            await k.run("delete", kind, "--all", "--wait=false")  # (no namespace controller here)
