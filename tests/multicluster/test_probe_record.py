"""The global router's record of which addresses last answered a probe (``GlobalRouter._live_at``) keeps only
what still stands (closing note s19: it was never pruned, one entry for every gateway and pod ever probed):
an answer stands ``ttl_s``, so older ones go as new ones come; at most ``LIVE_MAX`` are kept; a reload drops
the addresses no cluster holds. Real probes (``GET /healthz``) of loopback listeners, pods churning; time
injected."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from kvgate.multicluster import router as router_mod
from kvgate.multicluster.clusters import ClustersConfig, ClusterSpec
from kvgate.multicluster.router import GlobalRouter


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
    await writer.drain()
    writer.close()


@pytest.fixture
async def addresses() -> AsyncIterator[list[str]]:
    """40 loopback listeners answering any request (a probe's 404: alive): pods that come and go."""
    servers = [await asyncio.start_server(_answer, "127.0.0.1", 0) for _ in range(40)]
    yield [f"127.0.0.1:{s.sockets[0].getsockname()[1]}" for s in servers]
    for s in servers:
        s.close()


async def test_the_record_keeps_the_answers_that_stand_and_drops_what_no_cluster_holds(
    addresses: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [100.0]
    gw_a, gw_b, pods = addresses[0], addresses[1], addresses[2:]
    specs = (ClusterSpec("a", gateway=gw_a, epp="127.0.0.1:1"), ClusterSpec("b", gateway=gw_b))
    router = GlobalRouter(ClustersConfig(specs, ttl_s=3.0), "round-robin", clock=lambda: now[0])
    await router.start()
    try:
        # Churn: a new pod of cluster a answers every 0.5 s; an answer stands 3 s.
        for pod in pods[:30]:
            assert await router._live(f"http://{pod}/v1/completions", "a")
            now[0] += 0.5
            assert len(router._live_at) <= 7, len(router._live_at)  # (3 s / 0.5 s, and the newest)
        # Bounded however fast they come: LIVE_MAX (here 4) at the same instant.
        monkeypatch.setattr(router_mod, "LIVE_MAX", 4)
        for pod in pods[30:]:
            assert await router._live(f"http://{pod}/v1/completions", "a")
        assert list(router._live_at) == pods[-4:]
        # A reload drops the addresses no cluster holds: cluster a gone; b's old gateway (it moved).
        assert await router._live(f"http://{gw_b}/v1/completions", "b")
        assert gw_b in router._live_at
        router.apply(ClustersConfig((ClusterSpec("b", gateway=gw_a),), ttl_s=3.0))
        assert router._live_at == {}
        # A stale answer is not taken for a live one, and is replaced by the new answer.
        assert await router._live(f"http://{gw_a}/v1/completions", "b")
        first = router._live_at[gw_a][1]
        now[0] += 10.0
        assert await router._live(f"http://{gw_a}/v1/completions", "b")
        assert router._live_at[gw_a][1] == first + 10.0 and len(router._live_at) == 1
    finally:
        await router.close()
