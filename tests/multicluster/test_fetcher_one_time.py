"""Review s17-k8s F2 and F3 (fixk8s17): one time for the hub EPP's feed and the aggregate fetcher.

F2: ``HubFeed`` refused a director on its own clock without ``sleep=``, but took ``sleep=`` with a director
on the loop's clock (``time.monotonic``), so its ``ClusterSource`` ran on the loop's clock and the caller's
sleep (the mix ``check_one_time`` refuses for ``GlobalGateway``). F3: ``GlobalGateway``'s docstring said
its clock and sleep were the fetcher's too, but ``Fetcher`` took only ``clock=`` and slept its rounds on
``asyncio.sleep``; it now takes both (one time) and the gateway and the feed hand theirs on."""

from __future__ import annotations

import asyncio

import pytest

from fake_time import FakeTime
from kvgate.multicluster.clusters import ClustersConfig
from kvgate.multicluster.fetcher import Fetcher


def test_the_hub_feeds_sleep_without_the_directors_clock_is_refused() -> None:
    """(Review s17-k8s's failing test.) Fails before: DID NOT RAISE."""
    from kvgate.multicluster.hub import ClusterDirector, HubFeed

    ft = FakeTime()
    director = ClusterDirector(ClustersConfig(clusters=()), "kvgate", seed=0)  # on time.monotonic
    with pytest.raises(ValueError, match="sleep= with a director on the loop's clock"):
        HubFeed(director, sleep=ft.sleep)


def test_the_fetchers_clock_and_sleep_come_together() -> None:
    ft = FakeTime()
    with pytest.raises(ValueError, match="clock= without sleep="):
        Fetcher(lambda: [], clock=ft.clock)
    with pytest.raises(ValueError, match="sleep= without clock="):
        Fetcher(lambda: [], sleep=ft.sleep)


async def test_the_fetchers_rounds_run_on_injected_time() -> None:
    """A fetcher on injected time (30 s rounds): its first round at start, the next exactly when the test's
    time reaches 30 s, 60 s (and not a moment before), whatever real time passed. Fails before: ``Fetcher``
    took no ``sleep=`` (its rounds slept on the loop's time)."""
    ft = FakeTime()
    fetcher = Fetcher(lambda: [], interval_s=30.0, clock=ft.clock, sleep=ft.sleep)
    await fetcher.start()
    try:
        assert fetcher.rounds == 1
        for n in (2, 3):
            for _ in range(3000):  # (the loop asleep on the injected time; 30 s: 1 s before)
                if ft.next_wake() is not None:
                    break
                await asyncio.sleep(0.01)
            assert ft.next_wake() == 30.0 * (n - 1)
            ft.advance(29.9)
            await asyncio.sleep(0.05)
            assert fetcher.rounds == n - 1
            ft.advance(0.1)
            for _ in range(3000):  # (30 s: 1 s before)
                if fetcher.rounds == n:
                    break
                await asyncio.sleep(0.01)
            assert fetcher.rounds == n
    finally:
        await fetcher.stop()


def test_the_gateway_and_the_hub_feed_hand_their_time_to_the_fetcher() -> None:
    """``GlobalGateway`` (``kvgate serve --clusters``) and ``HubFeed`` (``kvgate epp --clusters``) build
    their fetcher on their own clock and sleep. Fails before: the fetcher got the clock only."""
    from kvgate.multicluster.hub import ClusterDirector, HubFeed
    from kvgate.multicluster.serve import GlobalGateway

    ft = FakeTime()
    gw = GlobalGateway(ClustersConfig(clusters=()), clock=ft.clock, sleep=ft.sleep)
    assert gw.fetcher is not None and gw.fetcher.clock == ft.clock and gw.fetcher.sleep == ft.sleep
    director = ClusterDirector(ClustersConfig(clusters=()), "kvgate", seed=0, clock=ft.clock)
    feed = HubFeed(director, sleep=ft.sleep)
    assert feed.fetcher.clock == ft.clock and feed.fetcher.sleep == ft.sleep
