"""The whole path on simulated vLLM replicas: the EPP picks from live scraped metrics, the harness forwards
over HTTP like Envoy's ORIGINAL_DST cluster, and the replicas' streamed usage comes back through the EPP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest

from kvgate.datalayer.scraper import MetricsScraper
from kvgate.datalayer.store import EndpointStore
from kvgate.extproc.context import AddressIndex, build_epp_director
from kvgate.extproc.metrics import EppMetrics
from kvgate.extproc.server import EppServer, ServerOptions
from kvgate.extproc.session import SessionContext
from kvgate.extproc.testing import EnvoyHarness, channel

sim = pytest.importorskip("kvgate.sim.server")


@pytest.fixture
async def replicas() -> AsyncIterator[list[str]]:
    reps = [
        sim.Replica(sim.ReplicaConfig(model="sim-model", time_scale=20.0, seed=i), index=i) for i in range(3)
    ]
    for r in reps:
        await r.start()
    yield [f"127.0.0.1:{r.port}" for r in reps]
    for r in reps:
        await r.stop()


async def test_simulated_fleet_through_the_epp(replicas: list[str]) -> None:
    from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

    store = EndpointStore.from_addresses(replicas)
    director = build_epp_director(None, store, policy="kvgate")
    ctx = SessionContext(
        director, AddressIndex(store), clock=time.monotonic,
        observer=(metrics := EppMetrics()),
    )  # fmt: skip
    server = EppServer(ctx, ServerOptions(host="127.0.0.1", port=0, health_port=None, metrics_port=None))
    async with MetricsScraper(store, interval=0.05):
        await server.start()
        ch = channel(f"127.0.0.1:{server.port}")
        try:
            async with aiohttp.ClientSession() as http:
                harness = EnvoyHarness(pb_grpc.ExternalProcessorStub(ch), http)

                async def chat(i: int) -> tuple[int, str, bytes]:
                    body = {"model": "sim-model", "max_tokens": 8, "stream": True,
                            "stream_options": {"include_usage": True},
                            "messages": [{"role": "user", "content": f"question {i} " * 40}]}  # fmt: skip
                    res = await harness.request("POST", "/v1/chat/completions", orjson.dumps(body))
                    return res.status, res.destination, res.body

                results = await asyncio.gather(*(chat(i) for i in range(12)))
        finally:
            await ch.close()
            await server.stop(0)
    for status, dest, body in results:
        assert status == 200, (dest, body[-500:])
        assert body.rstrip().endswith(b"data: [DONE]"), body[-500:]
        assert dest in replicas
    # Every request's streamed usage reached the picker, and nothing is left in flight.
    assert metrics.completion_tokens._value.get() == 12 * 8
    assert metrics.prompt_tokens._value.get() > 0
    assert all(e.inflight.requests == 0 and e.inflight.pending_decode_tokens == 0 for e in store.all())
    assert any(e.metrics.updated_at is not None for e in store.all())  # the scraper read the replicas
