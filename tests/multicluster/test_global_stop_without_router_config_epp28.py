"""Session 27's closing note: ``GlobalGateway.stop`` read its drain (``drain_s``: the router's config) before
its ``stop_to_the_end`` guard, so a router without a config (``tests/test_stop_finishes.py``'s stand-in, which
had to give ``drain_s=0.0`` for it since 18bef560) raised there and nothing was stopped: not the reload loop,
the clusters source, the router. The drain is read from the gateway's own copy of the clusters file now.
Both fail on main 2a9ab840 (AttributeError: no ``cfg``)."""

from __future__ import annotations

import asyncio

from kvgate.multicluster.clusters import ClustersConfig, ClusterSpec
from kvgate.multicluster.serve import GlobalGateway


class _Router:
    """A router with no ``cfg``: only the close a stop calls."""

    def __init__(self) -> None:
        self.closed = False

    async def close(self) -> None:
        await asyncio.sleep(0)
        self.closed = True


def _gateway(drain: float) -> tuple[GlobalGateway, _Router]:
    cfg = ClustersConfig((ClusterSpec("c1", epp="127.0.0.1:1"),), drain_timeout_s=drain)
    gw = GlobalGateway(cfg, "round-robin", fetch=False)  # (no drain_s: the file's, read at the stop)
    router = _Router()
    gw.router = router  # type: ignore[assignment]
    return gw, router


async def test_a_stop_whose_router_has_no_config_finishes() -> None:
    gw, router = _gateway(7.0)
    await asyncio.wait_for(gw.stop(), 30)
    assert router.closed and gw.draining
    assert gw.drain_s == 7.0  # (the file's, fixed at the stop)


async def test_a_cancelled_stop_whose_router_has_no_config_still_closes_it() -> None:
    """``tests/test_stop_finishes.py``'s case without its ``drain_s=0.0`` (and without its planted task,
    which hangs the loop's close when a stop fails before cancelling it)."""
    gw, router = _gateway(30.0)
    stopping = asyncio.create_task(gw.stop())
    await asyncio.sleep(0)  # (the stop has begun: its guard's task runs the rest)
    stopping.cancel()
    await asyncio.wait([stopping], timeout=30)
    assert stopping.done() and stopping.cancelled(), stopping
    assert router.closed
