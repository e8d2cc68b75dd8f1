"""InferencePool discovery against the double: pods to endpoints, live pool changes, drain, objectives."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from kvgate.config.gateway import RewriteRule
from kvgate.datalayer.store import EndpointStore
from kvgate.k8s import resources as R
from kvgate.k8s.apiserver import ApiServerDouble
from kvgate.k8s.client import KubeClient
from kvgate.k8s.discovery import ACTIVE_PORTS, PoolDiscovery

from .conftest import Kubectl, pod_yaml

POOL = {"apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool", "metadata": {"name": "llm"},
        "spec": {"selector": {"matchLabels": {"app": "vllm"}}, "targetPorts": [{"number": 8000}],
                 "endpointPickerRef": {"name": "llm-epp", "port": {"number": 9002},
                                       "failureMode": "FailOpen"}}}  # fmt: skip


def _pod(double: ApiServerDouble, name: str, ip: str, ready: bool = True, **extra: dict) -> None:
    meta = {"name": name, "labels": {"app": "vllm"}, **extra}
    double.create({"apiVersion": "v1", "kind": "Pod", "metadata": meta,
                   "spec": {"containers": [{"name": "c", "image": "x"}]}})  # fmt: skip
    double.set_pod_status(name, ip=ip, ready=ready)


async def _until(cond: Callable[[], bool], within_s: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + within_s
    while not cond():
        if loop.time() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


class Policy:
    objectives: dict[str, int] = {}
    rewrites: list[RewriteRule] = []

    def __call__(self, objectives: dict[str, int], rewrites: list[RewriteRule]) -> None:
        self.objectives, self.rewrites = objectives, rewrites


@pytest.fixture
async def disc(double: ApiServerDouble, kube: KubeClient) -> AsyncIterator[PoolDiscovery]:
    store = EndpointStore()
    d = PoolDiscovery(kube, store, pool_name="llm", namespace="default", on_policy=Policy())
    yield d
    await d.stop()


def addrs(d: PoolDiscovery) -> set[str]:
    return {e.address for e in d.store.all()}


async def test_ready_pods_times_target_ports(double: ApiServerDouble, disc: PoolDiscovery) -> None:
    double.create(POOL)
    _pod(double, "a", "10.0.0.1")
    _pod(double, "b", "10.0.0.2", ready=False)
    double.create({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": "other", "labels": {"app": "else"}}})  # fmt: skip
    double.set_pod_status("other", ip="10.0.0.9", ready=True)
    disc.start()
    await disc.wait_synced()
    assert disc.ready and disc.pool is not None and disc.pool.failure_mode == "FailOpen"
    assert addrs(disc) == {"10.0.0.1:8000"}
    double.set_pod_status("b", ready=True)
    await _until(lambda: addrs(disc) == {"10.0.0.1:8000", "10.0.0.2:8000"})
    # Two data-parallel ranks per pod: every podIP x port is an endpoint; a pool change applies live.
    double.patch(
        R.INFERENCE_POOL, "llm", "default", {"spec": {"targetPorts": [{"number": 8000}, {"number": 8001}]}}
    )
    await _until(lambda: len(addrs(disc)) == 4)
    # The active-ports annotation restricts one pod's ports.
    double.patch(R.POD, "a", "default", {"metadata": {"annotations": {ACTIVE_PORTS: "8001"}}})
    await _until(lambda: addrs(disc) == {"10.0.0.1:8001", "10.0.0.2:8000", "10.0.0.2:8001"})
    # A selector change drops pods that no longer match.
    double.patch(R.POD, "b", "default", {"metadata": {"labels": {"app": "moved"}}})
    await _until(lambda: addrs(disc) == {"10.0.0.1:8001"})
    assert disc.ready_pods() == 1


@pytest.mark.parametrize("store_pool", [None, "mistral"], ids=["same-name", "named-apart"])
async def test_a_pool_change_drops_pods_whatever_the_gateway_calls_the_pool(
    double: ApiServerDouble, kube: KubeClient, store_pool: str | None
) -> None:
    """The gateway's pool may be named apart from its InferencePool (docs/gateway.md's example): its
    endpoints carry the gateway's name, so a selector change, a port change and the pool's delete all take
    the old pods out (review s20-qa H1: they carried the InferencePool's name, which the store's sync by the
    gateway's name never removed: traffic kept going to pods the pool no longer selects)."""
    store = EndpointStore()
    d = PoolDiscovery(kube, store, pool_name="llm", namespace="default", store_pool=store_pool)
    try:
        double.create(POOL)
        _pod(double, "a", "10.0.0.1")
        d.start()
        await d.wait_synced()
        await _until(lambda: addrs(d) == {"10.0.0.1:8000"})
        assert {e.pool for e in store.all()} == {store_pool or "llm"}
        double.patch(R.INFERENCE_POOL, "llm", "default", {"spec": {"targetPorts": [{"number": 8001}]}})
        await _until(lambda: addrs(d) == {"10.0.0.1:8001"})
        selector = {"spec": {"selector": {"matchLabels": {"app": "x"}}}}
        double.patch(R.INFERENCE_POOL, "llm", "default", selector)
        await _until(lambda: addrs(d) == set())
        selector = {"spec": {"selector": {"matchLabels": {"app": "vllm"}}}}
        double.patch(R.INFERENCE_POOL, "llm", "default", selector)
        await _until(lambda: addrs(d) == {"10.0.0.1:8001"})
        double.delete(R.INFERENCE_POOL, "llm")
        await _until(lambda: addrs(d) == set())
    finally:
        await d.stop()


async def test_engine_label_picks_the_metric_mapping(double: ApiServerDouble, disc: PoolDiscovery) -> None:
    double.create(POOL)
    _pod(double, "s", "10.0.0.3", labels={"app": "vllm", "inference.networking.k8s.io/engine-type": "sglang"})
    disc.start()
    await disc.wait_synced()
    await _until(lambda: len(addrs(disc)) == 1)
    assert disc.store.all()[0].engine == "sglang"


async def test_terminating_pod_leaves_at_once(double: ApiServerDouble, disc: PoolDiscovery) -> None:
    double.create(POOL)
    _pod(double, "a", "10.0.0.1", finalizers=["test/hold"])
    _pod(double, "b", "10.0.0.2")
    disc.start()
    await disc.wait_synced()
    await _until(lambda: len(addrs(disc)) == 2)
    double.delete(R.POD, "a")  # held by the finalizer: Ready, addressed, but terminating
    await _until(lambda: addrs(disc) == {"10.0.0.2:8000"})


async def test_missing_pool_and_rbac_errors_make_it_unready(
    double: ApiServerDouble, disc: PoolDiscovery
) -> None:
    double.forbid(R.POD)
    disc.start()
    await _until(lambda: (disc.problem() or "").startswith("pods.core/v1 in default: 403 Forbidden"))
    double.forbid(R.POD, False)
    await _until(
        lambda: disc.problem() == "InferencePool default/llm not found in inference.networking.k8s.io/v1"
    )
    double.create(POOL)
    await _until(lambda: disc.ready)


async def test_objectives_and_rewrites_current_group_wins(
    double: ApiServerDouble, disc: PoolDiscovery, caplog: pytest.LogCaptureFixture
) -> None:
    double.create(POOL)
    pool_ref = {"group": "inference.networking.k8s.io", "kind": "InferencePool", "name": "llm"}
    for group, prio in ((R.LEGACY_GROUP, 1), (R.OBJECTIVE_GROUP, 5)):
        spec = {"priority": prio, "poolRef": pool_ref}
        double.create({"apiVersion": f"{group}/v1alpha2", "kind": "InferenceObjective",
                       "metadata": {"name": "chat"}, "spec": spec})  # fmt: skip
    double.create({"apiVersion": f"{R.LEGACY_GROUP}/v1alpha2", "kind": "InferenceObjective",
                   "metadata": {"name": "batch"}, "spec": {"priority": -1, "poolRef": pool_ref}})  # fmt: skip
    double.create({"apiVersion": f"{R.OBJECTIVE_GROUP}/v1alpha2", "kind": "InferenceObjective",
                   "metadata": {"name": "elsewhere"},
                   "spec": {"priority": 9, "poolRef": {**pool_ref, "name": "other"}}})  # fmt: skip
    rule = {
        "matches": [{"model": {"type": "Exact", "value": "llama"}}],
        "targets": [{"modelRewrite": "llama-v2", "weight": 90}, {"modelRewrite": "llama-v3", "weight": 10}],
    }
    spec2 = {"poolRef": pool_ref, "rules": [rule]}
    double.create({"apiVersion": f"{R.OBJECTIVE_GROUP}/v1alpha2", "kind": "InferenceModelRewrite",
                   "metadata": {"name": "canary"}, "spec": spec2})  # fmt: skip
    policy = disc.on_policy
    assert isinstance(policy, Policy)
    disc.start()
    await _until(lambda: policy.objectives == {"chat": 5, "batch": -1} and len(policy.rewrites) == 1)
    assert [t.model for t in policy.rewrites[0].targets] == ["llama-v2", "llama-v3"]
    assert "deprecated group inference.networking.x-k8s.io" in caplog.text
    double.delete(R.INFERENCE_OBJECTIVE, "chat")  # the legacy one shows through again
    await _until(lambda: policy.objectives == {"chat": 1, "batch": -1})


async def test_kubectl_drives_discovery(
    double: ApiServerDouble, disc: PoolDiscovery, kubectl: Kubectl
) -> None:
    double.create(POOL)
    disc.start()
    await disc.wait_synced()
    for i in range(3):
        await kubectl.run("create", "-f", "-", stdin=pod_yaml(f"p{i}"))
        status = f'{{"status":{{"podIP":"10.1.0.{i}","conditions":[{{"type":"Ready","status":"True"}}]}}}}'
        await kubectl.run("patch", "pod", f"p{i}", "--subresource=status", "--type=merge", "-p", status)
    await _until(lambda: len(addrs(disc)) == 3)
    await kubectl.run("delete", "pod", "p1")
    await _until(lambda: addrs(disc) == {"10.1.0.0:8000", "10.1.0.2:8000"})
