"""``Fetcher._health`` had the aggregate fetch's race (review s23-rev-hub23 F1, fixed there by fixhub23;
session 24's brief): a round's EPP health check read ``st.spec.health`` at its start and set ``healthy`` when
its answer came, whatever a clusters-file reload had done meanwhile. A reload that removed the address left
that verdict on a cluster nothing checks (``healthy`` None: not checked, since review s22's
``test_fetcher_health_removed.py``); one that changed it gave the new address the old one's verdict, each
until the next round (``interval_s``, 0.5 s by default, any length in the clusters file). Now a verdict
lands only while the cluster's spec still has the address that was checked.

Real gRPC health server on loopback that holds its answer until the reload is done (within the check's
time-out), the real ``Fetcher`` and ``ClusterDirector.apply``.

Review s24-rev-fix24 F2: a reload between rounds (the common case: no check in flight) kept the last round's
verdict, the old address's, on the cluster; ``ClusterState.respec`` now drops it when ``health:`` changes
or goes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio

from kvgate.multicluster.clusters import ClustersConfig, ClusterSpec
from kvgate.multicluster.fetcher import Fetcher
from kvgate.multicluster.hub import ClusterDirector
from multicluster.conftest import epp_health_server


class _Held(health_aio.HealthServicer):
    """Answers once ``release`` is set (``arrived`` set at the first check)."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived, self.release = asyncio.Event(), asyncio.Event()

    async def Check(self, request: Any, context: Any) -> health_pb2.HealthCheckResponse:
        self.arrived.set()
        await self.release.wait()
        return await super().Check(request, context)


@pytest.mark.parametrize("to", [None, "other", "same"], ids=["removed", "changed", "no-change"])
async def test_a_health_check_in_flight_at_a_reload_lands_on_its_address_only(to: str | None) -> None:
    held = _Held()
    async with epp_health_server("127.0.0.1:0", held) as port:
        addr = f"127.0.0.1:{port}"
        east = ClusterSpec("east", gateway="127.0.0.1:10", health=addr)
        director = ClusterDirector(ClustersConfig((east,)), "active-passive", seed=0)
        fetcher = Fetcher(director.state_list, interval_s=3600, timeout_s=10.0)
        check = asyncio.ensure_future(fetcher.start())  # (its first round, in flight until released)
        try:
            async with asyncio.timeout(10):
                await held.arrived.wait()
            # (another address: one nothing answers, whose check the next round would make)
            health = {None: None, "other": "127.0.0.1:9", "same": addr}[to]
            director.apply(ClustersConfig((ClusterSpec("east", gateway="127.0.0.1:10", health=health),)))
            st = director.states["east"]
            assert st.healthy is None
            held.release.set()
            async with asyncio.timeout(10):
                await check
            if to == "same":  # (a guard: the verdict of the address still configured lands)
                assert st.healthy is True
                return
            assert st.healthy is None, "the old address's verdict landed after the reload"
        finally:
            held.release.set()
            await fetcher.stop()


@pytest.mark.parametrize("to", [None, "other", "same"], ids=["removed", "changed", "no-change"])
async def test_a_reload_between_rounds_drops_the_old_addresss_verdict(to: str | None) -> None:
    """Review s24-rev-fix24 F2 (its test, moved; the no-change guard added). Interval 3600 s: the next round
    never comes within the test. Removed, changed: fail on c54495c6 (``healthy`` stays True)."""
    async with epp_health_server("127.0.0.1:0") as port:
        addr = f"127.0.0.1:{port}"
        director = ClusterDirector(
            ClustersConfig((ClusterSpec("east", gateway="127.0.0.1:10", health=addr),)),
            "active-passive",
            seed=0,
        )
        fetcher = Fetcher(director.state_list, interval_s=3600, timeout_s=10.0)
        await fetcher.start()  # (its first round, done: SERVING)
        try:
            st = director.states["east"]
            assert st.healthy is True
            health = {None: None, "other": "127.0.0.1:9", "same": addr}[to]  # (127.0.0.1:9: nothing answers)
            director.apply(ClustersConfig((ClusterSpec("east", gateway="127.0.0.1:10", health=health),)))
            assert director.states["east"] is st
            if to == "same":  # (a guard: the address still configured keeps its verdict)
                assert st.healthy is True
            else:
                assert st.healthy is None, "the old address's verdict stands after the reload"
        finally:
            await fetcher.stop()
