"""Issue #12 for the EPP: a global buffered-bytes budget, an idle-stream timeout, protocol violations
answered with gRPC statuses, and parsed-but-ignored config keys refused."""

from __future__ import annotations

import asyncio
import time

import grpc
import orjson
import pytest
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from gateway.test_health_gate import wait_until
from kvgate.config.picker import load_config
from kvgate.datalayer.endpoint import Endpoint
from kvgate.extproc.session import ProtocolViolation, Session, SessionContext
from kvgate.extproc.testing import header_map
from kvgate.scheduling.framework import ConfigError

EP = Endpoint("127.0.0.1:18201")
_MODE = processing_mode_pb2.ProcessingMode.BodySendMode


def _headers(end_of_stream: bool = False) -> pb.ProcessingRequest:
    h = header_map({":method": "POST", ":path": "/v1/completions"})
    return pb.ProcessingRequest(request_headers=pb.HttpHeaders(headers=h, end_of_stream=end_of_stream))


def _ctx(**kw) -> SessionContext:
    class Never:
        def pick(self, req):
            raise AssertionError("not picked in these tests")

    return SessionContext(Never(), lambda: {EP.address: EP}, clock=time.monotonic, **kw)  # type: ignore[arg-type]


def test_buffered_bytes_budget_is_shared_by_all_streams_and_given_back():
    ctx = _ctx(max_buffered_bytes=1000)
    a, b = Session(ctx), Session(ctx)
    for s in (a, b):
        assert s.handle(_headers()) == []
    assert a.handle(pb.ProcessingRequest(request_body=pb.HttpBody(body=b"x" * 700))) == []
    assert ctx.budget.used == 700
    (out,) = b.handle(pb.ProcessingRequest(request_body=pb.HttpBody(body=b"y" * 400)))
    assert out.immediate_response.status.code == 503  # over the shared budget, not its own cap
    a.close()
    b.close()
    assert ctx.budget.used == 0  # everything given back when streams end (cancelled or not)
    c = Session(ctx)
    c.handle(_headers())
    assert c.handle(pb.ProcessingRequest(request_body=pb.HttpBody(body=b"z" * 900))) == []
    c.close()
    assert ctx.budget.used == 0


def test_body_before_headers_and_unservable_body_modes_are_protocol_violations():
    with pytest.raises(ProtocolViolation) as e:
        Session(_ctx()).handle(pb.ProcessingRequest(request_body=pb.HttpBody(body=b"{}", end_of_stream=True)))
    assert e.value.code == "INVALID_ARGUMENT"
    for mode in (_MODE.GRPC, _MODE.NONE):
        msg = _headers()
        msg.protocol_config.request_body_mode = mode
        with pytest.raises(ProtocolViolation) as e:
            Session(_ctx()).handle(msg)
        assert e.value.code == "FAILED_PRECONDITION" and _MODE.Name(mode) in e.value.message
    # NONE is fine for a request without a body (nothing to wait for). (A GET: a body-less POST to an
    # inference path is refused before the pick, as an empty body: rev-d32 F1.)
    h = header_map({":method": "GET", ":path": "/v1/models"})
    msg = pb.ProcessingRequest(request_headers=pb.HttpHeaders(headers=h, end_of_stream=True))
    msg.protocol_config.request_body_mode = _MODE.NONE
    (out,) = Session(_ctx()).handle(msg)  # (this test's picker refuses: a 500, not a violation)
    assert out.immediate_response.status.code == 500


async def test_grpc_status_for_body_before_headers_and_idle_streams_are_cancelled(start_epp):
    epp = await start_epp(["127.0.0.1:1"])
    call = epp.stub.Process()
    await call.write(pb.ProcessingRequest(request_body=pb.HttpBody(body=b"{}", end_of_stream=True)))
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await call.read()
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    servicer = epp.server.servicer
    servicer.idle_timeout_s = 0.3
    sweeper = asyncio.create_task(servicer.sweep_idle())  # (this fixture's server runs the 600 s one)
    try:
        call = epp.stub.Process()
        await call.write(_headers())  # a request head, then silence
        await wait_until(lambda: servicer.idle_closed == 1)
        assert servicer.idle_closed == 1 and not servicer.active
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await asyncio.wait_for(call.read(), 5)
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        sweeper.cancel()


@pytest.mark.parametrize("key", ["dataLayer", "parser"])
def test_ignored_picker_config_keys_are_refused_naming_the_key(key):
    with pytest.raises(ConfigError) as e:
        load_config(orjson.dumps({"plugins": [{"type": "queue-scorer"}], key: {"x": 1}}).decode())
    assert str(e.value).startswith(key)
