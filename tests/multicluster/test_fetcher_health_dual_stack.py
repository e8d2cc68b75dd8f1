"""Review s18-k8s M1 (4d83e0a): ``health_target`` (now ``health_targets``) kept only a name's IPv4 addresses
when it has any (``ipv4:a:port,...``), dropping its IPv6 ones: an EPP whose name answers both families but
that listens on IPv6 only (or whose IPv4 address is unreachable: a dual-stack cluster, an IPv6-first
service) is counted unhealthy for good. gRPC's own resolver, before, handed every address to pick_first,
which tries them all.

The name's answer comes from ``socket.getaddrinfo`` replaced for one test domain (127.0.0.1 and ::1, as a
dual-stack name answers); the gRPC health server is real, on [::1] only (nothing on 127.0.0.1 at its port).

Now each family is dialled on a channel of its own (``health_targets``): healthy when either answers SERVING.
"""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from grpc_health.v1.health import aio as health_aio

from kvgate.multicluster import hub
from kvgate.multicluster.clusters import ClusterSpec
from kvgate.multicluster.fetcher import Fetcher
from kvgate.multicluster.state import ClusterState
from multicluster.conftest import epp_health_server

DUAL = "dual.kvgate-fixk8s18.test"


@pytest.fixture
async def epp_health_v6() -> AsyncIterator[int]:
    async with epp_health_server("[::1]:0") as port:
        yield port


async def test_a_dual_stack_health_name_whose_epp_listens_on_ipv6_is_healthy(
    epp_health_v6: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = socket.getaddrinfo

    def dual(host: Any, port: Any, *a: Any, **k: Any) -> Any:
        if host == DUAL:
            return real("127.0.0.1", port, *a, **k) + real("::1", port, *a, **k)
        return real(host, port, *a, **k)

    monkeypatch.setattr(socket, "getaddrinfo", dual)
    hub._LOOKUPS.forget()
    states = [ClusterState(ClusterSpec("c", gateway="h:1", health=f"{DUAL}:{epp_health_v6}"))]
    fetcher = Fetcher(lambda: states, interval_s=3600, timeout_s=1.0)
    try:
        await fetcher.start()
        targets = list(fetcher._channels)
    finally:
        await fetcher.stop()
    assert states[0].healthy is True, (
        f"a name answering 127.0.0.1 and ::1, the EPP on ::1: unhealthy (gRPC dialled {targets}: the IPv6 "
        "addresses dropped)"
    )


SLOW = "slow.kvgate-fixk8s18.test"


class _Timed(health_aio.HealthServicer):
    """A health servicer that keeps the time each Check had left by its deadline (as the client sent it)."""

    def __init__(self) -> None:
        super().__init__()
        self.left: list[float] = []

    async def Check(self, request: Any, context: Any) -> Any:
        self.left.append(context.time_remaining())
        return await super().Check(request, context)


async def test_the_health_checks_rpc_gets_what_its_lookup_left_of_the_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review s18-k8s L2: the lookup waited up to ``timeout_s``, then the RPC another ``timeout_s``, so a
    round's health check took up to twice its bound. Now the RPC's deadline is what the lookup left: a name
    answered after 0.6 s of a 1 s timeout gives the RPC at most 0.4 s (before: 1 s). What the server reads
    of the deadline, not a wall-clock bound."""
    servicer = _Timed()
    async with epp_health_server("127.0.0.1:0", servicer) as port:
        real = socket.getaddrinfo

        def slow(host: Any, *a: Any, **k: Any) -> Any:
            if host == SLOW:
                time.sleep(0.6)  # (on the lookup's own thread)
                return real("127.0.0.1", *a, **k)
            return real(host, *a, **k)

        monkeypatch.setattr(socket, "getaddrinfo", slow)
        hub._LOOKUPS.forget()
        states = [ClusterState(ClusterSpec("c", gateway="h:1", health=f"{SLOW}:{port}"))]
        fetcher = Fetcher(lambda: states, interval_s=3600, timeout_s=1.0)
        try:
            await fetcher.start()
        finally:
            await fetcher.stop()
    assert states[0].healthy is True and len(servicer.left) == 1
    assert servicer.left[0] < 0.5, f"the RPC had {servicer.left[0]:.2f} s left after a 0.6 s lookup of 1 s"
