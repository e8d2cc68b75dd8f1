"""The EPP door counts each request it picked or refused once, as ``kvgate serve`` does
(``tests/gateway/test_error_counts.py``): a refused request once on ``kvgate_epp_rejections_total``
under the status its client gets (the gateway door's ``error_code``), and every picked request leaves
``kvgate_epp_inflight_requests`` once, however it ends. The real gRPC server on loopback, driven by the
Envoy-playing harness, against a backend that holds each reply until the test releases it."""

from __future__ import annotations

import asyncio

import aiohttp
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from flowcontrol.test_doors import eventually
from flowcontrol.test_preemption_doors import epp_door, send_over
from gateway.conftest import closing_backend_gateway
from kvgate.extproc.metrics import EppMetrics
from kvgate.extproc.testing import EnvoyHarness, Exchange
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
        gateway_door = {
            m.labels["error_code"]: m.value
            for metric in gw.metrics.registry.collect()
            if metric.name == "inference_objective_request_error"
            for m in metric.samples
            if m.name.endswith("_total") and m.value
        }
    epp = await start_epp([f"127.0.0.1:{port}"], max_request_body=1000)
    headers = {":method": "POST", ":path": "/v1/completions", "content-type": "application/json"}
    for body in bodies:
        async with Exchange(epp.stub) as ex:
            out = await ex.send_request(headers, body, chunk_size=400)
        assert out.immediate is not None
    epp_door = {
        s.labels["status"]: s.value
        for metric in epp.metrics.registry.collect()
        for s in metric.samples
        if s.name == "kvgate_epp_rejections_total"
    }
    assert gateway_door == {"400": 2, "413": 1}
    assert epp_door == gateway_door
