"""Review s28-qa Q1: ``kvgate_scheduler_picks_total{endpoint}`` kept a series (and a ``PICKS.counts``
entry) for every endpoint address ever picked: a rollout gives every pod a new address, so a long-lived
gateway or EPP grew by a pool's worth of series per rollout. A series now goes at the pool-metrics refresh
once no picker's store holds its address, as the per-pod queue gauges' do. Both tests fail on main
2df410d8 (196 stale series; the address gone from every store keeps its series)."""

from __future__ import annotations

import time

from prometheus_client import REGISTRY

from kvgate.config.director import build_director
from kvgate.datalayer.store import EndpointStore, make_endpoint
from kvgate.scheduling.types import InferenceRequest

PREFIX = "10.228."  # addresses no other test uses


def _fresh(store: EndpointStore, addresses: list[str]) -> None:
    now = time.monotonic()
    store.sync([make_endpoint(a) for a in addresses])
    for ep in store.all():
        ep.metrics.updated_at = now
        ep.answered_at = now


def _series() -> dict[str, float]:
    return {
        s.labels["endpoint"]: s.value
        for f in REGISTRY.collect()
        if f.name == "kvgate_scheduler_picks"
        for s in f.samples
        if s.labels.get("endpoint", "").startswith(PREFIX)
    }


def test_picks_series_of_endpoints_that_left_the_pool_go() -> None:
    store = EndpointStore()
    director = build_director("round-robin", store, clock=time.monotonic, seed=0)
    rounds, per = 50, 4
    for k in range(rounds):  # 50 rollouts of a 4-pod pool: 200 addresses over time, 4 at any moment
        _fresh(store, [f"{PREFIX}{k}.{j}:8000" for j in range(per)])
        for i in range(per):
            director.pick(InferenceRequest(f"q1-{k}-{i}", "m", prompt_text="hi"))
    director.update_pool_metrics()
    live = {ep.address for ep in store.all()}
    stale = set(_series()) - live
    assert not stale, f"{len(stale)} picks series of endpoints no longer in the pool (of {rounds * per} ever)"


def test_an_address_another_pool_still_holds_keeps_its_series() -> None:
    """PICKS is process-wide: an address that left one pool's store but is still in another's keeps its
    count (a series goes only when no picker's store holds it)."""
    shared, only_a = f"{PREFIX}200.1:8000", f"{PREFIX}200.2:8000"
    a, b = EndpointStore(), EndpointStore()
    _fresh(a, [shared, only_a])
    _fresh(b, [shared])
    da = build_director("round-robin", a, clock=time.monotonic, seed=0)
    db = build_director("round-robin", b, clock=time.monotonic, seed=0)
    for i in range(4):
        da.pick(InferenceRequest(f"a{i}", "m", prompt_text="hi"))
        db.pick(InferenceRequest(f"b{i}", "m", prompt_text="hi"))
    before = _series()
    assert before[shared] >= 4.0 and before[only_a] >= 1.0
    _fresh(a, [f"{PREFIX}200.3:8000"])  # both leave pool a; ``shared`` stays in pool b
    da.update_pool_metrics()
    after = _series()
    assert after.get(shared) == before[shared] and only_a not in after
    db.update_pool_metrics()
    assert _series().get(shared) == before[shared]
