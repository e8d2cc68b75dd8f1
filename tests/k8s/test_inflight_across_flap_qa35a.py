"""qa35a F1: an endpoint that leaves the pool and comes back while this picker's requests still run there
keeps counting them. Discovery removes the endpoint (pod NotReady, the selector dropping it, the
InferencePool deleted) and builds a fresh one when it returns; the in-flight count lived on the endpoint
object, so the returned endpoint counted 0 and flow control's concurrency gate (and the picker) let
``maxConcurrency`` more requests onto a server still running the old ones (the QA saw 4 run at 2, on a
real kube-apiserver; here the API-server double, the same discovery code). Failed before the fix: the
returned endpoint's ``inflight.requests`` was 0 and the gate open."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from kvgate.config.director import build_director
from kvgate.datalayer.store import EndpointStore
from kvgate.k8s import resources as R
from kvgate.k8s.apiserver import ApiServerDouble
from kvgate.k8s.client import KubeClient
from kvgate.k8s.discovery import PoolDiscovery
from kvgate.scheduling.types import InferenceRequest

from .test_discovery import POOL, Policy, _pod, _until

CFG: dict[str, Any] = {
    "featureGates": ["flowControl"],
    "saturationDetector": {"type": "concurrency-detector", "parameters": {"maxConcurrency": 2}},
    "plugins": [{"type": "queue-scorer"}],
    "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": "queue-scorer"}]}],
}
ADDR = "10.0.0.1:8000"


def _not_ready(double: ApiServerDouble) -> None:
    double.set_pod_status("a", ready=False)


def _ready(double: ApiServerDouble) -> None:
    double.set_pod_status("a", ready=True)


def _selector_off(double: ApiServerDouble) -> None:
    double.patch(R.INFERENCE_POOL, "llm", "default", {"spec": {"selector": {"matchLabels": {"app": "none"}}}})


def _selector_on(double: ApiServerDouble) -> None:
    double.patch(R.INFERENCE_POOL, "llm", "default", {"spec": {"selector": {"matchLabels": {"app": "vllm"}}}})


def _pool_deleted(double: ApiServerDouble) -> None:
    double.delete(R.INFERENCE_POOL, "llm", "default")


def _pool_created(double: ApiServerDouble) -> None:
    double.create(POOL)


Step = Callable[[ApiServerDouble], None]


@pytest.mark.parametrize(
    ("leave", "back"),
    [(_not_ready, _ready), (_selector_off, _selector_on), (_pool_deleted, _pool_created)],
    ids=["readiness", "selector", "pool"],
)
async def test_requests_running_at_a_flap_still_count_when_the_endpoint_returns(
    double: ApiServerDouble, kube: KubeClient, leave: Step, back: Step
) -> None:
    store = EndpointStore()
    disc = PoolDiscovery(kube, store, pool_name="llm", namespace="default", on_policy=Policy())
    d = build_director(CFG, store, flow_metrics=False)
    try:
        double.create(POOL)
        _pod(double, "a", "10.0.0.1")
        disc.start()
        await disc.wait_synced()
        await _until(lambda: ADDR in store)
        first = store.get(ADDR)
        assert first is not None
        running = [InferenceRequest(f"long{i}", "m", prompt_tokens=10, max_tokens=700) for i in range(2)]
        for r in running:
            assert d.pick(r).primary is first
            d.on_dispatched(r, first)
            d.on_first_token(r, first)
        queued = InferenceRequest("short", "m", prompt_tokens=10, max_tokens=4)
        assert d.saturated(queued)  # the gate of 2 is full
        leave(double)
        await _until(lambda: ADDR not in store)
        back(double)
        await _until(lambda: ADDR in store)
        again = store.get(ADDR)
        assert again is not None and again is not first  # (rebuilt by discovery, as before the fix)
        assert again.inflight.requests == 2 and again.inflight.decoding == 2
        assert d.saturated(queued), "the two running requests no longer count: the gate lets more run"
        # Their finishes (the doors hold the endpoint they dispatched to) count down on the returned one.
        for r in running:
            d.on_finished(r, first, None, True)
        assert (again.inflight.requests, again.inflight.decoding, again.inflight.calls) == (0, 0, 0)
        assert not d.saturated(queued)
    finally:
        await disc.stop()
