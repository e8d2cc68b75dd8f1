"""Review s32-rev-g32 F1 and F3: the hub's walk down a cluster EPP's ``x-gateway-destination-endpoint``
list (Endpoint mode) remembers the addresses it could not connect to. Asserted on the addresses the router
sent to (``GlobalRouter._post``'s calls), not on time: an unreachable address here is refused at once (a
socket bound on port 0 and held, never listening), where a blackholed one costs the connect timeout.

- F1: an address the hub failed to connect to is tried last for ``UNREACHABLE_S`` (the EPP, told only the
  served address, keeps naming it first), counted in ``kvgate_multicluster_endpoints_put_last_total``; after
  that it is tried first again (an injected clock). Fails on 8e82d65d: every request connects to it first.
- F3: after a pod's 500 the EPP's re-pick leaves out every address this request's walk tried: EPP [A
  unreachable, B 500] sends to A, B and ends there. Fails on 8e82d65d: A is connected to a second time."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from gateway.backend import Backend
from kvgate.multicluster.clusters import ClusterSpec
from kvgate.multicluster.router import UNREACHABLE_S
from multicluster.test_hub_walk_charges_revg32 import list_epp
from multicluster.test_hub_walks_epp_fallbacks_fail32 import BODY


@pytest.fixture
def refusing() -> Iterator[str]:
    """An address every connect to is refused: bound (the port held), never listening."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    try:
        yield f"127.0.0.1:{s.getsockname()[1]}"
    finally:
        s.close()


def _record(router: Any) -> list[str]:
    """The addresses ``router`` sends to from now on, in order."""
    posted: list[str] = []
    post = router._post

    async def recorded(st: Any, mode: str, url: str, *args: Any, **kwargs: Any) -> Any:
        posted.append(url.split("/")[2])
        return await post(st, mode, url, *args, **kwargs)

    router._post = recorded
    return posted


async def _ask(port: int) -> tuple[int, bytes]:
    url = f"http://127.0.0.1:{port}/v1/completions"
    async with aiohttp.ClientSession() as http, http.post(url, data=BODY) as r:
        return r.status, await r.read()


async def test_an_address_the_hub_could_not_connect_to_is_tried_last_for_a_while(
    global_gateway: Any, refusing: str
) -> None:
    good = await Backend("good").start()
    try:
        async with list_epp(f"{refusing},{good.address}") as (_, epp_at):
            hub = await global_gateway(ClusterSpec("c0", epp=epp_at))
            router = hub.router
            shift = [0.0]
            router.clock = lambda: time.monotonic() + shift[0]
            posted = _record(router)
            for _ in range(3):
                status, raw = await _ask(hub.port)
                assert status == 200, raw
            # the first request found it unreachable; the next two went to the good pod first
            assert posted == [refusing, good.address, good.address, good.address], posted
            assert router.put_last == 2
            name = "kvgate_multicluster_endpoints_put_last_total"
            assert hub.metrics.registry.get_sample_value(name, {"cluster": "c0"}) == 2
            shift[0] = UNREACHABLE_S + 1  # (its time is over: the EPP's order again)
            status, raw = await _ask(hub.port)
            assert status == 200, raw
            assert posted[4:] == [refusing, good.address], posted
            assert len(good.received) == 4
    finally:
        await good.stop()


async def test_the_re_pick_after_a_pods_500_leaves_out_what_the_walk_tried(
    global_gateway: Any, refusing: str
) -> None:
    bad = await Backend("bad").start()
    bad.mode = "error500"
    try:
        async with list_epp(f"{refusing},{bad.address}") as (_, epp_at):
            hub = await global_gateway(ClusterSpec("c0", epp=epp_at))
            posted = _record(hub.router)
            status, raw = await _ask(hub.port)
            assert status in (500, 503), raw
            assert posted == [refusing, bad.address], posted
            assert len(bad.received) == 1
    finally:
        await bad.stop()
