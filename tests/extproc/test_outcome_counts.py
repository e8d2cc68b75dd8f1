"""When and under which code the EPP counts a request's end on ``inference_objective_request_error_total``
(review s13-doors L2, L3, L4):

- with ``response_body_mode: NONE`` (announced in the first message's ``protocol_config``) the gateway
  sends no response body, and Envoy ends the stream right after the response headers: the outcome is
  the headers' status (a 2xx no error, a 500 a 500), not ``client_gone`` for every request;
- a stream the EPP's own idle sweeper ends (``--stream-idle-timeout``) is ``epp_idle_timeout``: the client
  did not leave, Envoy answers it with its ext_proc error reply;
- a model server's 4xx/5xx is counted under its status at the response headers: an event-stream 400
  whose client leaves before its end stays a 400 (the status was sent to the client), as in the other
  doors."""

from __future__ import annotations

import asyncio
import time

import grpc
import orjson
import pytest
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from gateway.conftest import ERRORS, labelled_counts
from kvgate.datalayer.store import EndpointStore
from kvgate.extproc.context import AddressIndex, build_epp_director
from kvgate.extproc.metrics import EppMetrics
from kvgate.extproc.server import EppServer, ServerOptions
from kvgate.extproc.session import Session, SessionContext
from kvgate.extproc.testing import Exchange, channel, header_map
from kvgate.openai.labels import ModelLabels

from .pickers import one_endpoint_context, picked_session

_MODE = processing_mode_pb2.ProcessingMode


def _errors(metrics: EppMetrics) -> dict[tuple[str, str], float]:
    return labelled_counts(metrics.registry, ERRORS, "model_name", "error_code")


def _picked(metrics: EppMetrics, response_bodies: bool = True) -> Session:
    body = {"model": "m", "prompt": "p"}
    return picked_session(one_endpoint_context(metrics), body, response_bodies=response_bodies)


def _headers(s: Session, status: int, content_type: str = "application/json") -> None:
    h = pb.HttpHeaders(headers=header_map({":status": str(status), "content-type": content_type}))
    assert s.handle(pb.ProcessingRequest(response_headers=h))[0].WhichOneof("response") == "response_headers"


def test_with_response_bodies_off_a_2xx_is_no_error_and_a_500_is_a_500() -> None:
    metrics = EppMetrics(models=ModelLabels(["m"]))
    for status in (200, 500):
        s = _picked(metrics, response_bodies=False)
        _headers(s, status)
        s.close()  # Envoy ends the stream with the HTTP stream: no response body is ever sent in this mode
    assert _errors(metrics) == {("m", "500"): 1}


def test_with_response_bodies_on_a_2xx_gone_before_its_end_is_still_client_gone() -> None:
    metrics = EppMetrics(models=ModelLabels(["m"]))
    s = _picked(metrics)
    _headers(s, 200, "text/event-stream")
    s.close()
    assert _errors(metrics) == {("m", "client_gone"): 1}


def test_an_event_stream_400_whose_client_leaves_is_a_400() -> None:
    metrics = EppMetrics(models=ModelLabels(["m"]))
    s = _picked(metrics)
    _headers(s, 400, "text/event-stream")
    chunk = pb.HttpBody(body=b'data: {"error": {"message": "bad"}}\n\n')
    s.handle(pb.ProcessingRequest(response_body=chunk))
    s.close()  # the client left before the stream's end
    s.close()
    assert _errors(metrics) == {("m", "400"): 1}


@pytest.mark.asyncio
async def test_a_stream_the_sweeper_closes_is_not_client_gone() -> None:
    store = EndpointStore.from_addresses(["127.0.0.1:1"])
    metrics = EppMetrics(models=ModelLabels(["m"]))
    ctx = SessionContext(build_epp_director(None, store, policy="round-robin"), AddressIndex(store),
                         clock=time.monotonic, observer=metrics)  # fmt: skip
    opts = ServerOptions(host="127.0.0.1", port=0, health_port=None, metrics_port=None,
                         stream_idle_timeout_s=2.0)  # fmt: skip
    server = EppServer(ctx, opts, metrics=metrics)
    await server.start()
    ch = channel(f"127.0.0.1:{server.port}")
    try:
        async with Exchange(pb_grpc.ExternalProcessorStub(ch), timeout=30) as ex:
            headers = {":method": "POST", ":path": "/v1/completions", "content-type": "application/json"}
            out = await ex.send_request(headers, orjson.dumps({"model": "m", "prompt": "x", "stream": True}))
            assert out.immediate is None  # picked
            # The answer's head comes, then neither side moves (a stalled stream). (Silence before the
            # answer's head is the model server's time, never idle: s27-qa Q5, test_epp_idle_sweep_spares_...)
            await ex.send_response_headers(200, {"content-type": "text/event-stream"}, served="127.0.0.1:1")
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await ex.read()
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        for _ in range(600):  # (30 s at most: counted as its stream task ends)
            if _errors(metrics):
                break
            await asyncio.sleep(0.05)
        assert server.servicer is not None and server.servicer.idle_closed == 1
        assert _errors(metrics) == {("m", "epp_idle_timeout"): 1}
    finally:
        await ch.close()
        await server.stop(0)
