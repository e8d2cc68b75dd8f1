"""k8s27: kvgate's discovery of an InferencePool in either group (v1, and v1alpha2 of ``--pool-group
inference.networking.x-k8s.io``) against a REAL kube-apiserver's RBAC authorizer, as the EPP's own
ServiceAccount with exactly the shipped Role (the chart's, rendered by Helm's engine, or
``deploy/kvgate-epp.yaml``'s), leader election on as the chart's HA runs it.

The admin (``system:masters``) installs the CRDs (deploy/crds, and tests/k8s/v1alpha2_pool.py's v1alpha2
InferencePool CRD), the Role, its binding and ServiceAccount, the pool (the chart's own, rendered with
``inferencePool.apiVersion`` in the group's version, the EPP's ``--pool-group`` read from its Deployment; for
the plain manifest, v1 only, one written here) and a pod, and plays the kubelet (pod status). A TokenRequest
gives the ServiceAccount's token; ``KubePool`` runs on a kubeconfig holding only it. Ready means every watch
listed and watched with no 403 (none tolerated either), the Lease held; then a live pool change (its port)
reaches the store. Before k8s27 both Roles granted ``inferencepools`` in the v1 group only: the v1alpha2 cases
stayed not ready ("forbidden"), and the chart rendered a v1alpha2 pool in v1's shape; the v1 cases are the
control. The first check proves the server enforces RBAC (a Secret list is 403 to this ServiceAccount), so a
server run with AlwaysAllow cannot pass this test.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from k8s.v1alpha2_pool import V1ALPHA2_POOL_CRD
from k8s_real.test_real_apiserver import CRDS, Kubectl, installable, pod, pod_status, until
from kvgate.datalayer.store import EndpointStore
from kvgate.k8s import resources as R
from kvgate.k8s.client import KubeClient, KubeError
from kvgate.k8s.runtime import KubeOptions, KubePool

pytestmark = pytest.mark.k8sreal

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "charts" / "kvgate-epp"
MANIFEST = ROOT / "deploy" / "kvgate-epp.yaml"
RBAC_KINDS = ("ServiceAccount", "Role", "RoleBinding")


def shipped(source: str, namespace: str, group: str) -> tuple[list[dict[str, Any]], str, str]:
    """What to apply: the shipped ServiceAccount, Role and RoleBinding moved to ``namespace`` and the pool
    (the chart's own, rendered in ``group``'s version; the plain manifest's is v1 only: ``pool``); the
    ServiceAccount's name; the pool group the EPP is run with (the chart's ``--pool-group`` arg)."""
    if source == "chart":
        values = {"inferencePool": {"apiVersion": R.POOL_GROUPS[group].api_version,
                                    "modelServers": {"matchLabels": {"app": "vllm"}}}}  # fmt: skip
        with helm.Chart.load(str(CHART)) as chart:
            out = chart.render(values, name="llm", namespace=namespace)
        docs = [d for text in out.values() for d in yaml.safe_load_all(text) if d]
        [deployment] = [d for d in docs if d["kind"] == "Deployment"]
        args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        flags = [a.removeprefix("--pool-group=") for a in args if a.startswith("--pool-group=")]
        run_group = flags[0] if flags else R.INFERENCE_POOL.group
        [chart_pool] = [d for d in docs if d["kind"] == "InferencePool"]
        extra = [chart_pool]
    else:
        docs = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
        run_group, extra = group, [pool(group, 8000)]
    rbac = [d for d in docs if d["kind"] in RBAC_KINDS]
    assert sorted(d["kind"] for d in rbac) == sorted(RBAC_KINDS), source
    for d in rbac:
        d["metadata"]["namespace"] = namespace
        for s in d.get("subjects") or []:
            s["namespace"] = namespace
    [sa] = [d["metadata"]["name"] for d in rbac if d["kind"] == "ServiceAccount"]
    return [*rbac, *extra], sa, run_group


def pool(group: str, port: int) -> dict[str, Any]:
    rt = R.POOL_GROUPS[group]
    if group == R.LEGACY_GROUP:
        spec: dict[str, Any] = {"selector": {"app": "vllm"}, "targetPortNumber": port,
                                "extensionRef": {"name": "llm-epp"}}  # fmt: skip
    else:
        spec = {"selector": {"matchLabels": {"app": "vllm"}}, "targetPorts": [{"number": port}],
                "endpointPickerRef": {"name": "llm-epp", "port": {"number": 9002}}}  # fmt: skip
    return {"apiVersion": rt.api_version, "kind": rt.kind, "metadata": {"name": "llm"}, "spec": spec}


@pytest.fixture(scope="module")
def crds(server: tuple[str, str]) -> None:
    """deploy/crds as shipped and the v1alpha2 pool's, established (kubectl in this thread: no loop yet)."""
    k = Kubectl(server[1], "default")
    for name, text in [*((p.name.removesuffix(".yaml"), installable(p)) for p in CRDS),
                       (V1ALPHA2_POOL_CRD["metadata"]["name"], json.dumps(V1ALPHA2_POOL_CRD))]:  # fmt: skip
        k("apply", "-f", "-", stdin=text)
        k("wait", "--for=condition=established", "--timeout=60s", f"crd/{name}")


async def token_kubeconfig(admin: str, namespace: str, sa: str, out: Path) -> Path:
    """A kubeconfig for ``sa`` (a TokenRequest's token) on the admin's server, with its CA."""
    conf = yaml.safe_load(await asyncio.to_thread(Path(admin).read_text))
    async with await KubeClient.connect(kubeconfig=admin) as client:
        req = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
               "spec": {"expirationSeconds": 3600}}  # fmt: skip
        path = f"/api/v1/namespaces/{namespace}/serviceaccounts/{sa}/token"
        got = await client.request("POST", path, body=req)
    conf["users"] = [{"name": sa, "user": {"token": got["status"]["token"]}}]
    conf["contexts"] = [{"name": "sa", "context": {"cluster": conf["clusters"][0]["name"], "user": sa}}]
    conf["current-context"] = "sa"
    await asyncio.to_thread(out.write_text, yaml.safe_dump(conf))
    return out


@pytest.mark.timeout(180)
@pytest.mark.parametrize("group", [R.INFERENCE_POOL.group, R.LEGACY_GROUP], ids=["v1", "v1alpha2"])
@pytest.mark.parametrize("source", ["chart", "manifest"])
async def test_the_shipped_role_lets_the_epp_discover_its_pool_under_rbac(
    server: tuple[str, str], crds: None, tmp_path: Path, source: str, group: str
) -> None:
    kubeconfig = server[1]
    ns = f"kvg-{uuid.uuid4().hex[:8]}"
    k = Kubectl(kubeconfig, ns)
    await k.run("create", "namespace", ns)
    objects, sa, run_group = shipped(source, ns, group)
    assert run_group == group  # (the chart runs the EPP on its pool's group)
    await k.run("apply", "-f", "-", stdin=yaml.safe_dump_all(objects))
    await k.run("create", "-f", "-", stdin=pod("p0"))
    await k.run("patch", "pod", "p0", "--subresource=status", "--type=merge", "-p",
                pod_status("127.0.0.2", True))  # fmt: skip
    mine = await token_kubeconfig(kubeconfig, ns, sa, tmp_path / "sa.kubeconfig")

    # The server authorizes by RBAC: what the Role does not grant is refused to this ServiceAccount.
    async with await KubeClient.connect(kubeconfig=str(mine)) as client:
        with pytest.raises(KubeError) as secrets:
            await client.request("GET", f"/api/v1/namespaces/{ns}/secrets")
    assert secrets.value.status == 403, secrets.value

    store = EndpointStore()
    opts = KubeOptions("llm", ns, pool_group=group, kubeconfig=str(mine), leader_election=True,
                       lease_duration_s=15.0, renew_deadline_s=10.0, retry_period_s=0.5)  # fmt: skip
    kp = KubePool(opts, store, on_policy=lambda _o, _r: None)
    await kp.start()

    def addrs() -> set[str]:
        return {e.address for e in store.all()}

    try:
        try:  # (6782b99d: "InferencePool ...: forbidden" for v1alpha2 pools, for good)
            await until(lambda: kp.problem() is None and addrs() == {"127.0.0.2:8000"}, "ready", 60.0)
        except AssertionError as e:
            raise AssertionError(f"{e} (last: {kp.problem()}; endpoints {addrs()})") from None
        assert kp.discovery is not None and kp.elector is not None and kp.elector.is_leader
        refused = [(r.rt.group, r.rt.plural, r.error) for r in kp.discovery.reflectors
                   if r.error and r.error.startswith("403")]  # fmt: skip
        assert refused == []  # (none tolerated either: a policy group refused would still be ready)
        lease = await k.get("lease", "kvgate-epp-llm")
        assert lease["spec"]["holderIdentity"] == kp.elector.identity
        # A live change of the pool (its port) reaches the store: the pool's watch, in its group.
        await k.run("apply", "-f", "-", stdin=json.dumps(pool(group, 8001)))
        await until(lambda: addrs() == {"127.0.0.2:8001"}, f"the new port (last: {addrs()})", within_s=60.0)
    finally:
        await kp.stop()
