"""qa32b Q8: ``inference_objective_running_requests`` (and llm-d's ``llm_d_epp_request_running``) is
incremented by the reference EPP when the request has been scheduled (``metrics.IncRunningRequests`` after
``BodyRequestResponsesComplete`` in ``pkg/epp/handlers/server.go``); a request waiting in flow control is in
``inference_extension_flow_control_queue_size`` only. kvgate counted it from its parsed body, so a queued
request was "running" too: at saturation the gauge autoscalers scale on added the queue (fails on
0d8d2049 with running 2.0)."""

from __future__ import annotations

import asyncio
import time

import orjson
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from kvgate.datalayer.store import EndpointStore
from kvgate.extproc.context import AddressIndex, build_epp_director
from kvgate.extproc.metrics import EppMetrics
from kvgate.extproc.server import EppServer, ServerOptions
from kvgate.extproc.session import SessionContext
from kvgate.extproc.testing import Exchange, channel, header_map

FLOW_CONTROL = {
    "apiVersion": "inference.networking.x-k8s.io/v1alpha1",
    "kind": "EndpointPickerConfig",
    "featureGates": ["flowControl"],
    # one request at a time per endpoint (the EPP's own in-flight count: no scraped metrics needed)
    "saturationDetector": {"type": "concurrency-detector", "parameters": {"maxConcurrency": 1}},
    "flowControl": {"defaultRequestTTL": "120s"},
    "plugins": [{"type": "queue-scorer"}, {"type": "max-score-picker"}],
    "schedulingProfiles": [
        {"name": "default", "plugins": [{"pluginRef": "queue-scorer"}, {"pluginRef": "max-score-picker"}]}
    ],
}
H = {":method": "POST", ":path": "/v1/completions", "content-type": "application/json"}
POOL = "pool-qa32b-q8"


def _gauge(text: str, name: str, where: str = "") -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if (line.startswith(name + "{") or line.startswith(name + " ")) and where in line
    )


async def test_a_request_queued_by_flow_control_is_not_running() -> None:
    store = EndpointStore.from_addresses(["127.0.0.7:8000"])
    director = build_epp_director(FLOW_CONTROL, store, policy="kvgate", pool=POOL)
    metrics = EppMetrics()
    ctx = SessionContext(
        director, AddressIndex(store), clock=time.monotonic, observer=metrics, admit=director.admit
    )
    server = EppServer(ctx, ServerOptions(host="127.0.0.1", port=0, health_port=None, metrics_port=None))
    await server.start()
    ch = channel(f"127.0.0.1:{server.port}")
    stub = pb_grpc.ExternalProcessorStub(ch)
    first, second = Exchange(stub), Exchange(stub)
    try:
        await first.__aenter__()
        out = await first.send_request(H, orjson.dumps({"model": "m", "prompt": "one", "max_tokens": 4}))
        assert out.destination == "127.0.0.7:8000"  # routed, its answer not begun: the endpoint is busy
        await second.__aenter__()
        await second.write(pb.ProcessingRequest(request_headers=pb.HttpHeaders(headers=header_map(H))))
        body = orjson.dumps({"model": "m", "prompt": "two", "max_tokens": 4})
        await second.write(pb.ProcessingRequest(request_body=pb.HttpBody(body=body, end_of_stream=True)))
        deadline = asyncio.get_running_loop().time() + 60
        text = metrics.exposition().decode()
        queued = f'inference_pool="{POOL}"'
        while _gauge(text, "inference_extension_flow_control_queue_size", queued) < 1:
            assert asyncio.get_running_loop().time() < deadline, "the second request never queued"
            await asyncio.sleep(0.05)
            text = metrics.exposition().decode()
        running = _gauge(text, "inference_objective_running_requests")
        llmd_running = _gauge(text, "llm_d_epp_request_running")
    finally:
        for ex in (second, first):
            ex.cancel()
            await ex.close()
        await ch.close()
        await server.stop(0)
    assert running == 1, f"inference_objective_running_requests {running}: the queued request counted running"
    assert llmd_running == 1, f"llm_d_epp_request_running {llmd_running}: the queued request counted running"
    # both ended (the queued one cancelled while queued): nothing left running, never below 0
    deadline = asyncio.get_running_loop().time() + 60
    while metrics.streams._value.get() and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    text = metrics.exposition().decode()
    assert _gauge(text, "inference_objective_running_requests") == 0, text
    assert _gauge(text, "llm_d_epp_request_running") == 0, text
