"""qa32b Q5: one ext_proc stream carries one HTTP request (Envoy opens one per request). A second
``request_headers`` on a stream (a misbehaving or non-Envoy gateway reusing it) was taken silently: its body
dropped, nothing answered, the stream left to the idle sweeper (``--stream-idle-timeout``, 600 s) with its
client hanging. It now ends the stream at once with ``INVALID_ARGUMENT``, as a request body before the request
headers does. Fails on 0d8d2049 (no answer within the test's 30 s read)."""

from __future__ import annotations

import asyncio

import grpc
import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from kvgate.extproc.testing import Exchange, header_map

ADDRS = ["127.0.0.7:8000", "127.0.0.8:8000"]
H = {":method": "POST", ":path": "/v1/completions", "content-type": "application/json"}
BODY = orjson.dumps({"model": "m", "prompt": "hello", "max_tokens": 4})


@pytest.mark.parametrize("answered", [True, False])
async def test_a_second_request_on_one_stream_ends_it_with_invalid_argument(
    start_epp, answered: bool
) -> None:
    epp = await start_epp(ADDRS)
    async with Exchange(epp.stub, timeout=30) as ex:
        out = await ex.send_request(H, BODY)
        assert out.destination in ADDRS
        if answered:  # the first request's exchange over, or (False) still waiting for its response
            await ex.send_response(
                200, {"content-type": "application/json"}, [b'{"choices":[]}'], served=out.destination
            )
        # (its headers alone: a write after the EPP ended the call fails at the client, grpc then reports
        # INTERNAL for the call, whatever the server's status)
        await ex.write(pb.ProcessingRequest(request_headers=pb.HttpHeaders(headers=header_map(H))))
        async with asyncio.timeout(30):
            code, details = await ex.call.code(), await ex.call.details()
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
        assert "second request" in details
    # The first request's accounting is closed either way (nothing left in flight at its endpoint).
    for _ in range(300):
        if all(e.inflight.requests == 0 for e in epp.store.all()):
            break
        await asyncio.sleep(0.1)
    assert [e.inflight.requests for e in epp.store.all()] == [0, 0]
