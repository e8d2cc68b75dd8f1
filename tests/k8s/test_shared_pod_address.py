"""Review s22-qa F1, F2 (the QA's tests, and the other ways a pod gives an address up): two pods behind
one ip:port; a terminal (Failed/Succeeded) pod still counted.

Discovery keys endpoints by address and removes an address when *one* pod stops contributing it, though
another Ready pod still does (PoolDiscovery._on_pod: `self.store.remove(addr)` without asking whether another
pod holds `addr`); and a pod in phase Failed/Succeeded whose Ready condition still says True (an evicted
pod on kubelets before 1.25, which did not clear it) is an endpoint, where Kubernetes' own EndpointSlice
controller leaves terminal pods out (`ShouldPodBeInEndpoints`). Seen live against the real 1.20.2
kube-apiserver with kubectl (review s22-qa.md F1). These run against the API-server double (default suite).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from kvgate.datalayer.store import EndpointStore
from kvgate.k8s import resources as R
from kvgate.k8s.apiserver import ApiServerDouble
from kvgate.k8s.client import KubeClient
from kvgate.k8s.discovery import PoolDiscovery

POOL = {"apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool",
        "metadata": {"name": "llm"},
        "spec": {"selector": {"matchLabels": {"app": "vllm"}},
                 "targetPorts": [{"number": 8000}]}}  # fmt: skip


@pytest.fixture
async def double() -> AsyncIterator[ApiServerDouble]:
    async with ApiServerDouble(bookmark_interval=0.2) as d:
        yield d


@pytest.fixture
async def disc(double: ApiServerDouble) -> AsyncIterator[PoolDiscovery]:
    kube = await KubeClient.connect(server=double.url)
    d = PoolDiscovery(
        kube, EndpointStore(), pool_name="llm", namespace="default", on_policy=lambda o, r: None
    )
    try:
        yield d
    finally:
        await d.stop()
        await kube.close()


def _pod(double: ApiServerDouble, name: str, ip: str) -> None:
    double.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": "vllm"}},
                   "spec": {"containers": [{"name": "c", "image": "x"}]}})  # fmt: skip
    double.set_pod_status(name, ip=ip, ready=True)


def addrs(d: PoolDiscovery) -> set[str]:
    return {e.address for e in d.store.all()}


async def _until(cond: Callable[[], bool], what: str, within_s: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + within_s
    while not cond():
        assert loop.time() < end, f"not within {within_s} s: {what}"
        await asyncio.sleep(0.02)


async def _settle(double: ApiServerDouble, d: PoolDiscovery, marker: str) -> None:
    """Wait until every event before now was handled: a marker pod's endpoint appears after them."""
    _pod(double, marker, "10.9.9.9")
    await _until(lambda: "10.9.9.9:8000" in addrs(d), "marker pod seen")


async def test_a_ready_pod_keeps_its_address_when_another_pod_with_it_is_deleted(
    double: ApiServerDouble, disc: PoolDiscovery
) -> None:
    double.create(POOL)
    _pod(double, "a", "10.0.0.1")
    _pod(double, "b", "10.0.0.1")  # same address (IP reuse, hostNetwork)
    disc.start()
    await disc.wait_synced()
    await _until(lambda: addrs(disc) == {"10.0.0.1:8000"}, "the shared address")
    double.delete(R.POD, "a")
    await _settle(double, disc, "marker")
    # b is Ready with podIP 10.0.0.1 and counted as a ready pod, yet its endpoint is gone: no traffic.
    assert disc.ready_pods() == 2  # b and the marker
    assert "10.0.0.1:8000" in addrs(disc), "pod b is Ready at 10.0.0.1 but its endpoint was removed"


@pytest.mark.parametrize("phase", ["Failed", "Succeeded"])
async def test_a_failed_pod_is_not_an_endpoint_even_if_ready_still_says_true(
    double: ApiServerDouble, disc: PoolDiscovery, phase: str
) -> None:
    double.create(POOL)
    _pod(double, "a", "10.0.0.1")
    _pod(double, "b", "10.0.0.2")
    disc.start()
    await disc.wait_synced()
    await _until(lambda: addrs(disc) == {"10.0.0.1:8000", "10.0.0.2:8000"}, "both pods")
    # Evicted: phase Failed, the Ready condition left as it was (kubelets before 1.25).
    pod = double.get(R.POD, "a", "default")
    pod["status"]["phase"] = phase
    pod["status"]["reason"] = "Evicted"
    double.replace(R.POD, "a", "default", pod, status=True)
    await _settle(double, disc, "marker")
    assert "10.0.0.1:8000" not in addrs(disc), f"a {phase} pod still gets traffic"


def _tier(d: PoolDiscovery) -> str | None:
    ep = d.store.get("10.0.0.1:8000")
    return None if ep is None else ep.labels.get("tier")


def _edit(double: ApiServerDouble, name: str, change: Callable[[dict], None]) -> None:
    pod = double.get(R.POD, name, "default")
    change(pod)
    double.replace(R.POD, name, "default", pod)


def _relabel(pod: dict) -> None:
    pod["metadata"]["labels"] = {"app": "other"}


def _other_port(pod: dict) -> None:
    pod["metadata"]["annotations"] = {"inference.networking.k8s.io/active-ports": "8001"}


@pytest.mark.parametrize("how", ["not-ready", "relabelled", "port annotation"])
async def test_a_ready_pod_keeps_its_address_when_another_pod_gives_it_up(
    double: ApiServerDouble, disc: PoolDiscovery, how: str
) -> None:
    pool = {**POOL, "spec": {**POOL["spec"], "targetPorts": [{"number": 8000}, {"number": 8001}]}}
    double.create(pool)
    _pod(double, "a", "10.0.0.1")
    _pod(double, "b", "10.0.0.1")
    disc.start()
    await disc.wait_synced()
    await _until(lambda: addrs(disc) == {"10.0.0.1:8000", "10.0.0.1:8001"}, "the shared addresses")
    if how == "not-ready":
        double.set_pod_status("a", ready=False)
    elif how == "relabelled":
        _edit(double, "a", _relabel)
    else:
        _edit(double, "a", _other_port)
    await _settle(double, disc, "marker")
    assert {"10.0.0.1:8000", "10.0.0.1:8001"} <= addrs(disc), f"pod b lost an address when a was {how}"
    # and once b goes too, the address goes
    double.delete(R.POD, "b")
    await _until(lambda: "10.0.0.1:8000" not in addrs(disc), "the address leaves with its last pod")
    assert ("10.0.0.1:8001" in addrs(disc)) == (how == "port annotation")


async def test_the_shared_address_takes_the_labels_of_a_pod_that_still_provides_it(
    double: ApiServerDouble, disc: PoolDiscovery
) -> None:
    double.create(POOL)
    _pod(double, "a", "10.0.0.1")
    _edit(double, "a", lambda p: p["metadata"]["labels"].update(tier="a"))
    disc.start()
    await disc.wait_synced()
    await _until(lambda: addrs(disc) == {"10.0.0.1:8000"}, "pod a")
    _pod(double, "b", "10.0.0.1")
    _edit(double, "b", lambda p: p["metadata"]["labels"].update(tier="b"))
    await _until(lambda: _tier(disc) == "b", "b seen last")
    double.delete(R.POD, "b")
    await _until(lambda: _tier(disc) == "a", "the address kept, with a's labels")
    assert disc.ready_pods() == 1
