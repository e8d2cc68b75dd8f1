"""kvgate's Kubernetes side against a REAL kube-apiserver (1.20.2 built from Debian's source; etcd 3.4).

Opt-in: marked ``k8sreal`` (left out of the default suite by pyproject's addopts; ``make test-k8s-real``,
which CI runs, builds, starts, runs ``-m k8sreal`` and stops). With ``-m k8sreal`` it runs when
``KVGATE_REAL_APISERVER`` is the server's URL (with ``KUBECONFIG`` naming its credentials:
``scripts/real-apiserver.sh start`` prints both) or when ``scripts/real-apiserver.sh build`` has built the
binary and etcd is installed (the session then starts its own etcd + apiserver in a temporary run directory
and stops them after: conftest.py's ``server``); skipped otherwise, and failed instead under
``KVGATE_REQUIRE_REAL_APISERVER=1`` (``make test-k8s-real`` sets it: a run with nothing tested is not a pass).

The real kubectl applies the project's CRDs as shipped (a file using ``x-kubernetes-validations`` goes in
stripped of them: 1.20 predates CEL rules; the InferencePool CRD has upstream's two, and its empty-string
default, which this build refuses, goes too: ``strip_unsupported``) and creates the
InferencePool and pods; kvgate's discovery runs through ``KubePool`` as ``kvgate serve --pool-name`` /
``kvgate epp --pool-name`` build it (``KubeOptions`` with the kubeconfig, leader election on as
``--leader-elect`` asks; ``store_pool`` and an ``on_policy`` listener, so the InferenceObjective and
InferenceModelRewrite watches run against this server too).
No kubelet runs: the test plays it, writing pod status (``podIP``,
``Ready``) through the status subresource with kubectl. The API-server double's CRD refusals are
compared with this server's, answer for answer.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
import yaml

from fake_time import FakeTime
from k8s.probe_kit import advance_to
from kvgate.datalayer.store import EndpointStore
from kvgate.k8s.apiserver import ApiServerDouble
from kvgate.k8s.client import KubeClient
from kvgate.k8s.reflector import Reflector
from kvgate.k8s.resources import POD
from kvgate.k8s.runtime import KubeOptions, KubePool

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "real-apiserver.sh"
BINARY = Path(
    subprocess.run(["bash", str(SCRIPT), "bin"], capture_output=True, text=True, check=True).stdout.strip()
)
CRDS = sorted((ROOT / "deploy" / "crds").glob("*.yaml"))
KUBECTL = shutil.which("kubectl")
UNSUPPORTED_BY_1_20 = ("x-kubernetes-validations",)

pytestmark = pytest.mark.k8sreal


def strip_unsupported(node: Any) -> Any:
    """The CRD without the schema keys a 1.20 API server does not know (it would drop them silently), nor
    an empty-string ``default`` (upstream's ``endpointPickerRef.group``: this 1.20.2 build refuses the CRD,
    ``default: Invalid value: "null"``, as it refuses ``""`` in a custom resource's string field)."""
    if isinstance(node, dict):
        return {k: strip_unsupported(v) for k, v in node.items()
                if k not in UNSUPPORTED_BY_1_20 and not (k == "default" and v == "")}  # fmt: skip
    if isinstance(node, list):
        return [strip_unsupported(v) for v in node]
    return node


class Kubectl:
    def __init__(self, kubeconfig: str, namespace: str) -> None:
        self.kubeconfig, self.namespace = kubeconfig, namespace

    def __call__(self, *args: str, stdin: str | None = None) -> str:
        assert KUBECTL is not None
        cmd = [KUBECTL, "--kubeconfig", self.kubeconfig, "-n", self.namespace, "--request-timeout=30s", *args]
        res = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=90, check=False)
        assert res.returncode == 0, f"kubectl {' '.join(args)} -> {res.returncode}: {res.stderr}"
        return res.stdout

    async def run(self, *args: str, stdin: str | None = None) -> str:
        return await asyncio.to_thread(self, *args, stdin=stdin)

    async def get(self, *args: str) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(await self.run("get", *args, "-o", "json"))
        return out


async def until(cond: Callable[[], bool], what: str, within_s: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + within_s
    while not cond():
        assert loop.time() < end, f"not within {within_s} s: {what}"
        await asyncio.sleep(0.05)


def pod(name: str, node: str | None = None) -> str:
    spec: dict[str, Any] = {"containers": [{"name": "vllm", "image": "vllm/vllm-openai"}]}
    if node:
        spec["nodeName"] = node  # bound to a node: deleting it is graceful (the kubelet would confirm)
    return yaml.safe_dump({"apiVersion": "v1", "kind": "Pod",
                           "metadata": {"name": name, "labels": {"app": "vllm"}}, "spec": spec})  # fmt: skip


def pod_status(ip: str, ready: bool) -> str:
    cond = {"type": "Ready", "status": "True" if ready else "False"}
    return json.dumps(
        {"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "conditions": [cond]}}
    )


def installable(path: Path) -> str:
    """The CRD file as shipped; stripped (and dumped again) only if it uses what 1.20 cannot take."""
    text = path.read_text()
    crd = yaml.safe_load(text)
    return text if strip_unsupported(crd) == crd else yaml.safe_dump(strip_unsupported(crd))


async def apply_crd(k: Kubectl, path: Path) -> None:
    text = await asyncio.to_thread(installable, path)
    await k.run("apply", "-f", "-", stdin=text)
    name = path.name.removesuffix(".yaml")  # each file is named after its CRD
    await k.run("wait", "--for=condition=established", "--timeout=60s", f"crd/{name}")


# A real API server refused every CRD in deploy/crds once (`additionalProperties: false` beside
# `properties`; InferencePool's *.k8s.io group without api-approved.kubernetes.io) while the double and the
# offline schema check took them: now the files install as shipped, and the double refuses what this
# server refuses (tests/k8s/test_apiserver_crd_rules.py offline; compared with this server below).
@pytest.mark.parametrize("path", CRDS, ids=lambda p: p.name)
async def test_the_api_server_accepts_the_crd_as_shipped(server: tuple[str, str], path: Path) -> None:
    await apply_crd(Kubectl(server[1], "default"), path)


def refused_crd(group: str, closed: bool, approval: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"type": "object", "properties": {"n": {"type": "integer"}}}
    if closed:
        spec["additionalProperties"] = False
    schema = {"type": "object", "properties": {"spec": spec}}
    meta: dict[str, Any] = {"name": f"widgets.{group}"}
    if approval is not None:
        meta["annotations"] = {"api-approved.kubernetes.io": approval}
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": meta,
            "spec": {"group": group, "scope": "Namespaced", "names": {"kind": "Widget", "plural": "widgets"},
                     "versions": [{"name": "v1", "served": True, "storage": True,
                                   "schema": {"openAPIV3Schema": schema}}]}}  # fmt: skip


async def post_crd(
    url: str, body: dict[str, Any], token: str | None = None, ca: str | None = None
) -> tuple[int, dict[str, Any]]:
    ctx = ssl.create_default_context(cafile=ca) if ca else None
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    async with aiohttp.ClientSession() as s, s.post(url + path, json=body, headers=headers, ssl=ctx) as r:
        out: dict[str, Any] = await r.json(content_type=None)
        return r.status, out


@pytest.mark.parametrize(
    ("group", "closed", "approval"),
    [("example.com", True, None), ("widgets.k8s.io", False, None), ("both.k8s.io", True, None),
     ("x.kubernetes.io", False, "yes")],
    ids=["additionalProperties-beside-properties", "k8s-io-group-unapproved", "both", "approval-not-a-url"],
)  # fmt: skip
async def test_the_double_refuses_a_crd_as_this_server_does(
    server: tuple[str, str], group: str, closed: bool, approval: str | None
) -> None:
    url, kubeconfig = server
    conf = yaml.safe_load(await asyncio.to_thread(Path(kubeconfig).read_text))
    user, cluster = conf["users"][0]["user"], conf["clusters"][0]["cluster"]
    crd = refused_crd(group, closed, approval)
    code, real = await post_crd(url, crd, user.get("token"), cluster.get("certificate-authority"))
    async with ApiServerDouble() as double:
        double_code, fake = await post_crd(double.url, crd)
    assert (double_code, fake["reason"]) == (code, real["reason"]) == (422, "Invalid"), real
    assert fake["message"] == real["message"]
    got = sorted((c["reason"], c["field"]) for c in fake["details"]["causes"])
    assert got == sorted((c["reason"], c["field"]) for c in real["details"]["causes"])


async def test_discovery_watch_and_lease_against_a_real_apiserver(server: tuple[str, str]) -> None:
    url, kubeconfig = server
    ns = f"kvg-{uuid.uuid4().hex[:8]}"
    k = Kubectl(kubeconfig, ns)
    version = json.loads(await k.run("version", "-o", "json"))["serverVersion"]
    assert version["major"] == "1", version
    await k.run("create", "namespace", ns)
    for path in CRDS:
        await apply_crd(k, path)
    pool = {"apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool",
            "metadata": {"name": "llm"},
            "spec": {"selector": {"matchLabels": {"app": "vllm"}}, "targetPorts": [{"number": 8000}],
                     "endpointPickerRef": {"name": "llm-epp", "port": {"number": 9002}}}}  # fmt: skip
    await k.run("apply", "-f", "-", stdin=yaml.safe_dump(pool))
    assert (await k.get("inferencepool", "llm"))["spec"]["targetPorts"] == [{"number": 8000}]
    await k.run("create", "-f", "-", stdin=pod("p0"))
    await k.run("create", "-f", "-", stdin=pod("p1", node="node-a"))
    await k.run(
        "patch", "pod", "p0", "--subresource=status", "--type=merge", "-p", pod_status("127.0.0.2", True)
    )
    await k.run(
        "patch", "pod", "p1", "--subresource=status", "--type=merge", "-p", pod_status("127.0.0.3", True)
    )

    store = EndpointStore()
    opts = KubeOptions("llm", ns, kubeconfig=kubeconfig, leader_election=True, lease_duration_s=15.0,
                       renew_deadline_s=10.0, retry_period_s=0.5)  # fmt: skip
    policies: list[tuple[dict[str, int], list[Any]]] = []
    kp = KubePool(opts, store, store_pool="llm", on_policy=lambda o, r: policies.append((o, r)))
    await kp.start()

    def addrs() -> set[str]:
        return {e.address for e in store.all()}

    try:
        await until(lambda: addrs() == {"127.0.0.2:8000", "127.0.0.3:8000"}, "both pods' endpoints")
        await until(lambda: kp.problem() is None, "ready (synced, pool found, leader)")
        assert kp.elector is not None and kp.elector.is_leader
        lease = await k.get("lease", "kvgate-epp-llm")
        assert lease["spec"]["holderIdentity"] == kp.elector.identity
        assert lease["spec"]["leaseDurationSeconds"] == 15

        # InferenceObjective / InferenceModelRewrite objects reach the policy listener (their watches).
        objective = {
            "apiVersion": "llm-d.ai/v1alpha2",
            "kind": "InferenceObjective",
            "metadata": {"name": "chat"},
            "spec": {"priority": 5, "poolRef": {"group": "inference.networking.k8s.io", "name": "llm"}},
        }
        rewrite = {"apiVersion": "llm-d.ai/v1alpha2", "kind": "InferenceModelRewrite",
                   "metadata": {"name": "canary"},
                   "spec": {"poolRef": {"group": "inference.networking.k8s.io", "name": "llm"},
                            "rules": [{"matches": [{"model": {"value": "base"}}],
                                       "targets": [{"modelRewrite": "base-v2", "weight": 3}]}]}}  # fmt: skip
        await k.run("apply", "-f", "-", stdin=yaml.safe_dump(objective))
        await k.run("apply", "-f", "-", stdin=yaml.safe_dump(rewrite))

        def policy() -> tuple[dict[str, int], list[tuple[list[str], list[tuple[str, int]]]]] | None:
            if not policies:
                return None
            objectives, rules = policies[-1]
            return objectives, [(r.matches, [(t.model, t.weight) for t in r.targets]) for r in rules]

        want_policy = ({"chat": 5}, [(["base"], [("base-v2", 3)])])
        await until(lambda: policy() == want_policy, f"objective and rewrite seen (last: {policy()})")
        await k.run("delete", "inferenceobjective.llm-d.ai", "chat")
        await until(lambda: (policy() or ({"x": 0},))[0] == {}, "objective deleted: gone")

        # A pod turning not-ready leaves (the watch's MODIFIED), and comes back.
        await k.run("patch", "pod", "p0", "--subresource=status", "--type=merge", "-p",
                    pod_status("127.0.0.2", False))  # fmt: skip
        await until(lambda: addrs() == {"127.0.0.3:8000"}, "p0 not ready: gone")
        await k.run("patch", "pod", "p0", "--subresource=status", "--type=merge", "-p",
                    pod_status("127.0.0.2", True))  # fmt: skip
        await until(lambda: addrs() == {"127.0.0.2:8000", "127.0.0.3:8000"}, "p0 ready again")

        # A pool change (a second target port) reaches every pod.
        await k.run("patch", "inferencepool", "llm", "--type=merge", "-p",
                    json.dumps({"spec": {"targetPorts": [{"number": 8000}, {"number": 8001}]}}))  # fmt: skip
        want = {f"127.0.0.{i}:{p}" for i in (2, 3) for p in (8000, 8001)}
        await until(lambda: addrs() == want, "both target ports")

        # A bound pod's delete is graceful on a real server: it stays, terminating, and leaves the pool.
        await k.run("delete", "pod", "p1", "--wait=false")
        await until(lambda: addrs() == {"127.0.0.2:8000", "127.0.0.2:8001"}, "p1 terminating: gone")
        assert (await k.get("pod", "p1"))["metadata"].get("deletionTimestamp")
        await k.run("delete", "pod", "p1", "--grace-period=0", "--force")
        # An unbound pod's delete removes it at once (the watch's DELETED).
        await k.run("delete", "pod", "p0", "--wait=false")
        await until(lambda: addrs() == set(), "p0 deleted: gone")
        assert kp.ready_pods() == 0
    finally:
        await kp.stop()
    # Stopping gave the Lease up (holder cleared), as a clean shutdown hands over at once.
    assert not (await k.get("lease", "kvgate-epp-llm"))["spec"].get("holderIdentity")
    assert url.startswith("https://")


CLOSED_VERSION = {"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
    "type": "object", "properties": {"spec": {"type": "object", "properties": {"n": {"type": "integer"}},
                                              "additionalProperties": False}}}}}  # fmt: skip
CLOSE_SCHEMA = {"spec": {"versions": [CLOSED_VERSION]}}


def approval(value: str | None) -> dict[str, Any]:
    return {"metadata": {"annotations": {"api-approved.kubernetes.io": value}}}


async def crd_updates(url: str, tag: str, token: str | None = None, ca: str | None = None) -> list[Any]:
    """One sequence of CRD creates and updates (merge and JSON patches, a PUT): each answer's code, reason,
    message and causes (as (reason, field) pairs), in order."""
    ctx = ssl.create_default_context(cafile=ca) if ca else None
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    out: list[Any] = []
    async with aiohttp.ClientSession(headers=headers) as s:

        async def send(method: str, name: str, body: Any, ctype: str = "application/merge-patch+json") -> Any:
            path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions" + (f"/{name}" if name else "")
            async with s.request(method, url + path, data=json.dumps(body), ssl=ctx,
                                 headers={"Content-Type": ctype}) as r:  # fmt: skip
                answer: dict[str, Any] = await r.json(content_type=None)
            listed = (answer.get("details") or {}).get("causes", [])
            causes = sorted((c["reason"], c["field"]) for c in listed)
            out.append((method, r.status, answer.get("reason"), answer.get("message"), causes))
            return answer

        open_name = f"widgets.u{tag}.example.com"
        field = "/spec/versions/0/schema/openAPIV3Schema/properties/spec/additionalProperties"
        closed_patch = [{"op": "add", "path": field, "value": False}]
        await send("POST", "", refused_crd(f"u{tag}.example.com", closed=False), "application/json")
        await send("PATCH", open_name, CLOSE_SCHEMA)
        await send("PATCH", open_name, closed_patch, "application/json-patch+json")
        for _ in range(100):  # (the real server's controllers write its status: PUT once they are done)
            stored = await send("GET", open_name, None)
            out.pop()  # (the GET: its resourceVersion and status differ between the servers)
            conditions = (stored.get("status") or {}).get("conditions") or []
            done = any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)
            if not conditions or done:
                break
            await asyncio.sleep(0.05)
        await send("PUT", open_name, {**stored, "spec": {**stored["spec"], "versions": [CLOSED_VERSION]}},
                   "application/json")  # fmt: skip
        protected = f"widgets.p{tag}.k8s.io"
        await send("POST", "", refused_crd(f"p{tag}.k8s.io", False, "https://example.com/review"),
                   "application/json")  # fmt: skip
        for patch in (approval(None), approval("yes"), approval("https://example.com/other"),
                      approval("unapproved, testing"), {**approval(None), **CLOSE_SCHEMA},
                      {"metadata": {"labels": {"a": "b"}}}, approval(None)):  # fmt: skip
            await send("PATCH", protected, patch)
    return out


async def test_the_double_refuses_a_crd_update_as_this_server_does(server: tuple[str, str]) -> None:
    """k8s17: the CRD rules on update (PUT, merge and JSON patch), the approval annotation checked only where
    an update changes its state: the double answers each update of one sequence as this server does (code,
    reason, message, causes). Before, the double took every update."""
    url, kubeconfig = server
    conf = yaml.safe_load(await asyncio.to_thread(Path(kubeconfig).read_text))
    user, cluster = conf["users"][0]["user"], conf["clusters"][0]["cluster"]
    tag = uuid.uuid4().hex[:6]
    real = await crd_updates(url, tag, user.get("token"), cluster.get("certificate-authority"))
    async with ApiServerDouble() as double:
        fake = await crd_updates(double.url, tag)
    codes = [step[1] for step in real]
    assert codes == [201, 422, 422, 422, 201, 422, 422, 200, 200, 422, 200, 422], real
    for mine, theirs in zip(fake, real, strict=True):
        if theirs[1] < 300:
            assert mine[:2] == theirs[:2], (mine, theirs)  # (a success's body differs: status, metadata)
        else:
            assert mine == theirs


class HoldingProxy:
    """A TCP proxy on loopback in front of the API server (TLS passes through): ``hold_first`` stops
    forwarding the server's bytes on the first connection (a proxy holding it: the client's TCP stays alive,
    nothing more arrives), while the others are forwarded as before."""

    def __init__(self, target: str) -> None:
        u = urlsplit(target)
        self.host, self.port = u.hostname or "127.0.0.1", u.port or 443
        self.server: asyncio.AbstractServer | None = None
        self.open: list[asyncio.Event] = []  # per connection: set while its server bytes are forwarded
        self.writers: list[asyncio.StreamWriter] = []  # per connection: the client's side
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
        return f"https://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    def hold_first(self) -> None:
        """Hold the first connection made (the reflector's list and then, on the same kept-alive
        connection, its watch); the later ones (the probes', kept alive in the pool) go on."""
        self.open[0].clear()

    def cut_first(self) -> None:
        """Close the first connection on the client's side (a FIN: a proxy's idle timeout ending it)."""
        self.writers[0].close()

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection(self.host, self.port)
        flowing = asyncio.Event()
        flowing.set()
        self.open.append(flowing)
        self.writers.append(writer)

        async def pump(
            src: asyncio.StreamReader, dst: asyncio.StreamWriter, gate: asyncio.Event | None
        ) -> None:
            try:
                while data := await src.read(65536):
                    if gate is not None:
                        await gate.wait()
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        for t in (asyncio.create_task(pump(reader, up_w, None)),
                  asyncio.create_task(pump(up_r, writer, flowing))):  # fmt: skip
            self.tasks.add(t)
            t.add_done_callback(self.tasks.discard)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for t in list(self.tasks):
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def test_a_limit_1_lists_resource_version_is_the_clusters_and_a_watch_from_it_replays_its_own(
    server: tuple[str, str],
) -> None:
    """k8s17: what the probe's catch-up check rests on, read from the real server. A ``limit=1`` list's
    resourceVersion is etcd's global revision (a ConfigMap write moves a pod list's), so it moving past a
    watch's is no sign of a stuck watch by itself; a watch from the older resourceVersion replays nothing
    when only other kinds changed (the server ends it at its timeoutSeconds) and the selection's own change
    at once."""
    kubeconfig = server[1]
    ns = f"kvg-{uuid.uuid4().hex[:8]}"
    k = Kubectl(kubeconfig, ns)
    await k.run("create", "namespace", ns)
    await k.run("create", "-f", "-", stdin=pod("p0"))
    async with await KubeClient.connect(kubeconfig=kubeconfig) as client:
        path = f"/api/v1/namespaces/{ns}/pods"
        first = await client.request("GET", path, {"limit": 1})
        r0 = int(first["metadata"]["resourceVersion"])
        cm = json.loads(await k.run("create", "configmap", "c", "--from-literal=k=v", "-o", "json"))
        moved = await client.request("GET", path, {"limit": 1})
        assert int(moved["metadata"]["resourceVersion"]) >= int(cm["metadata"]["resourceVersion"]) > r0
        assert moved["items"][0]["metadata"] == first["items"][0]["metadata"]  # (the pod unchanged)

        async def replayed() -> list[tuple[str, str]]:
            q = {"watch": "true", "resourceVersion": str(r0), "timeoutSeconds": 1}
            resp = await client.open("GET", path, q, timeout_s=aiohttp.ClientTimeout(total=20))
            async with resp:
                assert resp.status == 200
                lines = (await resp.read()).splitlines()
            return [(e["type"], e["object"]["metadata"]["resourceVersion"]) for e in map(json.loads, lines)]

        assert await replayed() == []  # (ended by the server at its timeoutSeconds, nothing of the pods)
        await k.run("label", "pod", "p0", "x=y")
        now = (await client.request("GET", f"{path}/p0"))["metadata"]["resourceVersion"]
        assert await replayed() == [("MODIFIED", now)]


async def test_a_watch_a_proxy_holds_is_found_by_the_probes_catch_up_check(server: tuple[str, str]) -> None:
    """k8s17: a reflector (injected time: probe after 60 s, 10 s timeout) reaches the real API server through
    a TCP proxy. Other kinds change: each probe is followed by a catch-up watch and nothing is relisted. Then
    the proxy holds the open watch and a pod is created: the probe (a new connection) is answered, its
    first object unchanged, the catch-up watch replays the new pod, and 10 s later the held watch still read
    nothing: relisted, the copy has the pod. Before, only the watch's client deadline (5-10 min) ended it."""
    url, kubeconfig = server
    ns = f"kvg-{uuid.uuid4().hex[:8]}"
    k = Kubectl(kubeconfig, ns)
    await k.run("create", "namespace", ns)
    await k.run("create", "-f", "-", stdin=pod("a"))
    proxy = HoldingProxy(url)
    ft = FakeTime()
    client = await KubeClient.connect(server=await proxy.start(), kubeconfig=kubeconfig)
    r = Reflector(client, POD, namespace=ns, clock=ft.clock, sleep=ft.sleep, seed=1, probe_after_s=60.0,
                  probe_timeout_s=10.0)  # fmt: skip
    r.start()
    try:
        await r.wait_synced(20.0)
        await until(lambda: r.watches >= 1 and ft.next_wake() is not None, "the watch open")
        await k.run("create", "configmap", "c", "--from-literal=k=v")
        await advance_to(ft, 60.0)
        await until(lambda: r.probes == 1, "the first probe credited")
        assert (r.catch_ups, r.missed, r.lists) == (1, 0, 1)
        proxy.hold_first()
        await k.run("create", "-f", "-", stdin=pod("b"))
        await advance_to(ft, 120.0)
        await until(lambda: r.catch_ups == 2, "the second catch-up check")
        assert r.lists == 1 and (ns, "b") not in r.items
        await advance_to(ft, 130.0)
        await until(lambda: r.lists == 2, "the relist")
        assert r.missed == 1 and (ns, "b") in r.items and r.stuck == 0
    finally:
        await r.stop()
        await client.close()
        await proxy.stop()


@pytest.mark.timeout(240)  # (~65 s: the cacher's bookmark minute is fixed in 1.20)
async def test_the_cachers_bookmarks_repeat_one_resource_version(server: tuple[str, str]) -> None:
    """k8s18, what the liveness probe's bookmark rule rests on, read from the real server: a pod labelled in
    *another* namespace moves the pods' resourceVersion past the quiet watch's start; the cacher bookmarks the
    watch about a minute after it opened with that resourceVersion (moved: a proof) and again 2 s before its
    timeoutSeconds (64 s here) with the same one (a repeat: no proof, the probe's silence runs on)."""
    kubeconfig = server[1]
    ns = f"kvg-{uuid.uuid4().hex[:8]}"
    other = f"{ns}-b"
    k, ko = Kubectl(kubeconfig, ns), Kubectl(kubeconfig, other)
    await k.run("create", "namespace", ns)
    await k.run("create", "namespace", other)
    await k.run("create", "-f", "-", stdin=pod("a"))
    await ko.run("create", "-f", "-", stdin=pod("b"))
    ft = FakeTime()
    client = await KubeClient.connect(kubeconfig=kubeconfig)
    r = Reflector(client, POD, namespace=ns, clock=ft.clock, sleep=ft.sleep, seed=1, probe_after_s=60.0,
                  probe_timeout_s=10.0)  # fmt: skip
    r._watch_timeout = lambda: 64  # type: ignore[method-assign]  # (bookmarks at ~60 s and 62 s)
    marks: list[int] = []  # the bookmarks' resourceVersions, as read
    on_event = r._on_event

    def recorded(ev: dict[str, Any]) -> None:
        if ev.get("type") == "BOOKMARK":
            marks.append(int(ev["object"]["metadata"]["resourceVersion"]))
        on_event(ev)

    r._on_event = recorded  # type: ignore[method-assign]
    r.start()
    try:
        await r.wait_synced(20.0)
        await until(lambda: r.watches >= 1 and ft.next_wake() is not None, "the watch open")
        moved = json.loads(await ko.run("label", "pod", "b", "n=0", "-o", "json"))
        await until(lambda: len(marks) >= 2, "the cacher's two bookmarks", within_s=80.0)
        # (the type's last resourceVersion: the label's, or a later pod change anywhere in the cluster)
        assert marks[0] >= int(moved["metadata"]["resourceVersion"]) and marks[1] == marks[0], marks
        assert r.resource_version == str(marks[0])
        assert r.bookmarks_repeated == 1 and r.proofs == 1 and r.probes == 0 and r.lists == 1
    finally:
        await r.stop()
        await client.close()


# The 1.20 cacher (``watch_cache.go``) keeps a type's events while the oldest is under ``eventFreshDuration``
# old (75 s, a constant), doubling its capacity (100 at first, up to 102,400) rather than drop a fresher one:
# a resourceVersion is evicted only by writes that come when the events after it are 75 s old. Its size is
# no flag's since 1.19 (``--watch-cache-sizes`` only turns a cache off: "Dropping watch-cache-size for pods -
# watchCache size is now dynamic"). A second server with ``--watch-cache=false`` and etcd compacted by hand
# would answer 410 at once, but from etcd, not from the cacher that production watches read.
CACHER_FRESH_S = 75.0


@pytest.mark.timeout(300)  # (~90 s: the cacher's 75 s)
async def test_a_watch_resumed_past_the_cachers_window_is_answered_410_and_relists(
    server: tuple[str, str],
) -> None:
    """session 18's closing note: the watch's 410 Gone path was tested on the double only. Here the real
    cacher evicts the resourceVersion: a reflector reads a pod's creation on its watch (through a TCP proxy),
    then the proxy holds that watch while pod ``b`` is created (missed); 75 s later pods in another namespace
    are labelled until a watch from the reflector's resourceVersion is answered 410 (the cacher's window has
    passed it), and the proxy closes the held watch: the reflector watches again from its resourceVersion,
    is answered 410 (``gone``), relists and has ``b``."""
    url, kubeconfig = server
    ns = f"kvg-{uuid.uuid4().hex[:8]}"
    other = f"{ns}-w"
    k, ko = Kubectl(kubeconfig, ns), Kubectl(kubeconfig, other)
    await k.run("create", "namespace", ns)
    await ko.run("create", "namespace", other)
    await k.run("create", "-f", "-", stdin=pod("a"))
    await ko.run("create", "-f", "-", stdin=pod("w"))
    proxy = HoldingProxy(url)
    ft = FakeTime()  # (no probe runs: the clock stays at 0)
    client = await KubeClient.connect(server=await proxy.start(), kubeconfig=kubeconfig)
    direct = await KubeClient.connect(kubeconfig=kubeconfig)
    r = Reflector(client, POD, namespace=ns, clock=ft.clock, sleep=ft.sleep, seed=1, probe_after_s=60.0,
                  probe_timeout_s=10.0)  # fmt: skip
    r.start()
    try:
        await r.wait_synced(20.0)
        await until(lambda: r.watches >= 1, "the watch open")
        await k.run("create", "-f", "-", stdin=pod("a2"))
        await until(lambda: (ns, "a2") in r.items, "a2 read on the watch")
        since = r.resource_version
        assert since is not None
        proxy.hold_first()
        await k.run("create", "-f", "-", stdin=pod("b"))
        await asyncio.sleep(CACHER_FRESH_S + 2)
        path = f"/api/v1/namespaces/{ns}/pods"

        async def expired() -> bool:
            q = {"watch": "true", "resourceVersion": since, "timeoutSeconds": 1}
            resp = await direct.open("GET", path, q, timeout_s=aiohttp.ClientTimeout(total=20))
            async with resp:
                if resp.status == 410:
                    return True
                first = (await resp.read()).split(b"\n", 1)[0]
            ev = json.loads(first) if first.strip() else {}
            return ev.get("type") == "ERROR" and ev["object"].get("code") == 410

        assert not await expired()  # (still in the window: the cacher replays b)
        writes = 0
        while not await expired():
            assert writes < 3000, "the cacher kept the resourceVersion through 3000 writes"
            for _ in range(50):
                writes += 1
                patch = {"metadata": {"labels": {"n": str(writes)}}}
                await direct.request("PATCH", f"/api/v1/namespaces/{other}/pods/w", body=patch,
                                     content_type="application/merge-patch+json")  # fmt: skip
        print(f"the cacher's window passed {since} after {writes} writes")  # (shown with -s)
        assert r.lists == 1 and (ns, "b") not in r.items and r.gone == 0
        proxy.cut_first()
        await until(lambda: r.lists == 2, "the relist after the 410", within_s=30.0)
        assert r.gone == 1 and (ns, "b") in r.items, (r.gone, r.unproven, r.missed)
    finally:
        await r.stop()
        await client.close()
        await direct.close()
        await proxy.stop()
