"""The API-server double speaks the wire protocol: checked with raw HTTP, kubernetes-asyncio and kubectl."""

from __future__ import annotations

import asyncio
import subprocess

import aiohttp
import orjson
import pytest

from kvgate.k8s import resources as R
from kvgate.k8s.apiserver import ApiServerDouble
from kvgate.k8s.client import KubeClient, KubeError

from .conftest import KUBECTL, Kubectl, pod_yaml


def _pod(name: str, **labels: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels or {"app": "a"}},
            "spec": {"containers": [{"name": "c", "image": "x"}]}}  # fmt: skip


async def test_discovery(double: ApiServerDouble, kube: KubeClient) -> None:
    api = await kube.request("GET", "/api")
    assert api["versions"] == ["v1"]
    groups = {g["name"] for g in (await kube.request("GET", "/apis"))["groups"]}
    assert {"coordination.k8s.io", "inference.networking.k8s.io", "llm-d.ai"} <= groups
    res = await kube.request("GET", "/apis/inference.networking.k8s.io/v1")
    assert {r["name"] for r in res["resources"]} >= {"inferencepools", "inferencepools/status"}
    index = await kube.request("GET", "/openapi/v3")
    assert "apis/coordination.k8s.io/v1" in index["paths"]


async def test_list_pages_with_continue(double: ApiServerDouble, kube: KubeClient) -> None:
    for i in range(7):
        double.create(_pod(f"p{i}"))
    names, cont, rvs = [], None, set()
    while True:
        q = {"limit": 3, **({"continue": cont} if cont else {})}
        page = await kube.request("GET", "/api/v1/namespaces/default/pods", q)
        names += [p["metadata"]["name"] for p in page["items"]]
        rvs.add(page["metadata"]["resourceVersion"])
        cont = page["metadata"].get("continue")
        if not cont:
            break
    assert names == [f"p{i}" for i in range(7)]
    assert len(rvs) == 1  # every page reports the list's resourceVersion


async def test_conflict_on_stale_resource_version(double: ApiServerDouble, kube: KubeClient) -> None:
    created = await kube.request("POST", "/api/v1/namespaces/default/pods", body=_pod("p"))
    with pytest.raises(KubeError) as e:
        await kube.request("POST", "/api/v1/namespaces/default/pods", body=_pod("p"))
    assert e.value.status == 409 and e.value.reason == "AlreadyExists"
    created["metadata"]["labels"] = {"app": "b"}
    updated = await kube.request("PUT", "/api/v1/namespaces/default/pods/p", body=created)
    assert int(updated["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])
    with pytest.raises(KubeError) as e:  # the same stale resourceVersion again
        await kube.request("PUT", "/api/v1/namespaces/default/pods/p", body=created)
    assert e.value.status == 409 and e.value.reason == "Conflict"


async def test_a_delete_with_a_stale_precondition_is_a_conflict(
    double: ApiServerDouble, kube: KubeClient
) -> None:
    """DeleteOptions ``preconditions`` (resourceVersion, uid): a mismatch is 409 Conflict and the object
    stays, as the real API server; the current ones delete it."""
    path = "/api/v1/namespaces/default/pods/p"
    created = await kube.request("POST", "/api/v1/namespaces/default/pods", body=_pod("p"))
    rv, uid = created["metadata"]["resourceVersion"], created["metadata"]["uid"]
    double.patch(R.POD, "p", "default", {"metadata": {"labels": {"app": "b"}}})  # a write in between
    for pre in ({"resourceVersion": rv}, {"uid": "not-its-uid"}):
        with pytest.raises(KubeError) as e:
            await kube.request("DELETE", path, body={"kind": "DeleteOptions", "apiVersion": "v1",
                                                     "preconditions": pre})  # fmt: skip
        assert e.value.status == 409 and e.value.reason == "Conflict"
        assert "Precondition failed" in e.value.message
    current = double.get(R.POD, "p", "default")["metadata"]["resourceVersion"]
    await kube.request("DELETE", path, body={"preconditions": {"resourceVersion": current, "uid": uid}})
    with pytest.raises(KubeError) as e:
        await kube.request("GET", path)
    assert e.value.status == 404


async def test_watch_streams_events_and_bookmarks_then_410_after_compaction(double: ApiServerDouble) -> None:
    rv = double.create(_pod("a"))["metadata"]["resourceVersion"]
    url = f"{double.url}/api/v1/namespaces/default/pods"
    async with aiohttp.ClientSession() as http:
        q = {"watch": "true", "resourceVersion": rv, "allowWatchBookmarks": "true", "timeoutSeconds": "3"}
        async with http.get(url, params=q) as resp:
            assert resp.status == 200
            double.create(_pod("b"))
            double.delete(R.POD, "a")
            events = []
            async for line in resp.content:
                ev = orjson.loads(line)
                events.append((ev["type"], ev["object"]["metadata"].get("name")))
                if ev["type"] == "BOOKMARK":
                    break
        assert events[:2] == [("ADDED", "b"), ("DELETED", "a")]
        assert events[-1][0] == "BOOKMARK"
        double.compact()
        async with http.get(url, params={**q, "resourceVersion": rv}) as resp:
            ev = orjson.loads(await resp.content.readline())
        assert ev["type"] == "ERROR" and ev["object"]["code"] == 410


async def test_finalizer_holds_a_deleted_object_with_deletion_timestamp(double: ApiServerDouble) -> None:
    pod = _pod("p")
    pod["metadata"]["finalizers"] = ["test/hold"]
    double.create(pod)
    held = double.delete(R.POD, "p")
    assert held["metadata"]["deletionTimestamp"]
    assert double.get(R.POD, "p")["metadata"]["deletionTimestamp"]
    double.patch(R.POD, "p", "default", {"metadata": {"finalizers": None}})
    assert double.objects(R.POD) == []


async def test_forbidden_is_a_403_status(double: ApiServerDouble, kube: KubeClient) -> None:
    double.forbid(R.POD)
    with pytest.raises(KubeError) as e:
        await kube.request("GET", "/api/v1/namespaces/default/pods")
    assert e.value.status == 403 and "cannot get resource" in e.value.message


async def test_go_away_refuses_and_resets_then_come_back_serves_the_same_store(
    double: ApiServerDouble, kube: KubeClient
) -> None:
    """The double's outage (test_staleness.py): the open watch and the kept-alive connection are reset,
    new connections are refused, and after ``come_back`` the same port serves the objects made meanwhile."""
    double.create(_pod("a"))
    await kube.request("GET", "/api/v1/namespaces/default/pods")  # leaves a kept-alive connection
    resp = await kube.open("GET", "/api/v1/namespaces/default/pods", {"watch": "true"})
    port = double.port
    await double.go_away()
    with pytest.raises(aiohttp.ClientError):
        async with resp:
            await resp.read()  # (a few events, then the reset)
    with pytest.raises((aiohttp.ClientError, OSError)):
        await kube.request("GET", "/api/v1/namespaces/default/pods")
    with pytest.raises(OSError):  # refused: nothing listens
        await asyncio.open_connection("127.0.0.1", port)
    double.create(_pod("b"))
    await double.come_back()
    assert double.port == port
    pods = await kube.request("GET", "/api/v1/namespaces/default/pods")
    assert sorted(p["metadata"]["name"] for p in pods["items"]) == ["a", "b"]


async def test_a_created_crd_serves_its_resource(double: ApiServerDouble, kube: KubeClient) -> None:
    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": "widgets.example.com"},
           "spec": {"group": "example.com", "scope": "Namespaced",
                    "names": {"kind": "Widget", "plural": "widgets"},
                    "versions": [{"name": "v1", "served": True, "storage": True}]}}  # fmt: skip
    await kube.request("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", body=crd)
    w = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"n": 1}}
    await kube.request("POST", "/apis/example.com/v1/namespaces/default/widgets", body=w)
    got = await kube.request("GET", "/apis/example.com/v1/namespaces/default/widgets/w")
    assert got["spec"] == {"n": 1}


# -- the real kubectl --------------------------------------------------------------------------------


async def test_kubectl_create_get_label_patch_apply_delete(double: ApiServerDouble, kubectl: Kubectl) -> None:
    out = await kubectl.run("create", "-f", "-", stdin=pod_yaml("p1"))
    assert "pod/p1 created" in out
    await kubectl.run("label", "pod", "p1", "tier=a")
    status = (
        '{"status":{"podIP":"10.0.0.5","phase":"Running","conditions":[{"type":"Ready","status":"True"}]}}'
    )
    await kubectl.run("patch", "pod", "p1", "--subresource=status", "--type=merge", "-p", status)
    table = await kubectl.run("get", "pods", "-o", "wide")
    assert "p1" in table and "1/1" in table and "Running" in table and "10.0.0.5" in table
    await kubectl.run("apply", "-f", "-", stdin=pod_yaml("p2", {"app": "vllm", "v": "2"}))
    await kubectl.run("apply", "-f", "-", stdin=pod_yaml("p2", {"app": "vllm", "v": "3"}))
    assert double.get(R.POD, "p2")["metadata"]["labels"]["v"] == "3"
    assert double.get(R.POD, "p1")["metadata"]["labels"] == {"app": "vllm", "tier": "a"}
    pool = ("apiVersion: inference.networking.k8s.io/v1\nkind: InferencePool\nmetadata: {name: pool}\n"
            "spec: {selector: {matchLabels: {app: vllm}}, targetPorts: [{number: 8000}]}\n")  # fmt: skip
    await kubectl.run("apply", "-f", "-", stdin=pool)
    assert "pool" in await kubectl.run("get", "infpool")
    out = await kubectl.run("delete", "pod", "p1")
    assert 'pod "p1" deleted' in out
    assert [p["metadata"]["name"] for p in double.objects(R.POD)] == ["p2"]


async def test_kubectl_get_watch_sees_changes(double: ApiServerDouble, kubectl: Kubectl) -> None:
    assert KUBECTL is not None
    double.create(_pod("w1"))
    proc = await asyncio.create_subprocess_exec(
        KUBECTL, "--server", double.url, "get", "pods", "-w", "--no-headers",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        first = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert first.split()[0] == b"w1"
        await kubectl.run("create", "-f", "-", stdin=pod_yaml("w2"))
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert line.split()[0] == b"w2"
        double.set_pod_status("w2", ip="10.0.0.9", ready=True)
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert line.split()[:3] == [b"w2", b"1/1", b"Running"]
    finally:
        proc.terminate()
        await proc.wait()


async def test_kvgate_k8s_double_command_serves_kubectl(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import sys

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kvgate.cli", "k8s-double", stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert line.startswith("kvgate k8s-double ready http://127.0.0.1:")
        if KUBECTL is not None:
            out = await Kubectl(line.split()[-1], tmp_path).run("get", "namespaces")
            assert "default" in out and "kube-system" in out
    finally:
        proc.terminate()
        await proc.wait()
