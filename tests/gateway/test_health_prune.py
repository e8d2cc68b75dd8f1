"""Review s18-fixes-c I4: ``HealthTracker`` kept a state entry for every address it ever charged, and nothing
removed the addresses of endpoints that left the pool (Kubernetes pod churn: a new IP per pod, each charged
a failure or a deadline cut by its last requests). Now the table is swept of addresses no pool holds when it
has doubled since the last sweep: bounded by about twice the live endpoints, live endpoints' state kept."""

from __future__ import annotations

from gateway.conftest import make_config
from kvgate.config.gateway import HealthConfig
from kvgate.datalayer.endpoint import Endpoint
from kvgate.datalayer.store import EndpointStore, make_endpoint
from kvgate.gateway.health import PRUNE_MIN, HealthTracker
from kvgate.gateway.server import GatewayServer

CHURN = 2000


def _churn(tracker: HealthTracker, store: EndpointStore, peers: list[Endpoint]) -> int:
    """``CHURN`` pods come, fail one request, time out another, and leave; the table's largest size."""
    most = 0
    for i in range(CHURN):
        ep = store.add(make_endpoint(f"10.{i // 250}.{i % 250}.9:8000", pool="p"))
        tracker.failure(ep, peers)
        tracker.timed_out(ep, 0.0, 1.0, 10.0, peers)
        store.remove(ep.address)
        tracker.failure(ep, peers)  # (its last request, failing after it left)
        most = max(most, len(tracker._state))
    return most


def test_departed_endpoints_do_not_grow_the_table() -> None:
    store = EndpointStore(make_endpoint(f"10.9.9.{i}:8000", pool="p") for i in range(3))
    live = list(store.all())
    tracker = HealthTracker(HealthConfig(eject_after_failures=5), lambda: 0.0, store.all)
    tracker.failure(live[0], live)
    tracker.failure(live[0], live)
    most = _churn(tracker, store, live)
    assert most <= PRUNE_MIN, most  # (before: CHURN + 1 entries)
    # A live endpoint's state is kept through every sweep: its 2 failures still count.
    assert tracker._state[live[0].address].failures == 2


def test_the_table_stays_within_twice_the_live_endpoints() -> None:
    store = EndpointStore(make_endpoint(f"10.8.{i // 250}.{i % 250}:8000", pool="p") for i in range(300))
    live = list(store.all())
    tracker = HealthTracker(HealthConfig(eject_after_failures=10**6), lambda: 0.0, store.all)
    for ep in live:
        tracker.failure(ep, live)
    most = _churn(tracker, store, live)
    assert most <= 2 * len(live) + 1, most
    assert all(tracker._state[ep.address].failures == 1 for ep in live)


def test_the_gateway_sweeps_by_its_pools_endpoints() -> None:
    gw = GatewayServer(make_config(["127.0.0.1:9"]))
    pool = gw.pools[0]
    live = list(pool.endpoints())
    most = _churn(gw.health, pool.store, live)
    assert most <= PRUNE_MIN, most
