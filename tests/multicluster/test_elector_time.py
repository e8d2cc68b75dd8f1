"""The hub's leader electors run on injected time (session 16), as ``KubePool``'s does since session 15:
``ClusterSource`` (the writers' Lease of ``kvgate serve --clusters`` with ``controller: true``) and
``HubController`` (``kvgate hub-controller --ha-enable-leader-election``) take ``clock=`` and ``sleep=``
(both or neither) and hand them to their ``LeaderElector`` (and the members' watches). Shown against
API-server doubles over real HTTP: a Lease held by another identity with a 1 s duration is not taken
however much real time passes while the test's time stands still, and is taken once the test moves its
time past the duration as the candidate observed it. Before, both electors ran on the event loop's time
(and took no ``clock``/``sleep``): the real wait below was enough for a takeover."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from pathlib import Path

import pytest

from fake_time import FakeTime
from kvgate.k8s.apiserver import ApiServerDouble
from kvgate.k8s.lease import LeaderElector
from kvgate.multicluster.clusters import load

from .kube_objects import inference_pool

LEASE = "kvgate-hub-controller"


async def _until(cond: Callable[[], bool], limit_s: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while not cond():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def _held_by_another(hub: ApiServerDouble) -> None:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    hub.create({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": LEASE, "namespace": "default"},
        "spec": {"holderIdentity": "another", "leaseDurationSeconds": 1, "acquireTime": now, "renewTime": now,
                 "leaseTransitions": 0},
    })  # fmt: skip


def _clusters(tmp_path: Path, hub: str, east: str) -> Path:
    f = tmp_path / "clusters.yaml"
    f.write_text(f"kubernetes:\n  server: {hub}\n  import: default/llama\n  lease: default/{LEASE}\n"
                 "  controller: true\n  members:\n"
                 f"  - {{name: east, server: '{east}', rtt_ms: 5}}\n")  # fmt: skip
    return f


async def _takeover_on_the_test_time(ft: FakeTime, elector: Callable[[], LeaderElector | None]) -> None:
    """The first round observes the other holder; then nothing happens on real time (2.5 s: more than the
    1 s duration plus any retry period here); the test's time moved in steps to each pending wake, the
    Lease is taken once 1 s of it passed since that observation, not before."""
    await _until(lambda: (e := elector()) is not None and e.rounds >= 1)
    e = elector()
    assert e is not None and not e.is_leader and e.holder == "another"
    await asyncio.sleep(2.5)
    assert e.rounds == 1 and not e.is_leader, "the election ran on real time"
    while not e.is_leader:
        wake = ft.next_wake()
        assert wake is not None and ft.now < 10.0
        rounds = e.rounds
        ft.advance(wake - ft.now)
        await _until(lambda r=rounds: e.rounds > r)  # type: ignore[misc]  # (the round that woke, done)
        assert e.is_leader == (ft.now >= 1.0), (ft.now, e.is_leader)
    assert e.holder == e.identity


async def test_the_hub_controllers_election_runs_on_injected_time(tmp_path: Path) -> None:
    from kvgate.multicluster.hub_controller import Election, HubController

    async with (
        ApiServerDouble(bookmark_interval=0.2) as hub_d,
        ApiServerDouble(bookmark_interval=0.2) as east_d,
    ):
        east_d.create(inference_pool("llama", "10.1.0.2:8080"))
        _held_by_another(hub_d)
        kube = load(_clusters(tmp_path, hub_d.url, east_d.url)).kubernetes
        assert kube is not None
        ft = FakeTime()
        election = Election(
            lease_duration_s=1.0, renew_deadline_s=0.75, retry_period_s=0.25, identity="ctl-a"
        )
        hc = HubController(kube, election, clock=ft.clock, sleep=ft.sleep)
        await hc.start()
        try:
            await _takeover_on_the_test_time(ft, lambda: hc.elector)
            await _until(lambda: hc.controller is not None)  # the leader runs the controller
        finally:
            await hc.stop()


async def test_the_gateways_writer_election_runs_on_injected_time(tmp_path: Path) -> None:
    """``ClusterSource`` with ``controller: true``: its elector (default periods: retry 2 s) on the test's
    time."""
    from kvgate.multicluster.source import ClusterSource

    async with (
        ApiServerDouble(bookmark_interval=0.2) as hub_d,
        ApiServerDouble(bookmark_interval=0.2) as east_d,
    ):
        east_d.create(inference_pool("llama", "10.1.0.2:8080"))
        _held_by_another(hub_d)
        ft = FakeTime()
        source = ClusterSource(load(_clusters(tmp_path, hub_d.url, east_d.url)), lambda _cfg: None,
                               clock=ft.clock, sleep=ft.sleep)  # fmt: skip
        await source.start()
        try:
            await _takeover_on_the_test_time(ft, lambda: source.elector)
        finally:
            await source.stop()


def test_clock_and_sleep_come_together() -> None:
    """One time: a ``clock`` without its ``sleep`` (or the reverse) is refused, as ``KubePool`` refuses it."""
    from kvgate.multicluster.clusters import ClustersConfig
    from kvgate.multicluster.source import ClusterSource

    ft = FakeTime()
    with pytest.raises(ValueError, match="clock= without sleep="):
        ClusterSource(ClustersConfig(clusters=()), lambda _cfg: None, clock=ft.clock)


async def test_the_global_gateways_source_runs_on_the_gateways_injected_time(tmp_path: Path) -> None:
    """``kvgate serve --clusters`` (``GlobalGateway``) hands its ``clock`` and ``sleep`` to its
    ``ClusterSource``: the writers' election (and the members' watches) run on the gateway's time, not the
    loop's. Fails before (k8s17): ``GlobalGateway`` took no ``sleep`` and built its source without time, so
    the election ran on real time."""
    from kvgate.multicluster.serve import GlobalGateway

    async with (
        ApiServerDouble(bookmark_interval=0.2) as hub_d,
        ApiServerDouble(bookmark_interval=0.2) as east_d,
    ):
        east_d.create(inference_pool("llama", "10.1.0.2:8080"))
        _held_by_another(hub_d)
        ft = FakeTime()
        gw = GlobalGateway(load(_clusters(tmp_path, hub_d.url, east_d.url)), "kvgate", seed=0, fetch=False,
                           clock=ft.clock, sleep=ft.sleep)  # fmt: skip
        assert gw.source.clock == ft.clock and gw.source.sleep == ft.sleep
        await gw.start()
        try:
            await _takeover_on_the_test_time(ft, lambda: gw.source.elector)
        finally:
            await gw.stop()


def test_the_global_gateways_clock_and_sleep_come_together() -> None:
    from kvgate.multicluster.clusters import ClustersConfig
    from kvgate.multicluster.serve import GlobalGateway

    ft = FakeTime()
    with pytest.raises(ValueError, match="clock= without sleep="):
        GlobalGateway(ClustersConfig(clusters=()), fetch=False, clock=ft.clock)


async def test_the_hub_epps_source_runs_on_the_directors_injected_time(tmp_path: Path) -> None:
    """``kvgate epp --clusters`` (``HubFeed``): its ``ClusterSource`` runs on the director's clock and the
    feed's ``sleep`` (k8s17; before, the feed built its source on the loop's time whatever the director's
    clock)."""
    from kvgate.multicluster.hub import ClusterDirector, HubFeed

    async with (
        ApiServerDouble(bookmark_interval=0.2) as hub_d,
        ApiServerDouble(bookmark_interval=0.2) as east_d,
    ):
        east_d.create(inference_pool("llama", "10.1.0.2:8080"))
        _held_by_another(hub_d)
        ft = FakeTime()
        director = ClusterDirector(load(_clusters(tmp_path, hub_d.url, east_d.url)), "kvgate", seed=0,
                                   clock=ft.clock)  # fmt: skip
        with pytest.raises(ValueError, match="needs sleep="):
            HubFeed(director)
        feed = HubFeed(director, sleep=ft.sleep)
        assert feed.source.clock == ft.clock and feed.source.sleep == ft.sleep
        feed.fetcher.interval_s = 3600.0  # (its rounds on the test's time too: no wake before the election's)
        await feed.start()
        try:
            await _takeover_on_the_test_time(ft, lambda: feed.source.elector)
        finally:
            await feed.stop()
