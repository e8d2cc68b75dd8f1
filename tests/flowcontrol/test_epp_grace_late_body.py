"""s21-fc review F2: ``kvgate epp``'s grace eviction (fc21, 96c539b1) ran once, half a second before the grace
ends, and the queue stayed open after it: a stream opened before the stop whose body arrives after that moment
(a slow upload) is queued again and, at the grace's end, cut by gRPC -- the case the change set out to fix
(Envoy's failure mode answers it). Now the closed queue answers it 503 at once. Real gRPC on loopback, the
test's own Envoy-playing writes.

Deterministic under load (flake23): the stop begins only once the EPP runs the second stream (a stream gRPC
has not handed to the servicer when its shutdown begins is ended CANCELLED: the headers' write returning is
no sign of it), and the grace is long enough that its end never comes first: the test runs the grace-end
eviction itself (the stop's own timer is ``test_epp_grace_queued``'s), so no step races a half-second
window."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from flowcontrol.test_doors import WAIT, HeldBackend, eventually, started_epp
from flowcontrol.test_doors import completion_body as _body
from kvgate.extproc.testing import EnvoyHarness, Exchange, channel, header_map
from kvgate.scheduling.types import DrainEvictedError

pytestmark = pytest.mark.asyncio


# Far past the test's own deadlines: the grace ends when the streams do, never while the test reads.
GRACE_S = 6 * WAIT


async def test_a_body_arriving_after_the_eviction_is_answered_503_not_cut() -> None:
    backend = await HeldBackend().start()
    epp, ctx = await started_epp(backend)
    flow = ctx.director.flow  # type: ignore[attr-defined]
    servicer, server = epp.servicer, epp._grpc
    assert servicer is not None and server is not None
    shutting = asyncio.Event()  # (set as the stop hands gRPC its grace: new streams refused from there)
    grpc_stop = server.stop

    async def stop_grpc(grace: float | None) -> None:
        shutting.set()
        await grpc_stop(grace)

    server.stop = stop_grpc
    ch = channel(f"127.0.0.1:{epp.port}")
    http = aiohttp.ClientSession()
    stop: asyncio.Task[None] | None = None
    try:
        harness = EnvoyHarness(pb_grpc.ExternalProcessorStub(ch), http)
        held = asyncio.ensure_future(harness.request("POST", "/v1/completions", _body("held")))
        await eventually(lambda: backend.arrivals == ["held"], "the first request at the backend")
        async with Exchange(pb_grpc.ExternalProcessorStub(ch), timeout=WAIT) as ex:
            headers = {
                ":method": "POST", ":path": "/v1/completions", ":authority": "gw", ":scheme": "http",
                "content-type": "application/json",
            }  # fmt: skip
            await ex.write(pb.ProcessingRequest(request_headers=pb.HttpHeaders(headers=header_map(headers))))
            await eventually(lambda: len(servicer.active) == 2, "the second stream open at the EPP")
            stop = asyncio.ensure_future(epp.stop(GRACE_S))
            await asyncio.wait_for(shutting.wait(), WAIT)
            assert epp.evict_queued() == 0  # (the grace-end eviction: nothing queued, the queue closed)
            late = pb.HttpBody(body=_body("late"), end_of_stream=True)
            await ex.write(pb.ProcessingRequest(request_body=late))
            try:
                out = await ex.read_request_outcome(has_body=True)
            except Exception as e:  # (the stream cut at the grace's end, or left waiting in the queue)
                ex.cancel()  # (so the stop need not wait its grace out)
                raise AssertionError(f"the late request got no answer: {type(e).__name__}: {e}") from None
        assert out.immediate is not None and out.immediate.status.code == 503
        got = {h.header.key: h.header.raw_value.decode() for h in out.immediate.headers.set_headers}
        assert got.get("retry-after") == DrainEvictedError.retry_after, got
        assert "not sent to any model server" in orjson.loads(out.immediate.body)["error"]["message"]
        assert len(flow) == 0 and backend.arrivals == ["held"]  # (answered at once: never queued, never sent)
    finally:
        for _ in range(2):  # (the held request; and the late one, where a broken queue sent it on)
            backend.release.release()
        if stop is None:
            await epp.stop(0)
        elif not stop.done():
            await asyncio.wait_for(stop, WAIT)
        if not held.done():
            held.cancel()
        await ch.close()
        await http.close()
        await backend.stop()
