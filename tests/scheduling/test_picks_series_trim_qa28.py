"""Q1 (qa28): ``kvgate_scheduler_picks_total{endpoint}`` keeps a series (and a dict entry) for every
endpoint address ever picked, for the life of the process.

``kvgate.scheduling.metrics.PICKS`` is a module-level ``FastCounter`` whose ``counts`` dict only grows
(``Director.pick``: ``picks[addr] = picks.get(addr, 0.0) + 1.0``); nothing removes an address when its
endpoint leaves the pool (a reload, Kubernetes discovery: a rollout gives every pod a new IP). Its own
comment says "Bounded: one series per endpoint address the picker has chosen" -- bounded by the churn, not
by the pool. Measured: ``kvgate serve --config`` reloaded 270 times with 4 fresh addresses each (1080
addresses): 634 ``kvgate_scheduler_picks_total`` series for endpoints long gone on ``/metrics``, while the
per-pod queue gauges (``Director._per_pod_queues``) drop theirs as they should.

Expected: as ``inference_pool_per_pod_queue_size`` does, a series whose endpoint no store holds any more
goes (at the latest at the next pool-metrics refresh / scrape). Fails on main 2a9ab840.
"""

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


def _series() -> set[str]:
    return {
        s.labels["endpoint"]
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
    stale = _series() - live
    assert not stale, f"{len(stale)} picks series of endpoints no longer in the pool (of {rounds * per} ever)"
