"""Review qa33a F1, F2, F6 through ``kvgate epp --pool-name`` (the real CLI, a subprocess) on the API-server
double, requests through kvgate's Envoy stand-in to model servers on 127.0.0.1:0.

- F2: with its InferencePool read and no Ready pod (scale to zero, a rollout) the EPP stayed not ready
  (``no healthy endpoint``); the reference EPP's health is ``PoolHasSynced`` alone, and a ready EPP
  answers the pool's 503 itself where an unready one leaves Envoy (FailClose) its own error.
- F1: ``inference_pool_ready_pods`` had two writers in the EPP, the 1 s loop (Ready pods: 1) and the
  Director on a pick (ready endpoints: 2), so for one pod with two targetPorts it flapped under traffic.
  One meaning now, upstream's (``PodList(podsWithFreshMetrics)`` over its per-rank datastore): 2.
- F6: ``--engine-label-key`` was accepted and ignored: a pod labelled with that key was scraped with
  vLLM's metric names.
Each fails on bad6d5ca."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import orjson
import pytest
from aiohttp import web
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from k8s.eppproc import EppProc, launch_epp
from kvgate.extproc import testing
from kvgate.k8s import resources as R
from kvgate.k8s.apiserver import ApiServerDouble

WAIT_S = 45.0
POOL_V1 = "inference.networking.k8s.io/v1"


async def until(cond: Callable[[], Awaitable[bool]], what: str) -> None:
    end = time.monotonic() + WAIT_S
    while not await cond():
        assert time.monotonic() < end, f"{what} not met within {WAIT_S} s"
        await asyncio.sleep(0.1)


async def _server(metrics: str) -> tuple[web.AppRunner, int]:
    async def chat(request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        message = {"role": "assistant", "content": "hi"}
        usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
        choices = [{"index": 0, "message": message, "finish_reason": "stop"}]
        doc = {"id": "x", "object": "chat.completion", "model": body.get("model"), "choices": choices}
        return web.json_response({**doc, "usage": usage})

    async def scrape(_request: web.Request) -> web.Response:
        return web.Response(text=metrics)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/metrics", scrape)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


VLLM = "vllm:num_requests_waiting 0\nvllm:num_requests_running 0\nvllm:kv_cache_usage_perc 0\n"


def _pool(d: ApiServerDouble, ports: list[int]) -> None:
    spec = {
        "selector": {"matchLabels": {"app": "sim"}},
        "targetPorts": [{"number": p} for p in ports],
        "endpointPickerRef": {"name": "epp", "port": {"number": 9002}},
    }
    d.create({"apiVersion": POOL_V1, "kind": "InferencePool", "metadata": {"name": "llm"}, "spec": spec})


def _pod(d: ApiServerDouble, labels: dict[str, str] | None = None) -> None:
    d.create(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "p0", "labels": {"app": "sim", **(labels or {})}},
        }
    )
    d.set_pod_status("p0", ip="127.0.0.1", ready=True)


class _Envoy:
    def __init__(self, epp: EppProc, http: aiohttp.ClientSession) -> None:
        self.ch = testing.channel(f"127.0.0.1:{epp.grpc}")
        self.h = testing.EnvoyHarness(pb_grpc.ExternalProcessorStub(self.ch), http)

    async def chat(self) -> Any:
        body = {"model": "m1", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
        return await self.h.request("POST", "/v1/chat/completions", orjson.dumps(body), None)


@pytest.fixture
async def double() -> AsyncIterator[ApiServerDouble]:
    async with ApiServerDouble(bookmark_interval=0.2) as d:
        yield d


async def _epp(d: ApiServerDouble, tmp_path: Path, *flags: str) -> EppProc:
    return await launch_epp(d.url, tmp_path / "epp.log", "--pool-name", "llm", "--policy", "round-robin",
                            "--model", "m1", "--scrape-interval", "0.1", *flags)  # fmt: skip


async def test_epp_is_ready_once_its_pool_is_read_with_no_pod(
    double: ApiServerDouble, tmp_path: Path
) -> None:
    epp = await _epp(double, tmp_path)
    try:
        _pool(double, [8000])
        await until(lambda: _status(epp, 200), "/readyz 200 with the pool read and no pod")
        await until(lambda: _grpc_ready(epp), "gRPC readiness SERVING")  # (refreshed each second)
        async with aiohttp.ClientSession() as http:
            envoy = _Envoy(epp, http)
            try:
                r = await envoy.chat()  # the EPP's own answer for an empty pool
                assert r.status == 503 and b"no ready endpoint" in r.body, (r.status, r.body)
            finally:
                await envoy.ch.close()
        double.delete(R.INFERENCE_POOL, "llm", "default")
        await until(lambda: _status(epp, 503), "/readyz 503 once the pool is gone")
    finally:
        await epp.stop()


async def _status(epp: EppProc, want: int) -> bool:
    return (await epp.readyz())[0] == want


async def _grpc_ready(epp: EppProc) -> bool:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{epp.health}") as ch:
        got = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="readiness"))
    return bool(got.status == health_pb2.HealthCheckResponse.SERVING)


async def test_epp_ready_pods_reads_one_value_under_traffic(double: ApiServerDouble, tmp_path: Path) -> None:
    (ra, a), (rb, b) = await _server(VLLM), await _server(VLLM)
    epp = await _epp(double, tmp_path)
    gauge = 'inference_pool_ready_pods{name="llm"}'
    try:
        _pod(double)
        _pool(double, [a, b])  # one Ready pod, two ranks

        async def two() -> bool:
            return await epp.metric(gauge) == f"{gauge} 2.0"

        await until(two, "both ranks counted")
        seen: set[str] = set()
        async with aiohttp.ClientSession() as http:
            envoy = _Envoy(epp, http)
            try:
                # Three of the EPP's 1 s refreshes, beside picks (a pick refreshes at most once a second).
                end = time.monotonic() + 3.0
                while time.monotonic() < end:
                    assert (await envoy.chat()).status == 200
                    seen.add(await epp.metric(gauge))
            finally:
                await envoy.ch.close()
        assert seen == {f"{gauge} 2.0"}, seen
        assert (
            await epp.metric('llm_d_epp_ready_endpoints{name="llm"}')
            == 'llm_d_epp_ready_endpoints{name="llm"} 2.0'
        )
    finally:
        await epp.stop()
        await ra.cleanup()
        await rb.cleanup()


async def test_epp_engine_label_key_names_the_engine(double: ApiServerDouble, tmp_path: Path) -> None:
    runner, port = await _server(
        "sglang:num_queue_reqs 7\nsglang:num_running_reqs 1\nsglang:token_usage 0.5\n"
    )
    epp = await _epp(double, tmp_path, "--engine-label-key", "example.com/engine")
    gauge = 'inference_pool_average_queue_size{name="llm"}'
    try:
        _pod(
            double, {"example.com/engine": "sglang", "llm-d.ai/engine-type": "vllm"}
        )  # (the flag's key only)
        _pool(double, [port])

        async def seven() -> bool:
            return await epp.metric(gauge) == f"{gauge} 7.0"

        await until(seven, "the pod scraped with SGLang's metric names")
        assert "--engine-label-key" not in epp.logs()  # (not among the ignored reference flags)
    finally:
        await epp.stop()
        await runner.cleanup()
