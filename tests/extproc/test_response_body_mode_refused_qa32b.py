"""qa32b Q3: a gateway sending request bodies FULL_DUPLEX_STREAMED but response bodies BUFFERED, STREAMED or
BUFFERED_PARTIAL. kvgate answers every response body with a ``streamed_response``, which Envoy takes only in
FULL_DUPLEX_STREAMED mode (``ProcessorState::handleStreamedBodyCallback``: "spurious message", the ext_proc
stream fails, FailClose answers 500 after the model server did the work). Refused at the request headers
instead (500 ``ImmediateResponse``, nothing routed), as the request side's modes are; NONE stays served.
Fails on 2b9dcdff (routed, then answered with ``streamed_response``)."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from kvgate.extproc.testing import header_map

MODE = processing_mode_pb2.ProcessingMode
ADDRS = ["127.0.0.7:8000", "127.0.0.8:8000"]
H = {":method": "POST", ":path": "/v1/completions", "content-type": "application/json"}
BODY = orjson.dumps({"model": "m", "prompt": "hello", "max_tokens": 4})


@pytest.mark.parametrize("bodyless", [False, True])
@pytest.mark.parametrize("mode", ["BUFFERED", "STREAMED", "BUFFERED_PARTIAL", "GRPC"])
async def test_a_response_body_mode_other_than_full_duplex_is_refused_before_routing(
    start_epp, mode: str, bodyless: bool
) -> None:
    epp = await start_epp(ADDRS)
    call = epp.stub.Process()
    try:
        headers = {":method": "GET", ":path": "/v1/models"} if bodyless else H
        first = pb.ProcessingRequest(
            request_headers=pb.HttpHeaders(headers=header_map(headers), end_of_stream=bodyless)
        )
        first.protocol_config.request_body_mode = MODE.FULL_DUPLEX_STREAMED
        first.protocol_config.response_body_mode = getattr(MODE, mode)
        await call.write(first)
        if not bodyless:
            await call.write(pb.ProcessingRequest(request_body=pb.HttpBody(body=BODY, end_of_stream=True)))
        async with asyncio.timeout(30):
            reply = await call.read()
        assert reply.WhichOneof("response") == "immediate_response", (
            f"response_body_mode {mode}: routed, and its response bodies would get streamed_response"
        )
        assert reply.immediate_response.status.code == 500
        assert b"response bodies" in reply.immediate_response.body
        assert epp.picker.calls.dispatched == []
    finally:
        call.cancel()
