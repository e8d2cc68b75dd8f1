"""Endpoint mode keeps the remote EPP's ext_proc stream open for the request's life (issue #14).

Real gRPC and HTTP on loopback: a global gateway (``GlobalGateway``), one cluster's ``kvgate epp``
(in process, its metrics port read over HTTP) and a model-server double. The EPP's in-flight gauge must
stay up while a streamed response is in progress through the global gateway and fall to 0 after it,
when the client disconnects, and when the pod cuts the stream; the EPP reads the first token and the
usage; a model rewrite by the EPP reaches the pod and is put back in the client's response.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc
import orjson
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from envoy.type.v3 import http_status_pb2

from gateway.backend import Backend
from kvgate.datalayer.store import EndpointStore
from kvgate.extproc.context import AddressIndex, build_epp_director
from kvgate.extproc.metrics import EppMetrics
from kvgate.extproc.server import EppServer, ServerOptions
from kvgate.extproc.session import SessionContext
from kvgate.multicluster.clusters import ClustersConfig, ClusterSpec
from kvgate.multicluster.serve import GlobalGateway

CLOSE_DEADLINE = 6.0  # the EPP deadline (epp_timeout_s) of the ``slow`` world
CLOSE_WAIT = 15.0  # how long after a stream's end its EPP may take to close it (a loaded machine)


class World:
    def __init__(self, pod: Backend, epp: EppServer, store: EndpointStore, gw: GlobalGateway) -> None:
        self.pod, self.epp, self.store, self.gw = pod, epp, store, gw
        self.http = aiohttp.ClientSession()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.gw.port}"

    async def epp_metric(self, name: str) -> float:
        """One sample from the EPP's /metrics, read over HTTP as a scraper would."""
        async with self.http.get(f"http://127.0.0.1:{self.epp.metrics_port}/metrics") as r:
            text = await r.text()
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    async def until(self, name: str, value: float, within_s: float = 30.0) -> None:
        deadline = time.monotonic() + within_s
        while (got := await self.epp_metric(name)) != value:
            assert time.monotonic() < deadline, f"{name} stayed {got}, expected {value}"
            await asyncio.sleep(0.05)

    def pod_inflight(self) -> tuple[int, int]:
        """(requests, decoding) the EPP's Director holds against the pod."""
        ep = self.store.all()[0]
        return ep.inflight.requests, ep.inflight.decoding


async def _world(
    pod: Backend, rewrite: dict[str, str] | None = None, epp_timeout_s: float = 2.0
) -> tuple[World, list[Any]]:
    await pod.start()
    store = EndpointStore.from_addresses([pod.address])
    metrics = EppMetrics()
    ctx = SessionContext(
        build_epp_director(None, store, policy="round-robin"), AddressIndex(store), clock=time.monotonic,
        observer=metrics, model_rewrite=(rewrite or {}).get,
    )  # fmt: skip
    epp = EppServer(ctx, ServerOptions(host="127.0.0.1", port=0, health_port=None, metrics_port=0),
                    metrics=metrics)  # fmt: skip
    await epp.start()
    cluster = ClusterSpec("c1", epp=f"127.0.0.1:{epp.port}")  # Endpoint mode only
    gw = GlobalGateway(ClustersConfig((cluster,), epp_timeout_s=epp_timeout_s), "round-robin", fetch=False)
    await gw.start("127.0.0.1", 0)
    return World(pod, epp, store, gw), [gw, epp, pod]


@pytest.fixture
async def slow() -> AsyncIterator[World]:
    # 40 tokens, 50 ms apart: a 2 s stream. An EPP deadline of 6 s: the gateway's own cancel of a stream
    # the EPP answered but left open comes 5 x that (30 s) after its end, past what a test here waits.
    w, parts = await _world(Backend("pod", tokens=40, chunk_delay=0.05), epp_timeout_s=CLOSE_DEADLINE)
    yield w
    await _stop(w, parts)


async def _stop(w: World, parts: list[Any]) -> None:
    await w.http.close()
    gw, epp, pod = parts
    await gw.stop()
    await epp.stop(0)
    await pod.stop()


def _body(stream: bool, model: str = "m", max_tokens: int = 40) -> bytes:
    b: dict[str, Any] = {"model": model, "prompt": "hello", "max_tokens": max_tokens, "stream": stream}
    if stream:
        b["stream_options"] = {"include_usage": True}
    return orjson.dumps(b)


async def test_the_remote_epp_counts_a_streamed_request_until_its_end(slow: World) -> None:
    w = slow
    assert await w.epp_metric("kvgate_epp_inflight_requests") == 0
    async with w.http.post(f"{w.url}/v1/completions", data=_body(True)) as r:
        assert r.status == 200 and r.headers["x-kvgate-route-mode"] == "endpoint"
        await r.content.readuntil(b"\n\n")  # the first token reached the client
        # Mid-stream: the EPP still holds the request, and knows its first token has come.
        await w.until("kvgate_epp_inflight_requests", 1)
        await asyncio.sleep(0.3)
        assert await w.epp_metric("kvgate_epp_inflight_requests") == 1
        assert w.pod_inflight() == (1, 1)
        rest = await r.read()
    ended = time.monotonic()
    assert rest.endswith(b"data: [DONE]\n\n")
    await w.until("kvgate_epp_inflight_requests", 0)
    assert w.pod_inflight() == (0, 0)
    # The stream's end carried the usage event to the EPP (40 tokens), ended as a success.
    assert await w.epp_metric("kvgate_epp_completion_tokens_total") == 40
    assert await w.epp_metric('kvgate_epp_responses_total{ok="true",streaming="true"}') == 1
    # The EPP answered the end of stream and closed it (no call left open), in time: no stall counted.
    # Closed by the EPP itself: checked well before the gateway's cancel (5 x the deadline after the end)
    # would empty the calls anyway.
    assert CLOSE_WAIT < 5 * CLOSE_DEADLINE - 10
    while any(ch.calls for ch in w.gw.router.epp._channels.values()):
        assert time.monotonic() < ended + CLOSE_WAIT, "the EPP left its stream open after the end"
        await asyncio.sleep(0.05)
    async with w.http.get(f"{w.url}/metrics") as r:
        assert "kvgate_multicluster_epp_stalled_total{" not in await r.text()


async def test_a_client_that_leaves_mid_stream_ends_the_request_on_the_remote_epp(slow: World) -> None:
    w = slow
    r = await w.http.post(f"{w.url}/v1/completions", data=_body(True))
    await r.content.readuntil(b"\n\n")
    await w.until("kvgate_epp_inflight_requests", 1)
    r.connection.transport.abort()  # type: ignore[union-attr]  # the client goes away
    r.close()
    await w.until("kvgate_epp_inflight_requests", 0)
    assert w.pod_inflight() == (0, 0)
    deadline = time.monotonic() + 30
    while w.pod.disconnects == 0:  # the pod's stream was cut too (the upstream was released)
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    # The usage never came: nothing counted as generated.
    assert await w.epp_metric("kvgate_epp_completion_tokens_total") == 0


async def test_a_pod_that_cuts_its_stream_ends_the_request_on_the_remote_epp(slow: World) -> None:
    w = slow
    w.pod.mode = "cut"  # aborts the connection after two tokens
    async with w.http.post(f"{w.url}/v1/completions", data=_body(True)) as r:
        body = await r.read()
    # The client's stream ends with an error event, as the single-cluster gateway ends a cut stream.
    assert b'"code":"upstream_error"' in body and not body.endswith(b"[DONE]\n\n")
    await w.until("kvgate_epp_inflight_requests", 0)
    assert w.pod_inflight() == (0, 0)


async def test_a_json_reply_ends_the_request_with_its_usage() -> None:
    w, parts = await _world(Backend("pod", tokens=5))
    try:
        async with w.http.post(f"{w.url}/v1/completions", data=_body(False, max_tokens=5)) as r:
            assert r.status == 200
            assert orjson.loads(await r.read())["usage"]["completion_tokens"] == 5
        await w.until("kvgate_epp_inflight_requests", 0)
        assert await w.epp_metric("kvgate_epp_completion_tokens_total") == 5
        assert await w.epp_metric('kvgate_epp_responses_total{ok="true",streaming="false"}') == 1
    finally:
        await _stop(w, parts)


async def test_a_model_rewrite_by_the_remote_epp_reaches_the_pod_and_comes_back() -> None:
    w, parts = await _world(Backend("pod", tokens=3), rewrite={"m": "m-v2"})
    try:
        async with w.http.post(f"{w.url}/v1/completions", data=_body(True, max_tokens=3)) as r:
            events = [e for e in (await r.read()).split(b"\n\n") if e.startswith(b"data: {")]
        assert w.pod.received[-1][2]["model"] == "m-v2"  # the pod got the EPP's body
        assert events and all(orjson.loads(e[6:])["model"] == "m" for e in events)  # and it was put back
        async with w.http.post(f"{w.url}/v1/completions", data=_body(False, max_tokens=3)) as r:
            assert orjson.loads(await r.read())["model"] == "m"
        assert w.pod.received[-1][2]["model"] == "m-v2"
        await w.until("kvgate_epp_inflight_requests", 0)
        assert await w.epp_metric("kvgate_epp_completion_tokens_total") == 6
    finally:
        await _stop(w, parts)


class _NoBodyEpp(pb_grpc.ExternalProcessorServicer):
    """An EPP that picks ``pod`` and asks, with ``mode_override``, for no response body: the gateway must
    send none, and end the stream (half-close) only when the response has ended."""

    def __init__(self, pod: str, *, preempt: bool = False) -> None:
        self.pod = pod
        self.preempt = preempt  # answer the response headers with a 429, as flow control's preemption
        self.kinds: list[str] = []
        self.ended = asyncio.Event()
        self.half_closed = False  # the gateway ended its side (not a cancel)

    async def Process(self, request_iterator: Any, context: Any) -> AsyncIterator[pb.ProcessingResponse]:
        body = b""
        try:
            async for msg in request_iterator:
                kind = msg.WhichOneof("request")
                self.kinds.append(kind)
                if kind == "request_body":
                    body += msg.request_body.body
                    if msg.request_body.end_of_stream:
                        mutation = pb.HeaderMutation(set_headers=[base_pb2.HeaderValueOption(
                            header=base_pb2.HeaderValue(key="x-gateway-destination-endpoint",
                                                        raw_value=self.pod.encode()))])  # fmt: skip
                        yield pb.ProcessingResponse(
                            request_headers=pb.HeadersResponse(
                                response=pb.CommonResponse(header_mutation=mutation)
                            ),
                            mode_override=processing_mode_pb2.ProcessingMode(
                                response_body_mode=processing_mode_pb2.ProcessingMode.NONE
                            ),
                        )
                        streamed = pb.StreamedBodyResponse(body=body, end_of_stream=True)
                        common = pb.CommonResponse(body_mutation=pb.BodyMutation(streamed_response=streamed))
                        yield pb.ProcessingResponse(request_body=pb.BodyResponse(response=common))
                elif kind == "response_headers" and self.preempt:
                    status = http_status_pb2.HttpStatus(code=429)
                    yield pb.ProcessingResponse(immediate_response=pb.ImmediateResponse(status=status))
                    return
                elif kind == "response_headers":
                    yield pb.ProcessingResponse(response_headers=pb.HeadersResponse())
            self.half_closed = True
        finally:
            self.ended.set()


async def test_the_epps_mode_override_is_honoured() -> None:
    pod = await Backend("pod", tokens=20, chunk_delay=0.05).start()
    epp = _NoBodyEpp(pod.address)
    server = grpc.aio.server()
    pb_grpc.add_ExternalProcessorServicer_to_server(epp, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    gw = GlobalGateway(
        ClustersConfig((ClusterSpec("c1", epp=f"127.0.0.1:{port}"),)), "round-robin", fetch=False
    )
    await gw.start("127.0.0.1", 0)
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"http://127.0.0.1:{gw.port}/v1/completions", data=_body(True, max_tokens=20)) as r,
        ):
            await r.content.readuntil(b"\n\n")
            await asyncio.sleep(0.3)
            assert not epp.ended.is_set()  # the stream lives as long as the response
            assert (await r.read()).endswith(b"data: [DONE]\n\n")
        await asyncio.wait_for(epp.ended.wait(), 30)  # ... and ends with it
        assert "response_headers" in epp.kinds and "response_body" not in epp.kinds
        assert epp.half_closed
    finally:
        await gw.stop()
        await server.stop(0)
        await pod.stop()


async def test_a_request_the_remote_epp_preempts_goes_to_the_next_cluster() -> None:
    pod, other = await Backend("pod", tokens=40, chunk_delay=0.05).start(), await Backend("gw2").start()
    epp = _NoBodyEpp(pod.address, preempt=True)
    server = grpc.aio.server()
    pb_grpc.add_ExternalProcessorServicer_to_server(epp, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    clusters = (ClusterSpec("c1", epp=f"127.0.0.1:{port}"), ClusterSpec("c2", gateway=other.address))
    gw = GlobalGateway(ClustersConfig(clusters), "round-robin", fetch=False)
    await gw.start("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(2):  # (round robin: at least one of them tries c1 first)
                async with http.post(f"http://127.0.0.1:{gw.port}/v1/completions", data=_body(True)) as r:
                    assert r.status == 200 and r.headers["x-kvgate-cluster"] == "c2"
                    await r.read()
        assert pod.received and "response_headers" in epp.kinds  # c1's pod answered, then was dropped
        deadline = time.monotonic() + 30
        while pod.disconnects == 0:  # the pod's stream was reset, as Envoy resets the upstream
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    finally:
        await gw.stop()
        await server.stop(0)
        await pod.stop()
        await other.stop()
