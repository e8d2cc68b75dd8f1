"""qa32b Q8: ``inference_objective_running_requests`` (and llm-d's ``llm_d_epp_request_running``) is
incremented by the reference EPP when the request has been scheduled (``metrics.IncRunningRequests`` after
``BodyRequestResponsesComplete`` in ``pkg/epp/handlers/server.go``); a request waiting in flow control is in
``inference_extension_flow_control_queue_size`` only. kvgate counted it from its parsed body, so a queued
request was "running" too: at saturation the gauge autoscalers scale on added the queue (fails on
0d8d2049 with running 2.0)."""

from __future__ import annotations

import asyncio

import orjson
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from extproc.flow_epp import epp_serving, flow_control_config
from kvgate.datalayer.store import EndpointStore
from kvgate.extproc.context import build_epp_director
from kvgate.extproc.metrics import EppMetrics
from kvgate.extproc.testing import Exchange, header_map

# one request at a time per endpoint
FLOW_CONTROL = flow_control_config(1, flowControl={"defaultRequestTTL": "120s"})
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
    async with epp_serving(director, store, metrics, director.admit) as stub:
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
    assert running == 1, f"inference_objective_running_requests {running}: the queued request counted running"
    assert llmd_running == 1, f"llm_d_epp_request_running {llmd_running}: the queued request counted running"
    # both ended (the queued one cancelled while queued): nothing left running, never below 0
    deadline = asyncio.get_running_loop().time() + 60
    while metrics.streams._value.get() and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    text = metrics.exposition().decode()
    assert _gauge(text, "inference_objective_running_requests") == 0, text
    assert _gauge(text, "llm_d_epp_request_running") == 0, text
