"""LoRA and session affinity behind ``kvgate epp``, end to end on simulated vLLM replicas.

Three replicas each hold a different adapter (``max_loras`` 1) and are kept busy with it, so their
``vllm:lora_requests_info`` reports it running. The EPP is configured the way ``kvgate epp`` is
(``extproc.config.load`` with ``--adapter`` and ``--session-header``), the Envoy-playing client forwards
each request to the endpoint it picked, and a request for an adapter must land on the one replica
that holds it (the others would answer 404: they do not have it). Before the request model was
shared, the EPP scored every request as adapter-free and split them over the replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from kvgate.datalayer.scraper import MetricsScraper
from kvgate.datalayer.store import EndpointStore
from kvgate.extproc.config import load
from kvgate.extproc.context import build_context
from kvgate.extproc.server import EppServer, ServerOptions
from kvgate.extproc.testing import EnvoyHarness, channel
from kvgate.sim import server as sim

ADAPTERS = ("sql-lora", "chat-lora", "code-lora")
# LoRA affinity decides, load breaks ties. (kvgate's default policy weighs its cost scorer 2:1 over LoRA
# affinity, so with a scrape-lagged view of the holder's last request it may prefer an idle replica that
# would have to load the adapter; this test is about the EPP telling the picker which adapter it is.)
LORA_PICKER = """
kind: EndpointPickerConfig
plugins:
- type: lora-affinity-scorer
- type: queue-scorer
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: lora-affinity-scorer
    weight: 10
  - pluginRef: queue-scorer
    weight: 1
"""
SESSION_PICKER = """
kind: EndpointPickerConfig
plugins:
- type: session-affinity-scorer
- type: queue-scorer
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: session-affinity-scorer
    weight: 10
  - pluginRef: queue-scorer
    weight: 1
"""


@pytest.fixture
async def replicas() -> AsyncIterator[list[sim.Replica]]:
    reps = [
        sim.Replica(
            sim.ReplicaConfig(model="sim-model", time_scale=2.0, seed=i, max_loras=1, lora_adapters=(a,)),
            index=i,
        )
        for i, a in enumerate(ADAPTERS)
    ]
    for r in reps:
        await r.start()
    yield reps
    for r in reps:
        await r.stop()


@contextlib.asynccontextmanager
async def epp_harness(
    addresses: list[str], *, config_text: str | None = None, session_header: str | None = None
) -> AsyncIterator[tuple[EnvoyHarness, EndpointStore]]:
    cfg = load(
        config=None, pool_name=None, endpoints=",".join(addresses), models=["sim-model"], policy="kvgate",
        engine="vllm", config_file=None, config_text=config_text, conformance=False,
        adapters=list(ADAPTERS), session_header=session_header,
    )  # fmt: skip
    store = EndpointStore.from_addresses(cfg.pool.endpoints, pool=cfg.pool.name, engine=cfg.pool.engine)
    server = EppServer(
        build_context(cfg, store, clock=time.monotonic),
        ServerOptions(host="127.0.0.1", port=0, health_port=None, metrics_port=None),
    )
    async with MetricsScraper(store, interval=0.05):
        await server.start()
        ch = channel(f"127.0.0.1:{server.port}")
        try:
            async with aiohttp.ClientSession() as http:
                yield EnvoyHarness(pb_grpc.ExternalProcessorStub(ch), http), store
        finally:
            await ch.close()
            await server.stop(0)


async def _hold(http: aiohttp.ClientSession, replica: sim.Replica, adapter: str, stop: asyncio.Event) -> None:
    """Keep one long streamed request for ``adapter`` running on ``replica`` until ``stop``."""
    body = {"model": adapter, "prompt": "keep me busy", "max_tokens": 5000, "stream": True}
    async with http.post(f"{replica.url}/v1/completions", json=body) as resp:
        assert resp.status == 200
        reader = asyncio.ensure_future(resp.content.read())
        await stop.wait()
        reader.cancel()


async def test_adapter_requests_go_to_the_replica_holding_the_adapter(replicas: list[sim.Replica]) -> None:
    addresses = [f"127.0.0.1:{r.port}" for r in replicas]
    stop = asyncio.Event()
    async with (
        aiohttp.ClientSession() as bg,
        epp_harness(addresses, config_text=LORA_PICKER) as (harness, store),
    ):
        holders = [
            asyncio.create_task(_hold(bg, r, a, stop)) for r, a in zip(replicas, ADAPTERS, strict=True)
        ]
        try:
            deadline = time.monotonic() + 10
            while not all(ep.metrics.running_loras for ep in store.all()):
                assert time.monotonic() < deadline, "the scraper never saw the adapters running"
                await asyncio.sleep(0.02)
            seen: Counter[str] = Counter()
            for i in range(30):
                body = {"model": "sql-lora", "prompt": f"SELECT {i} FROM t", "max_tokens": 4}
                res = await harness.request("POST", "/v1/completions", orjson.dumps(body))
                assert res.status == 200, (i, res.destination, res.body[:300])
                seen[res.destination] += 1
        finally:
            stop.set()
            await asyncio.gather(*holders, return_exceptions=True)
    assert seen == {addresses[0]: 30}


async def test_session_affinity_uses_the_configured_header(replicas: list[sim.Replica]) -> None:
    addresses = [f"127.0.0.1:{r.port}" for r in replicas]
    async with epp_harness(addresses, config_text=SESSION_PICKER, session_header="X-Conversation") as (h, _s):
        served: dict[str, list[str]] = {"conv-1": [], "conv-2": [], "conv-3": []}
        for i in range(8):
            for conv, dests in served.items():
                body = {"model": "sim-model", "messages": [{"role": "user", "content": f"{conv} turn {i}"}],
                        "max_tokens": 2}  # fmt: skip
                res = await h.request(
                    "POST", "/v1/chat/completions", orjson.dumps(body), {"x-conversation": conv}
                )
                assert res.status == 200, res.body[:300]
                dests.append(res.destination)
    for conv, dests in served.items():
        assert len(set(dests)) == 1, (conv, Counter(dests))
