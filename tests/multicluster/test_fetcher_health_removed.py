"""A cluster whose EPP health check failed, then its ``health:`` address removed by a clusters-file reload:
the hub (and ``kvgate serve --clusters``) keep the cluster's state across a reload, and the fetcher skipped a
cluster with no health address without touching its verdict, so the last one (unhealthy) stood for good and
the policies left the cluster out (``healthy is not False``) although nothing checks it any more. Now no
health address is no verdict (``healthy`` None: not checked), as for a cluster that never had one.

Real gRPC health check against a loopback port that refuses connections (bound, not listening), the real
``ClusterDirector.apply`` reload."""

from __future__ import annotations

import socket
import time

from kvgate.datalayer.aggregate import PoolAggregate
from kvgate.multicluster.clusters import ClustersConfig, ClusterSpec
from kvgate.multicluster.fetcher import Fetcher
from kvgate.multicluster.hub import ClusterDirector
from kvgate.scheduling.types import InferenceRequest


async def test_a_health_address_removed_by_a_reload_drops_the_last_unhealthy_verdict() -> None:
    with socket.socket() as refusing:
        refusing.bind(("127.0.0.1", 0))
        health = f"127.0.0.1:{refusing.getsockname()[1]}"
        east = ClusterSpec("east", gateway="127.0.0.1:9", health=health)
        west = ClusterSpec("west", gateway="127.0.0.1:10", priority=1)
        director = ClusterDirector(ClustersConfig((east, west)), "active-passive", seed=0)
        for st in director.state_list():
            st.set_aggregate(PoolAggregate("p", 1.0, 2, 2, capacity=2.0, headroom=1.5), time.monotonic())
        fetcher = Fetcher(director.state_list, interval_s=3600, timeout_s=1.0)
        try:
            await fetcher.start()  # (one round: east's EPP refuses its health check)
            assert director.states["east"].healthy is False
            director.apply(ClustersConfig((ClusterSpec("east", gateway="127.0.0.1:9"), west)))  # (reload)
            await fetcher.refresh()
        finally:
            await fetcher.stop()
    st = director.states["east"]
    assert st.healthy is None, "no health address any more, but the last unhealthy verdict stands"
    picked = director.pick(InferenceRequest("r1", "m", prompt_text="p"))
    assert picked.endpoints[0].labels["kvgate.io/cluster"] == "east", picked.endpoints
