"""Review s22-hubqa (fixqa22 cc481bca): PoolDiscovery's per-address providers against a model.

Random pod transitions (add, Ready flip, relabel in/out of the selector, engine label, active-ports
annotation, podIP change, terminal phase, deletionTimestamp, delete), pool selector / targetPorts changes,
pool delete / re-create, watch events lost and a 410 relist that reconciles them (Reflector._reconcile,
the real code path). After every step: the store holds exactly the union of every pod's pod_endpoints
(the reflector's copy), each address's labels are a current provider's and, where the step's event was
for a pod providing it, that pod's; _providers / _pod_addrs are exact (bounded); ready_pods() counts the
pods providing something; no address is removed and re-added by one event (its state kept).
"""

from __future__ import annotations

import copy
import random
from typing import Any

import pytest

from kvgate.datalayer.store import EndpointStore, StoreChange
from kvgate.k8s.discovery import PoolDiscovery, pod_endpoints
from kvgate.k8s.reflector import key_of

Obj = dict[str, Any]


def _pool(rng: random.Random, rv: int) -> Obj:
    sel = rng.choice([{"app": "vllm"}, {"app": "vllm", "tier": "a"}, {"app": "sgl"}])
    ports = rng.sample([8000, 8001, 8002], rng.randint(1, 3))
    return {"apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool",
            "metadata": {"name": "llm", "namespace": "default", "resourceVersion": str(rv)},
            "spec": {"selector": {"matchLabels": sel},
                     "targetPorts": [{"number": p} for p in ports]}}  # fmt: skip


def _pod(rng: random.Random, name: str, rv: int) -> Obj:
    labels = {"app": rng.choice(["vllm", "vllm", "sgl"])}
    if rng.random() < 0.5:
        labels["tier"] = "a"
    if rng.random() < 0.4:
        labels["inference.networking.k8s.io/engine-type"] = rng.choice(["vllm", "sglang"])
    labels["gen"] = str(rv)  # every version's labels differ: which pod gave an address its labels shows
    meta: Obj = {"name": name, "namespace": "default", "resourceVersion": str(rv), "labels": labels}
    if rng.random() < 0.3:
        ports = rng.choice(["8000", "8001, 8002", "9"])
        meta["annotations"] = {"inference.networking.k8s.io/active-ports": ports}
    if rng.random() < 0.1:
        meta["deletionTimestamp"] = "2026-12-06T00:00:00Z"
    status: Obj = {"phase": rng.choice(["Running"] * 6 + ["Failed", "Succeeded", "Pending"])}
    if rng.random() < 0.9:
        status["podIP"] = rng.choice(["10.0.0.1", "10.0.0.2", "fd00::1"])
    status["conditions"] = [{"type": "Ready", "status": "True" if rng.random() < 0.75 else "False"}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "status": status}


def _check(d: PoolDiscovery, touched: Obj | None) -> None:
    pods = d.pod_reflector.items
    want: dict[str, list[Obj]] = {}
    if d.pool is not None:
        for pod in pods.values():
            for ep in pod_endpoints(pod, d.pool, d.store_pool):
                want.setdefault(ep.address, []).append(pod)
    got = {e.address: e for e in d.store.all()}
    assert set(got) == set(want)
    for addr, ep in got.items():
        assert ep.labels in [p["metadata"]["labels"] for p in want[addr]], addr
    if touched is not None and d.pool is not None:
        for ep in pod_endpoints(touched, d.pool, d.store_pool):
            want_labels = touched["metadata"]["labels"]
            assert got[ep.address].labels == want_labels, "the pod seen last gives the labels"
    providers = {a: set(by) for a, by in d._providers.items()}
    assert providers == {a: {key_of(p) for p in ps} for a, ps in want.items()}
    providing = {key_of(p) for ps in want.values() for p in ps}
    assert set(d._pod_addrs) == providing
    assert d.ready_pods() == len(providing)


@pytest.mark.parametrize("seed", range(40))
def test_providers_match_the_model(seed: int) -> None:
    rng = random.Random(seed)
    store = EndpointStore()
    changes: list[StoreChange] = []
    store.add_listener(changes.append)
    d = PoolDiscovery(None, store, pool_name="llm", namespace="default", watch_objectives=False)  # type: ignore[arg-type]
    server: dict[tuple[str, str], Obj] = {}  # what the API server holds (the watch may miss some of it)
    rv = 1
    names = [("default", f"p{i}") for i in range(5)]
    pool_obj = _pool(rng, rv)
    d.pool_reflector._on_event({"type": "ADDED", "object": pool_obj})
    for _ in range(300):
        rv += 1
        r = rng.random()
        touched: Obj | None = None
        changes.clear()
        if r < 0.05:
            pool_obj = _pool(rng, rv)
            d.pool_reflector._on_event({"type": "MODIFIED", "object": pool_obj})
        elif r < 0.07:
            d.pool_reflector._on_event({"type": "DELETED", "object": pool_obj})
            pool_obj = _pool(rng, rv)
            d.pool_reflector._on_event({"type": "ADDED", "object": pool_obj})
        elif r < 0.12:  # 410: relist and reconcile what the watch missed
            d.pod_reflector._reconcile(copy.deepcopy(server))
        else:
            name = rng.choice(names)
            if name in server and rng.random() < 0.2:
                obj = server.pop(name)
                ev = {"type": "DELETED", "object": copy.deepcopy(obj)}
            else:
                obj = _pod(rng, name[1], rv)
                ev = {"type": "MODIFIED" if name in server else "ADDED", "object": copy.deepcopy(obj)}
                server[name] = obj
                touched = ev["object"]
            if rng.random() < 0.1:
                # the watch missed it; a later relist reconciles
                touched = None
            else:
                d.pod_reflector._on_event(ev)
        _check(d, touched)
        removed = {c.endpoint.address for c in changes if c.kind == "removed"}
        added = {c.endpoint.address for c in changes if c.kind == "added"}
        if r >= 0.12:
            assert not removed & added, "one pod event removed and re-added an address (its state lost)"
