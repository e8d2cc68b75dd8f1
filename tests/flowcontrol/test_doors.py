"""Flow control end to end through both front doors, against a real HTTP backend on loopback.

``kvgate serve`` is driven over HTTP with aiohttp; ``kvgate epp`` with the Envoy-playing client of
``kvgate.extproc.testing`` (the ext_proc stream, then ORIGINAL_DST forwarding to the chosen endpoint).
The backend holds every request until the test releases it, so "the pool is saturated" is exact: the
concurrency detector allows one request in flight, the rest wait in the EPP.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from gateway.conftest import make_config, make_pools
from gateway.handler_server import RouteServer
from kvgate.datalayer.store import EndpointStore
from kvgate.extproc.config import EppConfig
from kvgate.extproc.context import build_context
from kvgate.extproc.server import EppServer, ServerOptions
from kvgate.extproc.session import SessionContext
from kvgate.extproc.testing import EnvoyHarness, channel
from kvgate.gateway.server import GatewayServer
from kvgate.requestcontrol.director import Director
from kvgate.scheduling.types import InferenceRequest

WAIT = 10.0  # generous: the CI machine is loaded


class HeldBackend(RouteServer):
    """Answers each completion only when the test releases it; records the arrival order."""

    shutdown_timeout = 0.2

    def __init__(self) -> None:
        super().__init__()
        self.arrivals: list[str] = []
        self.release = asyncio.Semaphore(0)

    async def _answer(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        self.arrivals.append(body["prompt"])
        await self.release.acquire()
        out = {
            "id": "x",
            "object": "text_completion",
            "model": body["model"],
            "choices": [{"index": 0, "text": "ok", "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
        }
        return web.Response(body=orjson.dumps(out), content_type="application/json")


def picker_config(**flow: Any) -> dict[str, Any]:
    return {
        "featureGates": ["flowControl"],
        "flowControl": {"defaultRequestTTL": "30s", "fairnessPolicy": "round-robin", **flow},
        "saturationDetector": {"type": "concurrency-detector", "parameters": {"maxConcurrency": 1}},
        "plugins": [{"type": "queue-scorer"}],
        "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": "queue-scorer"}]}],
    }


async def eventually(cond: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


Send = Callable[[str, str], Awaitable[tuple[int, dict[str, Any]]]]


def completion_body(prompt: str) -> bytes:
    return orjson.dumps({"model": "m", "prompt": prompt, "max_tokens": 1})


async def started_epp(
    backend: HeldBackend, flow: dict[str, Any] | None = None, **options: Any
) -> tuple[EppServer, SessionContext]:
    """``kvgate epp`` with flow control (``picker_config(**flow)``) before ``backend``, its gRPC on port 0
    (``options``: the rest of its ``ServerOptions``), started; the caller stops it."""
    cfg = make_config([backend.address], extra={})
    cfg.pools[0].picker_config = picker_config(**(flow or {}))
    store = EndpointStore.from_addresses([backend.address])
    epp_cfg = EppConfig(pool=cfg.pools[0], gateway=cfg, picker_config=cfg.pools[0].picker_config)
    ctx = build_context(epp_cfg, store, clock=time.monotonic)
    epp = EppServer(
        ctx, ServerOptions(host="127.0.0.1", port=0, health_port=None, metrics_port=None, **options)
    )
    await epp.start()
    return epp, ctx


class Door:
    def __init__(self, name: str, send: Send, director: Director, backend: HeldBackend) -> None:
        self.name, self.send, self.director, self.backend = name, send, director, backend

    @property
    def queued(self) -> int:
        assert self.director.flow is not None
        return len(self.director.flow)

    def start(self, prompt: str, flow: str = "default") -> asyncio.Task[tuple[int, dict[str, Any]]]:
        return asyncio.ensure_future(self.send(prompt, flow))


@pytest.fixture(params=["serve", "epp"])
async def door_factory(request: pytest.FixtureRequest) -> AsyncIterator[Callable[..., Awaitable[Door]]]:
    cleanups: list[Callable[[], Awaitable[None]]] = []

    async def make(idle_s: float = 600.0, **flow: Any) -> Door:
        backend = await HeldBackend().start()
        cleanups.append(backend.stop)
        http = aiohttp.ClientSession()
        cleanups.append(http.close)
        body = completion_body
        if request.param == "serve":
            cfg = make_config([backend.address], extra={})
            cfg.pools[0].picker_config = picker_config(**flow)
            pools = make_pools(cfg)
            gw = GatewayServer(cfg, pools, scrape=False)
            await gw.start()
            cleanups.append(lambda: gw.stop(drain_timeout=0.5))

            async def send_http(prompt: str, flow_id: str) -> tuple[int, dict[str, Any]]:
                url = f"http://127.0.0.1:{gw.port}/v1/completions"
                hdrs = {"content-type": "application/json", "x-gateway-inference-fairness-id": flow_id}
                async with http.post(url, data=body(prompt), headers=hdrs) as r:
                    return r.status, orjson.loads(await r.read())

            director = pools[0].director
            assert isinstance(director, Director)
            return Door("serve", send_http, director, backend)

        epp, ctx = await started_epp(backend, flow, stream_idle_timeout_s=idle_s)
        ch = channel(f"127.0.0.1:{epp.port}")
        cleanups.append(lambda: epp.stop(0))
        cleanups.append(ch.close)
        harness = EnvoyHarness(pb_grpc.ExternalProcessorStub(ch), http)

        async def send_epp(prompt: str, flow_id: str) -> tuple[int, dict[str, Any]]:
            res = await harness.request(
                "POST", "/v1/completions", body(prompt), {"x-llm-d-inference-fairness-id": flow_id}
            )
            return res.status, orjson.loads(res.body)

        assert isinstance(ctx.director, Director)
        return Door("epp", send_epp, ctx.director, backend)

    yield make
    for c in reversed(cleanups):
        await c()


async def test_saturated_requests_wait_in_the_epp_and_leave_round_robin(door_factory: Any) -> None:
    d: Door = await door_factory()
    first = d.start("a0", "a")
    await eventually(lambda: d.backend.arrivals == ["a0"], "the first request at the backend")
    tasks = [first]
    for prompt, flow in (("b0", "b"), ("b1", "b"), ("b2", "b"), ("c0", "c")):
        tasks.append(d.start(prompt, flow))
        await eventually(lambda n=len(tasks) - 1: d.queued == n, f"{prompt} queued")
    assert d.backend.arrivals == ["a0"]  # nothing else reached the server: it waits in the EPP
    for n in range(2, 6):
        d.backend.release.release()
        await eventually(lambda n=n: len(d.backend.arrivals) == n, f"dispatch {n}")
    d.backend.release.release()
    # Late binding + round robin between flows: b, then c's only request, then the rest of b.
    assert d.backend.arrivals == ["a0", "b0", "c0", "b1", "b2"]
    results = await asyncio.wait_for(asyncio.gather(*tasks), WAIT)
    assert [s for s, _ in results] == [200] * 5


async def test_ttl_expiry_is_503_and_a_full_band_is_429(door_factory: Any) -> None:
    d: Door = await door_factory(defaultRequestTTL="300ms", priorityBands=[{"priority": 0, "maxRequests": 1}])
    first = d.start("held")
    await eventually(lambda: d.backend.arrivals == ["held"], "the first request at the backend")
    waiting = d.start("waits")
    await eventually(lambda: d.queued == 1, "one queued")
    status, err = await asyncio.wait_for(d.send("rejected", "x"), WAIT)
    assert status == 429 and "band 0 is full" in err["error"]["message"], err
    status, err = await asyncio.wait_for(waiting, WAIT)
    assert status == 503 and "TTL" in err["error"]["message"], err
    assert d.backend.arrivals == ["held"]
    d.backend.release.release()
    assert (await asyncio.wait_for(first, WAIT))[0] == 200


async def test_client_gone_leaves_the_queue(door_factory: Any) -> None:
    d: Door = await door_factory()
    first = d.start("held")
    await eventually(lambda: d.backend.arrivals == ["held"], "the first request at the backend")
    gone = d.start("gone")
    await eventually(lambda: d.queued == 1, "one queued")
    gone.cancel()  # closes the HTTP connection / the ext_proc stream
    await eventually(lambda: d.queued == 0, "the cancelled request to leave the queue")
    after = d.start("after")
    await eventually(lambda: d.queued == 1, "the next request queued")
    d.backend.release.release()
    await eventually(lambda: d.backend.arrivals == ["held", "after"], "the next request dispatched")
    d.backend.release.release()
    assert (await asyncio.wait_for(after, WAIT))[0] == 200
    assert (await asyncio.wait_for(first, WAIT))[0] == 200


async def test_empty_pool_is_503_at_once(door_factory: Any) -> None:
    d: Door = await door_factory()
    for ep in d.director.store.all():
        ep.healthy = False
    status, err = await asyncio.wait_for(d.send("nobody", "x"), WAIT)
    assert status == 503, err
    assert d.queued == 0 and d.backend.arrivals == []


async def test_a_stream_waiting_in_the_queue_is_not_idle(door_factory: Any) -> None:
    d: Door = await door_factory(idle_s=0.3)  # kvgate epp cancels streams silent this long
    # Capacity taken by a request that is not an ext_proc stream (the sweeper would cut a held one).
    other = InferenceRequest("elsewhere", "m")
    ep = d.director.store.all()[0]
    d.director.on_dispatched(other, ep)
    waiting = d.start("waits")
    await eventually(lambda: d.queued == 1, "one queued")
    await asyncio.sleep(1.0)  # > 3 idle timeouts while queued
    assert d.queued == 1 and not waiting.done()
    d.director.on_finished(other, ep, None, True)
    await eventually(lambda: d.backend.arrivals == ["waits"], "the queued request dispatched")
    d.backend.release.release()
    assert (await asyncio.wait_for(waiting, WAIT))[0] == 200
