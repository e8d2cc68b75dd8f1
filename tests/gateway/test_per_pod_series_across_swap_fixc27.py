"""Review s27-rev-fixes27a F3: a picker swap no longer orphans the per-endpoint queue series.

``Director._per_pod`` (the series a Director has shown, so it removes those whose endpoint is no longer
ready) was not carried by ``gateway.reload._carry``: the new Director started from nothing, so an endpoint
that left after the swap kept ``inference_pool_per_pod_queue_size`` (and llm-d's
``llm_d_epp_per_endpoint_queue_size``) at its last value for the life of the process, a phantom pod on
dashboards after any EndpointPickerConfig reload followed by a rollout. Both tests fail on 44e88aec.
The series are the process-wide REGISTRY's; each test uses a pool name of its own.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import REGISTRY

from kvgate.config.director import build_director
from kvgate.config.gateway import parse_gateway_config
from kvgate.datalayer.store import EndpointStore
from kvgate.gateway.pools import build_pool
from kvgate.gateway.reload import ConfigReloader, _carry
from kvgate.k8s.discovery import PoolSpec, pod_endpoints

READY = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}


def _pod(name: str, ip: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "ns", "labels": {"app": "v"}},
        "status": {**READY, "podIP": ip},
    }


def _series(pool: str, family: str, label: str) -> set[str]:
    return {
        s.labels[label]
        for f in REGISTRY.collect()
        if f.name == family
        for s in f.samples
        if s.labels.get("name") == pool
    }


def _show(director: Any, store: EndpointStore) -> None:
    now = time.monotonic()
    for ep in store.all():
        ep.metrics.waiting_queue_size = 3
        ep.metrics.updated_at = now
        ep.answered_at = now
    director.update_pool_metrics()


def test_a_pod_gone_after_a_swap_loses_its_queue_series() -> None:
    pool = "fixc27-f3-pods"
    spec = PoolSpec(pool, "ns", {"app": "v"}, (8000,))
    store = EndpointStore(
        pod_endpoints(_pod("a", "10.0.0.1"), spec) + pod_endpoints(_pod("b", "10.0.0.2"), spec)
    )
    old = build_director("reference", store, clock=time.monotonic, seed=0, pool=pool)
    _show(old, store)
    assert _series(pool, "inference_pool_per_pod_queue_size", "model_server_pod") == {"a-rank-0", "b-rank-0"}
    # A picker swap on the same store (what gateway.reload does), then pod b goes.
    new = build_director("reference", store, clock=time.monotonic, seed=0, pool=pool)
    pc = parse_gateway_config(
        {"pools": [{"name": pool, "endpoints": ["127.0.0.1:1"], "models": ["m"]}]}
    ).pools[0]
    _carry(old, new, pc, pc)
    store.sync(pod_endpoints(_pod("a", "10.0.0.1"), spec))
    _show(new, store)
    assert _series(pool, "inference_pool_per_pod_queue_size", "model_server_pod") == {"a-rank-0"}
    assert _series(pool, "llm_d_epp_per_endpoint_queue_size", "model_server_endpoint") == {"10.0.0.1:8000"}


def _doc(pool: str, addresses: list[str], extra: list[dict[str, str]]) -> dict[str, Any]:
    plugins = [{"type": "queue-scorer"}, *extra]
    picker = {
        "plugins": plugins,
        "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": p["type"]} for p in plugins]}],
    }
    p = {"name": pool, "endpoints": addresses, "models": ["m"], "endpointPickerConfig": picker}
    return {"listen": {"host": "127.0.0.1", "port": 0}, "pools": [p]}


def test_an_endpoint_gone_after_a_reloads_swap_loses_its_queue_series(tmp_path: Path) -> None:
    pool = "fixc27-f3-reload"
    f = tmp_path / "gw.yaml"
    first = _doc(pool, ["127.0.0.1:1", "127.0.0.1:2"], [])
    f.write_text(yaml.safe_dump(first))
    cfg = parse_gateway_config(first)
    pools = [build_pool(pc, index=i) for i, pc in enumerate(cfg.pools)]
    _show(pools[0].director, pools[0].store)
    assert _series(pool, "llm_d_epp_per_endpoint_queue_size", "model_server_endpoint") == {
        "127.0.0.1:1",
        "127.0.0.1:2",
    }
    rl = ConfigReloader(str(f), cfg, pools, None)
    kv = [{"type": "kv-cache-utilization-scorer"}]
    f.write_text(yaml.safe_dump(_doc(pool, ["127.0.0.1:1", "127.0.0.1:2"], kv)))
    director = pools[0].director
    assert rl.reload() and pools[0].director is not director  # the picker swapped
    f.write_text(yaml.safe_dump(_doc(pool, ["127.0.0.1:1"], kv)))
    assert rl.reload()  # an endpoint gone
    _show(pools[0].director, pools[0].store)
    assert _series(pool, "inference_pool_per_pod_queue_size", "model_server_pod") == {"127.0.0.1:1"}
    assert _series(pool, "llm_d_epp_per_endpoint_queue_size", "model_server_endpoint") == {"127.0.0.1:1"}
