"""The EPP door counts each request it picked or refused once, as ``kvgate serve`` does
(``tests/gateway/test_error_counts.py``): a refused request once on ``kvgate_epp_rejections_total``
under the status its client gets (the gateway door's ``error_code``), and every picked request leaves
``kvgate_epp_inflight_requests`` once, however it ends. The real gRPC server on loopback, driven by the
Envoy-playing harness, against a backend that holds each reply until the test releases it."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from flowcontrol.test_doors import HeldBackend, eventually
from flowcontrol.test_preemption_doors import epp_door, gateway_config, send_over
from gateway.backend import Backend
from gateway.conftest import (
    closing_backend_gateway,
    error_codes,
    error_counts,
    labelled_counts,
    make_config,
    running_gateway,
)
from gateway.handler_server import serve_app
from kvgate.config.gateway import parse_gateway_config
from kvgate.extproc.metrics import EppMetrics
from kvgate.extproc.testing import EnvoyHarness, Exchange
from kvgate.gateway.pools import build_pool
from kvgate.gateway.server import GatewayServer
from kvgate.multicluster.clusters import ClustersConfig, ClusterSpec
from kvgate.multicluster.serve import GlobalGateway
from kvgate.openai.labels import ModelLabels
from kvgate.requestcontrol.director import Director

WAIT = 20.0  # generous: the CI machine is loaded


def _value(metrics: EppMetrics, name: str, labels: dict[str, str] | None = None) -> float:
    return metrics.registry.get_sample_value(name, labels or {}) or 0.0


async def test_a_preempted_request_is_rejected_once_and_leaves_the_in_flight_gauge() -> None:
    """Preempted before its response headers: one 429 on ``kvgate_epp_rejections_total`` (as the
    gateway door counts it once under ``429``), and its pick no longer in flight. Before the fix the
    gauge stayed at 1 forever: ``Session._stop`` marked the request finished for the director, so the
    observer never heard its end."""
    metrics = EppMetrics()  # (as ``kvgate epp``: the sessions' observer and the server's metrics)
    async with epp_door(metrics) as (backend, ctx, ch):
        async with aiohttp.ClientSession() as http:
            harness = EnvoyHarness(pb_grpc.ExternalProcessorStub(ch), http)
            batch = asyncio.ensure_future(send_over(harness, "batch", "sheddable"))
            await eventually(lambda: backend.arrivals == ["sheddable"], "the sheddable request upstream")
            critical = asyncio.ensure_future(send_over(harness, "critical", "critical"))
            await eventually(lambda: backend.arrivals == ["sheddable", "critical"], "the critical request")
            backend.release.release()
            backend.release.release()
            status, body = await asyncio.wait_for(batch, WAIT)
            assert status == 429 and b"preempted" in body, body
            assert (await asyncio.wait_for(critical, WAIT))[0] == 200
            director = ctx.director
            assert isinstance(director, Director)
            await eventually(lambda: director.store.all()[0].inflight.requests == 0, "all released")
            await eventually(
                lambda: (
                    _value(metrics, "kvgate_epp_responses_total", {"ok": "true", "streaming": "false"}) == 1
                ),
                "the critical response counted",
            )
        assert _value(metrics, "kvgate_epp_picks_total") == 2
        assert _value(metrics, "kvgate_epp_rejections_total", {"status": "429"}) == 1
        # Once on the error metric too, under 429 (its model's label: ``m`` once served, else ``other``).
        assert error_codes(metrics.registry) == {"429": 1}
        assert _value(metrics, "kvgate_epp_inflight_requests") == 0
        # The preempted pick ended not ok, before any response headers (as a request whose client left).
        assert _value(metrics, "kvgate_epp_responses_total", {"ok": "false", "streaming": "false"}) == 1


async def test_body_refusals_are_counted_as_the_gateway_door_counts_them(start_epp) -> None:
    """The same three refused bodies through both doors: each counted once, under the same status
    (``kvgate_epp_rejections_total{status}`` and ``inference_objective_request_error_total{error_code}``)."""
    bodies = (
        b"not json",
        b'{"model": 3, "prompt": "x"}',
        b'{"model": "m", "prompt": "' + b"x" * 2000 + b'"}',
    )
    async with closing_backend_gateway(drain_timeout=0.5) as (gw, port):  # (its endpoint is never reached)
        async with aiohttp.ClientSession() as s:
            for body in bodies:
                async with s.post(f"http://127.0.0.1:{gw.port}/v1/completions", data=body) as r:
                    await r.read()
        gateway_door = error_codes(gw.metrics.registry)
    epp = await start_epp([f"127.0.0.1:{port}"], max_request_body=1000)
    headers = {":method": "POST", ":path": "/v1/completions", "content-type": "application/json"}
    for body in bodies:
        async with Exchange(epp.stub) as ex:
            out = await ex.send_request(headers, body, chunk_size=400)
        assert out.immediate is not None
    epp_door = labelled_counts(epp.metrics.registry, "kvgate_epp_rejections_total", "status", zeros=True)
    assert gateway_door == {"400": 2, "413": 1}
    assert epp_door == gateway_door


STREAM = orjson.dumps({"model": "m", "prompt": "x", "max_tokens": 40, "stream": True})
PLAIN = orjson.dumps({"model": "m", "prompt": "x", "max_tokens": 2})


async def test_model_server_errors_and_a_client_gone_are_counted_alike_in_the_three_doors(
    start_epp,
) -> None:
    """The same requests through the three doors, against one model server: a 2xx, the server's 400
    (a JSON reply, then an event stream with a 400 status) and 500, and a client that leaves
    mid-stream, on ``inference_objective_request_error_total`` with the same labels: each once, under
    the status its client gets. Before, the EPP had no such metric (only
    ``kvgate_epp_responses_total{ok}``: no status, no ``client_gone``), ``kvgate serve`` did not count
    the event-stream 400, and the multi-cluster gateway's errors had no model labels. The one designed
    difference: the multi-cluster gateway fails a cluster's 500 over, so its client gets 503."""
    backend = await Backend("b0", tokens=40, chunk_delay=0.05).start()
    try:
        async with running_gateway(make_config([backend.address])) as gw:
            await _over_http(backend, gw.port)
            proxy = gw.proxy
            assert proxy is not None
            await eventually(lambda: proxy.inflight == 0, "the gateway's stream ended")
            gateway_door = error_counts(gw.metrics.registry)
        epp_door, epp_registry = await _over_ext_proc(backend, start_epp)
        epp_stats = request_stats(epp_registry)
        cluster = ClusterSpec("c", gateway=backend.address)  # Parent mode, straight to the model server
        mc = GlobalGateway(ClustersConfig((cluster,)), "round-robin", fetch=False, seed=1)
        await mc.start("127.0.0.1", 0)
        try:
            await _over_http(backend, mc.port)
            await eventually(lambda: mc.inflight == 0, "the global gateway's stream ended")
            global_door = error_counts(mc.metrics.registry)
            global_stats = request_stats(mc.metrics.registry)
        finally:
            await mc.stop()
    finally:
        await backend.stop()
    assert gateway_door == {("m", "m", "400"): 2, ("m", "m", "500"): 1, ("m", "m", "client_gone"): 1}
    assert epp_door == gateway_door
    assert global_door == {("m", "m", "400"): 2, ("m", "m", "503"): 1, ("m", "m", "client_gone"): 1}
    # The per-request families, the same in the three doors: every request a model server answered
    # (the 2xx, both 400s, the 500 and the stream whose client left), once, when its response ended;
    # tokens from the 2xx's usage (7 prompt, 2 completion; the stream left before its usage chunk).
    # Before, only ``kvgate serve`` had them. The designed difference: the multi-cluster gateway's 500
    # became its own 503 (no cluster answered it: not counted, as ``kvgate serve``'s own 503s).
    gateway_stats = request_stats(gw.metrics.registry)
    assert gateway_stats == {
        ("inference_objective_request_total", "m", "m"): 5,
        ("inference_objective_request_duration_seconds_count", "m", "m"): 5,
        ("inference_objective_input_tokens_count", "m", "m"): 1,
        ("inference_objective_input_tokens_sum", "m", "m"): 7,
        ("inference_objective_output_tokens_count", "m", "m"): 1,
        ("inference_objective_output_tokens_sum", "m", "m"): 2,
    }
    assert epp_stats == gateway_stats
    assert global_stats == {
        **gateway_stats,
        ("inference_objective_request_total", "m", "m"): 4,
        ("inference_objective_request_duration_seconds_count", "m", "m"): 4,
    }
    assert bucket_bounds(epp_registry) == bucket_bounds(gw.metrics.registry)
    assert bucket_bounds(mc.metrics.registry) == bucket_bounds(gw.metrics.registry)


_STATS = (
    "inference_objective_request_total",
    "inference_objective_request_duration_seconds_count",
    "inference_objective_input_tokens_count",
    "inference_objective_input_tokens_sum",
    "inference_objective_output_tokens_count",
    "inference_objective_output_tokens_sum",
)


def request_stats(registry: Any) -> dict[tuple[str, str, str], float]:
    """``(sample, model_name, target_model_name)`` -> value of the per-request families, not 0."""
    out: dict[tuple[str, str, str], float] = {}
    for family in registry.collect():
        for s in family.samples:
            if s.name in _STATS and s.value:
                out[(s.name, s.labels["model_name"], s.labels["target_model_name"])] = s.value
    return out


def bucket_bounds(registry: Any) -> dict[str, list[str]]:
    """Each per-request histogram's bucket bounds (``le``)."""
    out: dict[str, list[str]] = {}
    for family in registry.collect():
        if family.name.startswith("inference_objective_") and family.type == "histogram":
            out[family.name] = [s.labels["le"] for s in family.samples if s.name.endswith("_bucket")]
    return out


URL_PATH = "/v1/completions"
# The client gone before the 500: the multi-cluster gateway backs a failed cluster off for a second.
MODES = (("ok", 200), ("error400", 400), ("sse_error400", 400))


async def _over_http(backend: Backend, port: int) -> None:
    url = f"http://127.0.0.1:{port}{URL_PATH}"
    async with aiohttp.ClientSession() as s:
        for mode, status in MODES:
            backend.mode = mode
            async with s.post(url, data=PLAIN) as r:
                await r.read()
                assert r.status == status
        backend.mode = "ok"
        r = await s.post(url, data=STREAM)
        assert r.status == 200
        await r.content.readany()
        r.close()  # the client goes away mid-stream
        backend.mode = "error500"
        async with s.post(url, data=PLAIN) as r:
            await r.read()
            assert r.status in (500, 503)


async def _over_ext_proc(backend: Backend, start_epp: Any) -> tuple[dict[Any, float], Any]:
    epp = await start_epp([backend.address])
    assert epp.stub is not None
    async with aiohttp.ClientSession() as http:
        harness = EnvoyHarness(epp.stub, http)
        for mode, status in MODES:
            backend.mode = mode
            assert (await harness.request("POST", URL_PATH, PLAIN)).status == status
        backend.mode = "ok"
        gone = await harness.request("POST", URL_PATH, STREAM, abort_after_chunks=1)
        assert gone.status == 499
        backend.mode = "error500"
        assert (await harness.request("POST", URL_PATH, PLAIN)).status == 500
    inflight = "kvgate_epp_inflight_requests"
    await eventually(lambda: _value(epp.metrics, inflight) == 0, "the EPP's stream ended")
    return error_counts(epp.metrics.registry), epp.metrics.registry


async def test_an_unserved_models_errors_are_other_in_the_epp() -> None:
    """Bounded model labels (kvgate.openai.labels): a name no config lists and no model server has
    answered with a 2xx is ``other``; a configured one, or one served once, is its own."""
    metrics = EppMetrics(models=ModelLabels(["known"]))
    metrics.error("made-up", "made-up", "404")
    metrics.error("known", "known", "500")
    metrics.served("m")
    metrics.error("m", "m", "400")
    metrics.rejected(413)
    assert error_counts(metrics.registry) == {
        ("other", "other", "404"): 1,
        ("known", "known", "500"): 1,
        ("m", "m", "400"): 1,
        ("", "", "413"): 1,
    }


def _held(prompt: str) -> bytes:
    return orjson.dumps({"model": "m", "prompt": prompt, "max_tokens": 1})


async def test_a_client_that_leaves_while_queued_is_client_gone_once_in_both_doors() -> None:
    """Flow control holds a second request while the first is in flight (concurrency 1); its client
    leaves: ``client_gone`` once, in both doors. Before, ``kvgate serve`` counted nothing for it (the
    handler's cancel met ``admit`` outside the dispatch's own ``client_gone``)."""
    hdrs = {"x-gateway-inference-objective": "critical"}
    backend = await HeldBackend().start()
    cfg = parse_gateway_config(gateway_config(backend.port, model="m"))
    pools = [build_pool(p) for p in cfg.pools]
    gw = GatewayServer(cfg, pools, scrape=False)
    await gw.start()
    try:
        url = f"http://127.0.0.1:{gw.port}/v1/completions"
        async with aiohttp.ClientSession() as http:
            first = asyncio.ensure_future(http.post(url, data=_held("held"), headers=hdrs))
            await eventually(lambda: backend.arrivals == ["held"], "the first request upstream")
            async with aiohttp.ClientSession() as leaving:
                second = asyncio.ensure_future(leaving.post(url, data=_held("queued"), headers=hdrs))
                await eventually(lambda: pools[0].director.queued() == 1, "the second request queued")
            second.cancel()  # (its session closed: the connection is gone)
            await eventually(lambda: pools[0].director.queued() == 0, "the queue left")
            backend.release.release()
            (await first).release()
        gateway_door = error_counts(gw.metrics.registry)
    finally:
        await gw.stop(drain_timeout=1.0)
        await backend.stop()
    metrics = EppMetrics(models=ModelLabels(["m"]))  # (as ``kvgate epp``: the pool's models)
    async with epp_door(metrics) as (backend, ctx, ch):
        director = ctx.director
        assert isinstance(director, Director)
        async with aiohttp.ClientSession() as http:
            harness = EnvoyHarness(pb_grpc.ExternalProcessorStub(ch), http)
            first = asyncio.ensure_future(send_over(harness, "critical", "held"))
            await eventually(lambda: backend.arrivals == ["held"], "the first request upstream")
            async with Exchange(pb_grpc.ExternalProcessorStub(ch)) as ex:
                headers = {":method": "POST", ":path": "/v1/completions", **hdrs}
                second = asyncio.ensure_future(ex.send_request(headers, _held("queued")))
                await eventually(lambda: director.queued() == 1, "the second request queued")
                ex.cancel()  # Envoy ends the stream: the client left
                await asyncio.wait([second])
            await eventually(lambda: director.queued() == 0, "the queue left")
            backend.release.release()
            assert (await asyncio.wait_for(first, WAIT))[0] == 200
        await eventually(
            lambda: _value(metrics, "kvgate_epp_inflight_requests") == 0, "the EPP's request done"
        )
    assert gateway_door == {("m", "m", "client_gone"): 1}
    assert error_counts(metrics.registry) == gateway_door


class _HeldErrorStream:
    """400 + text/event-stream: one error event, then the rest held until released."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(status=400, headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'data: {"error": {"message": "bad request", "type": "BadRequestError"}}\n\n')
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.release.wait(), 5)
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


async def _leave_after_first_chunk(port: int) -> None:
    async with aiohttp.ClientSession() as http:
        r = await http.post(f"http://127.0.0.1:{port}{URL_PATH}", data=STREAM)
        assert r.status == 400
        await r.content.readany()
        r.close()  # the client leaves before the error stream's end


async def test_an_event_stream_400_whose_client_leaves_is_a_400_in_the_three_doors(start_epp) -> None:
    """Review s13-doors L4: one rule in the three doors, a status sent to the client is the count. A
    model server's 400 with an event-stream body whose client leaves before its end: ``kvgate serve``
    and ``kvgate epp`` counted ``client_gone``, the global gateway ``400`` (and ``kvgate serve`` a JSON
    400 as ``400``). Now ``400`` in all three."""
    backend = _HeldErrorStream()
    app = web.Application()
    app.router.add_post(URL_PATH, backend.handle)
    runner, port = await serve_app(app)
    addr = f"127.0.0.1:{port}"
    try:
        async with running_gateway(make_config([addr])) as gw:
            await _leave_after_first_chunk(gw.port)
            proxy = gw.proxy
            assert proxy is not None
            await eventually(lambda: proxy.inflight == 0, "the gateway's stream ended")
            gateway_door = error_codes(gw.metrics.registry)
        epp = await start_epp([addr])
        assert epp.stub is not None
        async with aiohttp.ClientSession() as http:
            gone = await EnvoyHarness(epp.stub, http).request("POST", URL_PATH, STREAM, abort_after_chunks=1)
            assert gone.status == 499
        inflight = "kvgate_epp_inflight_requests"
        await eventually(lambda: _value(epp.metrics, inflight) == 0, "the EPP's stream ended")
        epp_door = error_codes(epp.metrics.registry)
        mc = GlobalGateway(
            ClustersConfig((ClusterSpec("c", gateway=addr),)), "round-robin", fetch=False, seed=1
        )
        await mc.start("127.0.0.1", 0)
        try:
            await _leave_after_first_chunk(mc.port)
            await eventually(lambda: mc.inflight == 0, "the global gateway's stream ended")
            global_door = error_codes(mc.metrics.registry)
        finally:
            await mc.stop()
    finally:
        backend.release.set()
        await runner.cleanup()
    assert gateway_door == epp_door == global_door == {"400": 1}, (gateway_door, epp_door, global_door)


USAGE_STREAM = orjson.dumps(
    {"model": "m", "prompt": "x", "max_tokens": 3, "stream": True, "stream_options": {"include_usage": True}}
)
BARE_STREAM = orjson.dumps({"model": "m", "prompt": "x", "max_tokens": 3, "stream": True})


async def _streams_over_http(port: int) -> None:
    async with aiohttp.ClientSession() as s:
        for body in (USAGE_STREAM, BARE_STREAM):
            async with s.post(f"http://127.0.0.1:{port}{URL_PATH}", data=body) as r:
                assert r.status == 200
                text = await r.read()
            # What the client gets is what it asked for, in every door: a usage chunk only when asked.
            assert (b'"usage"' in text) == (body is USAGE_STREAM), text


async def test_streamed_tokens_are_observed_as_documented_in_the_three_doors(start_epp) -> None:
    """Two streams, one whose client asked for ``stream_options.include_usage`` and one whose client
    did not, through the three doors. Both are counted (``inference_objective_request_total``) in each.
    Their tokens: ``kvgate serve`` observes both, since it adds ``include_usage`` upstream for its own
    in-flight accounting and strips the chunk from a client that did not ask; ``kvgate epp`` and
    ``kvgate serve --clusters`` observe only the first, as the reference EPP does (its metrics guide
    asks clients to send ``include_usage`` for streamed usage metrics): neither changes the client's
    request or response for a metric (an EPP with ``response_body_mode: NONE`` could not strip the
    chunk). docs/epp.md, docs/multicluster.md and docs/gateway.md say so."""
    backend = await Backend("b0", tokens=3).start()
    try:
        async with running_gateway(make_config([backend.address])) as gw:
            await _streams_over_http(gw.port)
            proxy = gw.proxy
            assert proxy is not None
            await eventually(lambda: proxy.inflight == 0, "the gateway's streams ended")
            gateway_stats = request_stats(gw.metrics.registry)
        epp = await start_epp([backend.address])
        assert epp.stub is not None
        async with aiohttp.ClientSession() as http:
            harness = EnvoyHarness(epp.stub, http)
            for body in (USAGE_STREAM, BARE_STREAM):
                assert (await harness.request("POST", URL_PATH, body)).status == 200
        inflight = "kvgate_epp_inflight_requests"
        await eventually(lambda: _value(epp.metrics, inflight) == 0, "the EPP's streams ended")
        epp_stats = request_stats(epp.metrics.registry)
        mc = GlobalGateway(
            ClustersConfig((ClusterSpec("c", gateway=backend.address),)), "round-robin", fetch=False, seed=1
        )
        await mc.start("127.0.0.1", 0)
        try:
            await _streams_over_http(mc.port)
            await eventually(lambda: mc.inflight == 0, "the global gateway's streams ended")
            global_stats = request_stats(mc.metrics.registry)
        finally:
            await mc.stop()
    finally:
        await backend.stop()
    asked_only = {
        ("inference_objective_request_total", "m", "m"): 2,
        ("inference_objective_request_duration_seconds_count", "m", "m"): 2,
        ("inference_objective_input_tokens_count", "m", "m"): 1,
        ("inference_objective_input_tokens_sum", "m", "m"): 7,
        ("inference_objective_output_tokens_count", "m", "m"): 1,
        ("inference_objective_output_tokens_sum", "m", "m"): 3,
    }
    assert epp_stats == global_stats == asked_only, (epp_stats, global_stats)
    assert gateway_stats == {
        **asked_only,
        ("inference_objective_input_tokens_count", "m", "m"): 2,
        ("inference_objective_input_tokens_sum", "m", "m"): 14,
        ("inference_objective_output_tokens_count", "m", "m"): 2,
        ("inference_objective_output_tokens_sum", "m", "m"): 6,
    }, gateway_stats
