"""qa27 Q6: ``inference_pool_per_pod_queue_size{model_server_pod}`` names a discovered pod's endpoint as
the reference does, not by its ``ip:port``.

The reference labels the series with its endpoint's name (pkg/epp/metrics/collectors/inference_pool.go:
``GetMetadata().NamespacedName.Name``), which its datastore makes ``<pod>-rank-<i>``, i the port's index
among the pool's targetPorts (so two ports of one pod stay two series); a pod IP changes at each restart.
On 6782b99d kvgate's discovery kept only the pod's labels and the series said ``10.1.2.3:8000``. Static
endpoints have no pod: their address stays the label; llm-d's ``model_server_endpoint`` stays the address.
"""

from __future__ import annotations

import time

from prometheus_client import REGISTRY

from kvgate.config.director import build_director
from kvgate.datalayer.store import EndpointStore, make_endpoint
from kvgate.k8s.discovery import PoolSpec, pod_endpoints

READY = {"podIP": "10.1.2.3", "phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}


def _pod(name: str, ip: str = "10.1.2.3", annotations: dict[str, str] | None = None) -> dict[str, object]:
    meta: dict[str, object] = {"name": name, "namespace": "ns", "labels": {"app": "vllm"}}
    if annotations:
        meta["annotations"] = annotations
    return {"metadata": meta, "status": {**READY, "podIP": ip}}


def _series(pool: str, family: str, label: str) -> dict[str, float]:
    return {
        s.labels[label]: s.value
        for f in REGISTRY.collect()
        if f.name == family
        for s in f.samples
        if s.labels.get("name") == pool
    }


def _show(director: object, store: EndpointStore, queues: dict[str, int]) -> None:
    now = time.monotonic()
    for ep in store.all():
        ep.metrics.waiting_queue_size = queues.get(ep.address, 0)
        ep.metrics.updated_at = now
        ep.answered_at = now
    director.update_pool_metrics()  # type: ignore[attr-defined]


def test_a_discovered_pods_queue_is_labelled_with_the_references_endpoint_name() -> None:
    spec = PoolSpec("qa27q6a", "ns", {"app": "vllm"}, (8000,))
    store = EndpointStore(pod_endpoints(_pod("vllm-llama-7d9f-abcde"), spec))
    store.add(make_endpoint("10.9.9.9:8000", pool="qa27q6a"))  # a static endpoint: its address
    director = build_director("reference", store, clock=time.monotonic, seed=0, pool="qa27q6a")
    _show(director, store, {"10.1.2.3:8000": 4, "10.9.9.9:8000": 1})
    assert _series("qa27q6a", "inference_pool_per_pod_queue_size", "model_server_pod") == {
        "vllm-llama-7d9f-abcde-rank-0": 4.0,
        "10.9.9.9:8000": 1.0,
    }
    assert _series("qa27q6a", "llm_d_epp_per_endpoint_queue_size", "model_server_endpoint") == {
        "10.1.2.3:8000": 4.0,
        "10.9.9.9:8000": 1.0,
    }


def test_two_ports_are_two_ranks_and_a_restarted_pod_keeps_its_series() -> None:
    spec = PoolSpec("qa27q6b", "ns", {"app": "vllm"}, (8000, 8001, 8002))
    # Only 8000 and 8002 active: the ranks stay the ports' indexes among targetPorts.
    pod = _pod("vllm-0", annotations={"inference.networking.k8s.io/active-ports": "8000,8002"})
    eps = pod_endpoints(pod, spec)
    assert [(e.address, e.name) for e in eps] == [
        ("10.1.2.3:8000", "vllm-0-rank-0"),
        ("10.1.2.3:8002", "vllm-0-rank-2"),
    ]
    store = EndpointStore(eps)
    director = build_director("reference", store, clock=time.monotonic, seed=0, pool="qa27q6b")
    _show(director, store, {"10.1.2.3:8000": 2, "10.1.2.3:8002": 3})
    assert _series("qa27q6b", "inference_pool_per_pod_queue_size", "model_server_pod") == {
        "vllm-0-rank-0": 2.0,
        "vllm-0-rank-2": 3.0,
    }
    # A StatefulSet pod back under its name at a new IP: its series goes on, the old address's goes.
    store.sync(
        pod_endpoints(_pod("vllm-0", ip="10.1.2.4"), PoolSpec("qa27q6b", "ns", {"app": "vllm"}, (8000,)))
    )
    _show(director, store, {"10.1.2.4:8000": 5})
    assert _series("qa27q6b", "inference_pool_per_pod_queue_size", "model_server_pod") == {
        "vllm-0-rank-0": 5.0
    }
    assert _series("qa27q6b", "llm_d_epp_per_endpoint_queue_size", "model_server_endpoint") == {
        "10.1.2.4:8000": 5.0
    }
