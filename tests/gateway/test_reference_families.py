"""The reference EPP's families that autoscalers and dashboards read, in both doors (review s18-qa M5):
``inference_objective_running_requests`` (in flight per model), ``inference_objective_request_sizes``,
``inference_objective_response_sizes``, ``inference_objective_normalized_time_per_output_token_seconds``,
``inference_pool_per_pod_queue_size`` (and llm-d's ``llm_d_epp_per_endpoint_queue_size``),
``inference_extension_info`` (and ``llm_d_epp_info``); with ``--workers`` each worker's series merge under
its ``worker`` label. Real servers on loopback; the backend holds each answer until the test releases it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import orjson
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import kvgate
from flowcontrol.test_doors import HeldBackend, eventually
from flowcontrol.test_preemption_doors import epp_door
from gateway.conftest import base_url, make_config, make_pools
from kvgate.extproc.metrics import EppMetrics
from kvgate.extproc.testing import EnvoyHarness
from kvgate.gateway.metrics import GatewayMetrics
from kvgate.gateway.server import GatewayServer
from kvgate.gateway.workers import merge_metrics
from kvgate.openai.labels import ModelLabels
from kvgate.openai.requeststats import RequestEnd, RequestStats
from kvgate.scheduling.types import Usage

RUNNING = "inference_objective_running_requests"
LABELS = {"model_name": "m", "target_model_name": "m"}


def _value(registry: object, name: str, labels: dict[str, str]) -> float:
    return registry.get_sample_value(name, labels) or 0.0  # type: ignore[attr-defined]


def _answer_bytes() -> int:
    """The size of ``HeldBackend``'s answer to model ``m`` (its ``created`` is fixed: 0 bytes of drift)."""
    out = {
        "id": "x",
        "object": "text_completion",
        "model": "m",
        "choices": [{"index": 0, "text": "ok", "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }
    return len(orjson.dumps(out))


def _check_sizes_and_ntpot(registry: object, body: bytes) -> None:
    assert _value(registry, "inference_objective_request_sizes_count", LABELS) == 1
    assert _value(registry, "inference_objective_request_sizes_sum", LABELS) == len(body)
    # 512 < the body's bytes: the reference's buckets (64, 128, ..., 1 GiB)
    assert _value(registry, "inference_objective_request_sizes_bucket", {**LABELS, "le": "64.0"}) == 0
    assert _value(registry, "inference_objective_request_sizes_bucket", {**LABELS, "le": "1024.0"}) == 1
    assert _value(registry, "inference_objective_response_sizes_count", LABELS) == 1
    assert _value(registry, "inference_objective_response_sizes_sum", LABELS) == _answer_bytes()
    # NTPOT: the request's duration over its 1 completion token.
    duration = _value(registry, "inference_objective_request_duration_seconds_sum", LABELS)
    assert _value(registry, "inference_objective_normalized_time_per_output_token_seconds_count", LABELS) == 1
    ntpot = _value(registry, "inference_objective_normalized_time_per_output_token_seconds_sum", LABELS)
    assert ntpot == duration > 0


@asynccontextmanager
async def _held_serve() -> AsyncIterator[tuple[HeldBackend, GatewayServer]]:
    """``kvgate serve`` in process (no scraping) in front of one ``HeldBackend``; both stopped at the end."""
    backend = await HeldBackend().start()
    cfg = make_config([backend.address])
    gw = GatewayServer(cfg, make_pools(cfg), scrape=False)
    await gw.start()
    try:
        yield backend, gw
    finally:
        await gw.stop(drain_timeout=1.0)
        await backend.stop()


async def test_serve_counts_running_requests_sizes_and_ntpot() -> None:
    body = orjson.dumps({"model": "m", "prompt": "x" * 600, "max_tokens": 1})
    async with _held_serve() as (backend, gw):
        r = gw.metrics.registry
        async with aiohttp.ClientSession() as http:

            async def send() -> int:
                async with http.post(base_url(gw) + "/v1/completions", data=body) as resp:
                    await resp.read()
                    return resp.status

            first, second = asyncio.ensure_future(send()), asyncio.ensure_future(send())
            await eventually(lambda: len(backend.arrivals) == 2, "both requests upstream")
            assert _value(r, RUNNING, {"model_name": "m"}) == 2  # fails before: no such family
            backend.release.release()
            backend.release.release()
            assert await first == await second == 200
        assert _value(r, RUNNING, {"model_name": "m"}) == 0
        assert _value(r, "inference_objective_request_sizes_count", LABELS) == 2
    for family in ("inference_extension_info", "llm_d_epp_info"):
        assert _value(r, family, {"commit": "", "build_ref": kvgate.__version__}) == 1


async def test_serve_observes_one_request_s_sizes_and_ntpot() -> None:
    body = orjson.dumps({"model": "m", "prompt": "x" * 600, "max_tokens": 1})
    async with _held_serve() as (backend, gw):
        backend.release.release()
        async with (
            aiohttp.ClientSession() as http,
            http.post(base_url(gw) + "/v1/completions", data=body) as resp,
        ):
            assert resp.status == 200
            assert len(await resp.read()) == _answer_bytes()
        _check_sizes_and_ntpot(gw.metrics.registry, body)


async def test_epp_counts_running_requests_sizes_and_ntpot() -> None:
    metrics = EppMetrics(models=ModelLabels(["m"]))  # (as ``kvgate epp --model m``)
    body = orjson.dumps({"model": "m", "prompt": "x" * 600, "max_tokens": 1})
    async with epp_door(metrics) as (backend, _ctx, ch):
        async with aiohttp.ClientSession() as http:
            harness = EnvoyHarness(pb_grpc.ExternalProcessorStub(ch), http)
            sent = asyncio.ensure_future(harness.request("POST", "/v1/completions", body, {}))
            await eventually(lambda: len(backend.arrivals) == 1, "the request upstream")
            assert _value(metrics.registry, RUNNING, {"model_name": "m"}) == 1  # fails before
            backend.release.release()
            res = await sent
            assert res.status == 200
        await eventually(lambda: _value(metrics.registry, RUNNING, {"model_name": "m"}) == 0, "running 0")
        await eventually(
            lambda: (
                _value(metrics.registry, "inference_objective_request_total", {**LABELS, "priority": "0"})
                == 1
            ),
            "counted",
        )
        _check_sizes_and_ntpot(metrics.registry, body)
    text = metrics.exposition().decode()
    assert 'inference_extension_info{build_ref="' in text and "llm_d_epp_info{" in text


def test_the_pool_s_queue_per_ready_endpoint_and_its_series_leaving() -> None:
    cfg = make_config(["127.0.0.1:9101", "127.0.0.1:9102"])
    (pool,) = make_pools(cfg)
    now = time.monotonic()
    a, b = pool.store.all()
    for ep, q in ((a, 3), (b, 0)):
        ep.metrics.waiting_queue_size = q
        ep.metrics.updated_at = now
        ep.answered_at = now
    pool.director.update_pool_metrics()  # type: ignore[attr-defined]

    def per_pod(family: str, label: str) -> dict[str, float]:
        return {
            s.labels[label]: s.value
            for f in REGISTRY.collect()
            if f.name == family
            for s in f.samples
            if s.labels.get("name") == "p" and s.labels[label] in (a.address, b.address)
        }

    want = {a.address: 3.0, b.address: 0.0}
    assert per_pod("inference_pool_per_pod_queue_size", "model_server_pod") == want  # fails before
    assert per_pod("llm_d_epp_per_endpoint_queue_size", "model_server_endpoint") == want
    a.healthy = False  # (ejected: no longer ready, its series goes)
    pool.director.update_pool_metrics()  # type: ignore[attr-defined]
    assert per_pod("inference_pool_per_pod_queue_size", "model_server_pod") == {b.address: 0.0}
    assert per_pod("llm_d_epp_per_endpoint_queue_size", "model_server_endpoint") == {b.address: 0.0}


def test_workers_merge_the_new_families_per_worker() -> None:
    """``kvgate serve --workers 2``: each worker's running count and histograms under its ``worker``
    label (``sum(inference_objective_running_requests)`` is the gateway's in-flight total)."""
    texts = []
    for n in (1, 2):
        m = GatewayMetrics()
        label = m.start("m", "m", 700)
        for _ in range(n):
            m.start("m", "m", 100)
        m.stop(label)
        m.observe(RequestEnd("m", "m", 0.5, Usage(prompt_tokens=3, completion_tokens=5), 300))
        texts.append(generate_latest(m.registry).decode())
    out = merge_metrics(texts).decode()
    fams = {f.name: f for f in text_string_to_metric_families(out)}
    assert {s.labels["worker"]: s.value for s in fams[RUNNING].samples} == {"0": 1.0, "1": 2.0}
    sizes = {
        s.labels["worker"]: s.value for s in fams["inference_objective_request_sizes"].samples
        if s.name.endswith("_count")
    }  # fmt: skip
    assert sizes == {"0": 2.0, "1": 3.0}
    ntpot = [
        s for s in fams["inference_objective_normalized_time_per_output_token_seconds"].samples
        if s.name.endswith("_sum")
    ]  # fmt: skip
    assert [(s.labels["worker"], s.value) for s in ntpot] == [("0", 0.1), ("1", 0.1)]
    assert out.count("# TYPE inference_objective_running_requests gauge") == 1
    assert out.count("# TYPE inference_extension_info gauge") == 1


def test_running_counts_stay_while_their_name_is_forgotten_only_when_idle() -> None:
    stats = RequestStats()
    a = stats.start("a", "a", 10)
    stats.stop(stats.start("b", "b", 10))
    stats.forget({"a", "b"})  # (a door forgets only names not in flight; "a" would be held)
    assert stats.running == {a: 1}
    stats.observe(
        RequestEnd("c", "c", 1.0, Usage(prompt_tokens=1, completion_tokens=0))
    )  # no output: no NTPOT
    child = stats.children[("c", "c", "", "")]
    assert child.ntpot.sum == 0 and sum(child.ntpot.counts) == 0
    assert sum(child.response_sizes.counts) == 0  # (-1: not known, not observed)


async def test_both_doors_observe_the_size_of_a_request_whose_client_left() -> None:
    """Review s18-qa2 L2: ``kvgate epp`` observed a request's size only with the series of a request that
    completed (FAILED before: a request whose Envoy stream was cancelled left ``request_sizes`` at 0);
    ``kvgate serve`` observes it at routing, as the reference at the request body. Now both: one request
    abandoned, one answered: two sizes, each once."""
    body = orjson.dumps({"model": "m", "prompt": "x" * 600, "max_tokens": 1})
    metrics = EppMetrics(models=ModelLabels(["m"]))
    async with epp_door(metrics) as (backend, _ctx, ch):
        async with aiohttp.ClientSession() as http:
            harness = EnvoyHarness(pb_grpc.ExternalProcessorStub(ch), http)
            gone = asyncio.ensure_future(harness.request("POST", "/v1/completions", body, {}))
            await eventually(lambda: len(backend.arrivals) == 1, "the request upstream")
            gone.cancel()  # Envoy's stream cancelled (its client left)
            await asyncio.gather(gone, return_exceptions=True)
            await eventually(lambda: _value(metrics.registry, RUNNING, {"model_name": "m"}) == 0, "running 0")
            backend.release.release()
            backend.release.release()
            assert (await harness.request("POST", "/v1/completions", body, {})).status == 200
        await eventually(
            lambda: (
                _value(metrics.registry, "inference_objective_request_total", {**LABELS, "priority": "0"})
                == 1
            ),
            "counted",
        )
    epp = metrics.registry

    async with _held_serve() as (backend, gw), aiohttp.ClientSession() as http:

        async def send() -> int:
            async with http.post(base_url(gw) + "/v1/completions", data=body) as resp:
                await resp.read()
                return resp.status

        gone = asyncio.ensure_future(send())
        await eventually(lambda: len(backend.arrivals) == 1, "the request upstream")
        gone.cancel()  # the client left
        await asyncio.gather(gone, return_exceptions=True)
        await eventually(lambda: _value(gw.metrics.registry, RUNNING, {"model_name": "m"}) == 0, "0")
        backend.release.release()
        backend.release.release()
        assert await send() == 200
    for registry in (epp, gw.metrics.registry):
        assert _value(registry, "inference_objective_request_sizes_count", LABELS) == 2
        assert _value(registry, "inference_objective_request_sizes_sum", LABELS) == 2 * len(body)
