"""``kvgate epp``'s stop: a request still queued by flow control near the end of the gRPC grace leaves the
queue (``EvictedOther``) and its stream is answered an ImmediateResponse 503 with ``Retry-After`` (as
``kvgate serve`` answers its queue at its drain deadline), never sent to a model server; before (session-20
closing note), gRPC cancelled its stream at the grace's end and Envoy's failure mode answered it
(``failure_mode_allow``: routed anyway, or a 500). Real gRPC on loopback, the Envoy-playing client of
``kvgate.extproc.testing``; fails on main 7789ac4 (the stream is cancelled: no answer)."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from flowcontrol.test_doors import WAIT, HeldBackend, eventually, started_epp
from flowcontrol.test_doors import completion_body as _body
from kvgate.extproc.testing import EnvoyHarness, Exchange, channel
from kvgate.scheduling.types import DrainEvictedError


async def test_a_request_queued_at_the_grace_end_is_answered_503_with_retry_after() -> None:
    backend = await HeldBackend().start()
    epp, ctx = await started_epp(backend)
    flow = ctx.director.flow  # type: ignore[attr-defined]
    assert flow is not None
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
            queued = asyncio.ensure_future(ex.send_request(headers, _body("queued")))
            await eventually(lambda: len(flow) == 1, "the second request queued")
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            stop = asyncio.ensure_future(epp.stop(1.0))  # (a 1 s grace: evicted 0.5 s before its end)
            out = await asyncio.wait_for(queued, WAIT)
            answered_s = loop.time() - t0
        assert out.immediate is not None, "the queued stream got no answer (cut at the grace's end)"
        assert out.immediate.status.code == 503
        got = {h.header.key: h.header.raw_value.decode() for h in out.immediate.headers.set_headers}
        assert got.get("retry-after") == DrainEvictedError.retry_after, got
        err = orjson.loads(out.immediate.body)["error"]
        assert err["code"] == "service_unavailable" and "not sent to any model server" in err["message"], err
        assert answered_s < 1.0, f"answered {answered_s:.2f} s into a 1 s grace: after it"
        assert len(flow) == 0 and backend.arrivals == ["held"]
        backend.release.release()
        assert (await asyncio.wait_for(held, WAIT)).status == 200  # (in flight: served within the grace)
        await asyncio.wait_for(stop, WAIT)
    finally:
        backend.release.release()
        if stop is None:
            await epp.stop(0)
        elif not stop.done():
            await asyncio.wait_for(stop, WAIT)
        await ch.close()
        await http.close()
        await backend.stop()
