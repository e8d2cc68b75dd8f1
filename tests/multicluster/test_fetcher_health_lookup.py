"""closing-s17 "Noticed and left undone" (KV / hub): the EPP health check (``Fetcher._health``, a cluster's
``health: host:port``) resolved its host through gRPC's own resolver (c-ares), unlike the aggregate fetch
and the hub probe (getaddrinfo on the hub's bounded lookups, the IDNA form the clusters file checks):

- an internationalised name the clusters file takes (``bücher.example``; here ``localhost`` in fullwidth
  letters, ``WIDE``, whose IDNA form is ``localhost``) was refused by c-ares ("Misformatted domain
  name"): the EPP counted unhealthy for good while its aggregate, the same host, was fetched;
- a name only the system's resolver knows (an NSS source c-ares does not read; here ``socket.getaddrinfo``
  answering for one test domain) was not found: unhealthy for good.

Now the health host is looked up as the aggregate's is (``health_targets``) and gRPC dials the addresses.
A real gRPC health server on loopback (SERVING for the ext_proc service)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest

from kvgate.multicluster import hub
from kvgate.multicluster.clusters import ClusterSpec
from kvgate.multicluster.fetcher import Fetcher
from kvgate.multicluster.state import ClusterState
from multicluster.conftest import epp_health_server
from multicluster.hung_resolver import HungResolver

ONLY_NSS = "epp.kvgate-k8s18.test"  # a name only getaddrinfo answers (127.0.0.1)
HUNG = "hung.kvgate-k8s18.test"
WIDE = "\uff4c\uff4f\uff43\uff41\uff4c\uff48\uff4f\uff53\uff54"  # localhost, fullwidth (IDNA: localhost)


@pytest.fixture
async def epp_health() -> AsyncIterator[int]:
    """The port of a gRPC health server on 127.0.0.1 that answers SERVING for the ext_proc service."""
    async with epp_health_server("127.0.0.1:0") as port:
        yield port


async def _healthy(health: str) -> tuple[bool | None, Fetcher]:
    states = [ClusterState(ClusterSpec("c", gateway="h:1", health=health))]
    fetcher = Fetcher(lambda: states, interval_s=3600, timeout_s=1.0)
    try:
        await fetcher.start()  # (a first round)
        return states[0].healthy, fetcher
    finally:
        await fetcher.stop()


async def test_an_internationalised_health_host_is_checked(epp_health: int) -> None:
    healthy, _ = await _healthy(f"{WIDE}:{epp_health}")
    assert healthy is True, "gRPC's resolver refused the name the clusters file took"


async def test_a_health_host_only_the_systems_resolver_knows_is_checked(
    epp_health: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = socket.getaddrinfo

    def nss(host: Any, *a: Any, **k: Any) -> Any:
        return real("127.0.0.1" if host == ONLY_NSS else host, *a, **k)

    monkeypatch.setattr(socket, "getaddrinfo", nss)
    healthy, fetcher = await _healthy(f"{ONLY_NSS}:{epp_health}")
    assert healthy is True, "the health check did not resolve as the aggregate fetch and the probe do"
    assert fetcher._channels == {}  # (closed at the stop)


async def test_an_address_and_localhost_still_checked_and_a_hung_name_on_the_bounded_lookups(
    epp_health: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert (await _healthy(f"127.0.0.1:{epp_health}"))[0] is True
    assert (await _healthy(f"localhost:{epp_health}"))[0] is True
    fake = HungResolver(HUNG)
    monkeypatch.setattr(socket, "getaddrinfo", fake)
    try:
        states = [ClusterState(ClusterSpec("c", gateway="h:1", health=f"n.{HUNG}:{epp_health}"))]
        fetcher = Fetcher(lambda: states, interval_s=3600, timeout_s=0.2)
        try:
            await fetcher.start()
            assert states[0].healthy is False  # (its lookup timed out: a failure, as gRPC's was)
            assert f"n.{HUNG}" in hub._LOOKUPS.inflight  # (one bounded lookup thread, shared)
            await fetcher.refresh()
            assert fake.running[1] == 1  # (the next round joined it: no second thread)
        finally:
            await fetcher.stop()
    finally:
        fake.release.set()
