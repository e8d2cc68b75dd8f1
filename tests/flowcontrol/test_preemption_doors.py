"""Preemption end to end through ``kvgate serve``, against a simulated vLLM replica over HTTP.

The replica runs 50x slower than real time, so a sheddable request's prefill (its first token) takes
seconds of wall time; the concurrency detector admits one request. A critical request arriving then
stops the sheddable one: its client gets a 429, the gateway drops the upstream connection (the replica
aborts the request) and the critical request is served. Only outcomes are asserted, no timings.

``kvgate epp`` (through the Envoy-playing harness) can stop a streamed request only until it answers
the response headers: here the backend holds the sheddable request's response (``HeldBackend``), so
the critical request preempts it and the answer to its response headers is a 429 ``ImmediateResponse``.
Its session-level cases are in ``tests/extproc/test_preemption_session.py``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from flowcontrol.test_doors import HeldBackend, eventually
from kvgate.config.gateway import parse_gateway_config
from kvgate.datalayer.store import EndpointStore
from kvgate.extproc.config import EppConfig
from kvgate.extproc.context import SessionContext, build_context
from kvgate.extproc.metrics import EppMetrics
from kvgate.extproc.server import EppServer, ServerOptions
from kvgate.extproc.testing import EnvoyHarness, channel
from kvgate.gateway.pools import build_pool
from kvgate.gateway.server import GatewayServer
from kvgate.requestcontrol.director import Director
from kvgate.sim.server import Replica, ReplicaConfig

WAIT = 20.0  # generous: the CI machine is loaded


def gateway_config(port: int, model: str = "sim-model") -> dict[str, Any]:
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "objectives": [{"name": "critical", "priority": 10}, {"name": "batch", "priority": -1}],
        "pools": [
            {
                "name": "p",
                "endpoints": [f"127.0.0.1:{port}"],
                "models": [model],
                "endpointPickerConfig": {
                    "featureGates": ["flowControl"],
                    "flowControl": {"preemption": True},
                    "saturationDetector": {
                        "type": "concurrency-detector",
                        "parameters": {"maxConcurrency": 1},
                    },
                    "plugins": [{"type": "queue-scorer"}],
                    "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": "queue-scorer"}]}],
                },
            }
        ],
    }


@asynccontextmanager
async def serve_door() -> AsyncIterator[tuple[Replica, GatewayServer, Any]]:
    """A simulated replica (``sim-model``, 50x slower than real time, 4 sequences) behind ``kvgate serve``
    (``gateway_config``): the replica, the gateway and its pool's director; both stopped after."""
    replica = Replica(ReplicaConfig(model="sim-model", time_scale=0.02, max_num_seqs=4, seed=0))
    await replica.start()
    gw: GatewayServer | None = None
    try:
        cfg = parse_gateway_config(gateway_config(replica.port))
        pools = [build_pool(p) for p in cfg.pools]
        gw = GatewayServer(cfg, pools, scrape=False)
        await gw.start()
        yield replica, gw, pools[0].director
    finally:
        if gw is not None:
            await gw.stop(drain_timeout=1.0)
        await replica.stop()


async def critical_after_sheddable(
    replica: Replica,
    send: Callable[[str, str, int], Awaitable[tuple[int, Any]]],
    batch_tokens: int,
    wait: float,
) -> tuple[int, Any]:
    """``send(objective, text, max_tokens)``: a sheddable request of a long prompt (its prefill alone takes
    about a second of wall time at the replica's time scale) and ``batch_tokens`` tokens, then, once the
    replica has it, a critical one, which must succeed: the sheddable request's status and body."""
    batch = asyncio.ensure_future(send("batch", "words " * 500, batch_tokens))
    deadline = time.monotonic() + wait
    while replica.engine.num_running + replica.engine.num_waiting == 0:
        assert time.monotonic() < deadline, "the sheddable request never reached the replica"
        await asyncio.sleep(0.01)
    assert not batch.done()
    status, _ = await asyncio.wait_for(send("critical", "hi", 1), wait)
    assert status == 200
    return await asyncio.wait_for(batch, wait)


@asynccontextmanager
async def epp_door(
    metrics: EppMetrics | None = None,
) -> AsyncIterator[tuple[HeldBackend, SessionContext, Any]]:
    """A ``HeldBackend`` behind ``kvgate epp`` (``gateway_config``, model ``m``; ``metrics`` its observer and
    server metrics) and a gRPC channel to it: the channel closed, the EPP and the backend stopped after."""
    backend = await HeldBackend().start()
    cfg = parse_gateway_config(gateway_config(backend.port, model="m"))
    store = EndpointStore.from_addresses([backend.address])
    ctx = build_context(EppConfig(pool=cfg.pools[0], gateway=cfg, picker_config=cfg.pools[0].picker_config),
                        store, clock=time.monotonic, observer=metrics)  # fmt: skip
    epp = EppServer(
        ctx, ServerOptions(host="127.0.0.1", port=0, health_port=None, metrics_port=None), metrics=metrics
    )
    await epp.start()
    ch = channel(f"127.0.0.1:{epp.port}")
    try:
        yield backend, ctx, ch
    finally:
        await ch.close()
        await epp.stop(0)
        await backend.stop()


async def send_over(harness: EnvoyHarness, objective: str, prompt: str) -> tuple[int, bytes]:
    """A streamed completion of ``prompt`` for model ``m`` under ``objective``: its status and body."""
    body = orjson.dumps({"model": "m", "prompt": prompt, "max_tokens": 1, "stream": True})
    res = await harness.request("POST", "/v1/completions", body, {"x-gateway-inference-objective": objective})
    return res.status, res.body


@pytest.mark.parametrize("stream", [True, False])
async def test_a_critical_request_preempts_a_sheddable_one_without_a_first_token(stream: bool) -> None:
    """Streamed: the sheddable request is stopped. Not streamed: it shows no first token before its
    end, so it is never preemptible (it could be deep into generation): it completes, and the critical
    request waits for the capacity instead."""
    async with serve_door() as (replica, gw, director):
        url = f"http://127.0.0.1:{gw.port}/v1/completions"

        async def send(objective: str, prompt: str, max_tokens: int) -> tuple[int, dict[str, Any]]:
            body = {"model": "sim-model", "prompt": prompt, "max_tokens": max_tokens, "stream": stream}
            hdrs = {"x-gateway-inference-objective": objective}
            async with http.post(url, json=body, headers=hdrs) as r:
                raw = await r.read()
                if r.status != 200:
                    return r.status, orjson.loads(raw)
                return r.status, {"body": raw.decode()}

        async with aiohttp.ClientSession() as http:
            # Not streamed: a few tokens, so the critical request's wait for it stays well within WAIT.
            deadline = time.monotonic() + WAIT
            b_status, b_body = await critical_after_sheddable(replica, send, 64 if stream else 4, WAIT)
        if not stream:
            assert b_status == 200, b_body
            assert sum(replica.counters.finished.values()) == 2
            assert director.store.all()[0].inflight.requests == 0
            return
        assert b_status == 429, b_body
        assert "preempted" in b_body["error"]["message"]
        # The replica stopped generating for the preempted request: nothing left running, and only
        # the critical request finished (an aborted request is not counted as finished).
        while replica.engine.num_running + replica.engine.num_waiting > 0:
            assert time.monotonic() < deadline + WAIT, "the preempted request was not aborted upstream"
            await asyncio.sleep(0.02)
        assert sum(replica.counters.finished.values()) == 1
        assert director.store.all()[0].inflight.requests == 0  # every charge released exactly once


async def test_the_epp_door_answers_the_preempted_requests_response_headers_with_a_429() -> None:
    async with epp_door() as (backend, ctx, ch), aiohttp.ClientSession() as http:
        harness = EnvoyHarness(pb_grpc.ExternalProcessorStub(ch), http)
        batch = asyncio.ensure_future(send_over(harness, "batch", "sheddable"))
        await eventually(lambda: backend.arrivals == ["sheddable"], "the sheddable request upstream")
        critical = asyncio.ensure_future(send_over(harness, "critical", "critical"))
        # Placed at once although the one slot is taken: the sheddable request was preempted.
        await eventually(lambda: backend.arrivals == ["sheddable", "critical"], "the critical request")
        director = ctx.director
        assert isinstance(director, Director)
        assert director.store.all()[0].inflight.requests == 1
        backend.release.release()
        backend.release.release()
        status, body = await asyncio.wait_for(batch, WAIT)
        assert status == 429 and b"preempted" in body, body
        assert (await asyncio.wait_for(critical, WAIT))[0] == 200
        await eventually(lambda: director.store.all()[0].inflight.requests == 0, "all released")
