"""A model-rewritten response relayed through the remote EPP, when that EPP fails mid-response (issue #14).

The pod's stream is intact; only the EPP's response processing is lost. Envoy with ``failure_mode_allow``
would pass the pod's bytes on as they are; the global gateway does better: the response goes on from the
pod with the model name put back by the gateway, nothing lost or repeated. Real gRPC and HTTP on loopback:
the real ``kvgate epp`` stopped mid-stream, and a scripted EPP that fails at a chosen point.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc
import orjson
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from gateway.backend import Backend
from kvgate.datalayer.store import EndpointStore
from kvgate.extproc.context import AddressIndex, build_epp_director
from kvgate.extproc.server import EppServer, ServerOptions
from kvgate.extproc.session import SessionContext
from kvgate.multicluster.clusters import ClustersConfig, ClusterSpec
from kvgate.multicluster.serve import GlobalGateway


def _body(stream: bool, max_tokens: int) -> bytes:
    return orjson.dumps({"model": "m", "prompt": "hello", "max_tokens": max_tokens, "stream": stream})


def _events(raw: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(e[6:]) for e in raw.split(b"\n\n") if e.startswith(b"data: {")]


async def _gateway(epp_port: int) -> GlobalGateway:
    gw = GlobalGateway(ClustersConfig((ClusterSpec("c1", epp=f"127.0.0.1:{epp_port}"),)), "round-robin",
                       fetch=False)  # fmt: skip
    await gw.start("127.0.0.1", 0)
    return gw


async def test_the_stream_goes_on_from_the_pod_when_the_rewriting_epp_dies() -> None:
    pod = await Backend("pod", tokens=40, chunk_delay=0.05).start()  # a 2 s stream
    store = EndpointStore.from_addresses([pod.address])
    ctx = SessionContext(build_epp_director(None, store, policy="round-robin"), AddressIndex(store),
                         clock=time.monotonic, model_rewrite={"m": "m-v2"}.get)  # fmt: skip
    epp = EppServer(ctx, ServerOptions(host="127.0.0.1", port=0, health_port=None, metrics_port=None))
    await epp.start()
    gw = await _gateway(epp.port)
    stopped = False
    try:
        url = f"http://127.0.0.1:{gw.port}/v1/completions"
        async with aiohttp.ClientSession() as http, http.post(url, data=_body(True, 40)) as r:
            assert r.headers["x-kvgate-route-mode"] == "endpoint"
            first = await r.content.readuntil(b"\n\n")
            assert pod.received[-1][2]["model"] == "m-v2"  # the EPP rewrote the request
            await epp.stop(0)  # the EPP dies mid-response
            stopped = True
            raw = first + await r.read()
        events = _events(raw)
        assert raw.endswith(b"data: [DONE]\n\n")  # not cut: no error event either
        assert b"error" not in raw
        # Every token once, in order, each with the model name the client sent.
        assert [e["choices"][0]["text"] for e in events] == [f"pod-{i} " for i in range(40)]
        assert {e["model"] for e in events} == {"m"}
        assert gw.metrics.cut.labels("c1")._value.get() == 0
        metrics = await _scrape(gw)
        assert 'kvgate_multicluster_epp_failed_midstream_total{cluster="c1"} 1.0' in metrics
    finally:
        await gw.stop()
        if not stopped:
            await epp.stop(0)
        await pod.stop()


async def _scrape(gw: GlobalGateway) -> str:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{gw.port}/metrics") as r:
        return await r.text()


class _FailingEpp(pb_grpc.ExternalProcessorServicer):
    """Picks ``pod``, rewrites the request's model to ``m-v2`` and puts ``m`` back in the response body,
    line by line (as kvgate's EPP does); fails the stream (an abort) after answering ``lines_ok`` lines."""

    def __init__(self, pod: str, lines_ok: int) -> None:
        self.pod, self.lines_ok = pod, lines_ok
        self.failed = asyncio.Event()

    async def Process(self, request_iterator: Any, context: Any) -> AsyncIterator[pb.ProcessingResponse]:
        body, pending, answered = b"", b"", 0
        async for msg in request_iterator:
            kind = msg.WhichOneof("request")
            if kind == "request_body":
                body += msg.request_body.body
                if msg.request_body.end_of_stream:
                    dest = base_pb2.HeaderValue(
                        key="x-gateway-destination-endpoint", raw_value=self.pod.encode()
                    )
                    mutation = pb.HeaderMutation(set_headers=[base_pb2.HeaderValueOption(header=dest)])
                    yield pb.ProcessingResponse(
                        request_headers=pb.HeadersResponse(
                            response=pb.CommonResponse(header_mutation=mutation)
                        )
                    )
                    rewritten = body.replace(b'"model":"m"', b'"model":"m-v2"')
                    yield _body_response(rewritten, True, request=True)
            elif kind == "response_headers":
                yield pb.ProcessingResponse(response_headers=pb.HeadersResponse())
            elif kind == "response_body":
                pending += msg.response_body.body
                *lines, pending = pending.split(b"\n")
                out = b"".join(line.replace(b'"model":"m-v2"', b'"model":"m"') + b"\n" for line in lines)
                answered += len(lines)
                if answered > self.lines_ok:
                    self.failed.set()
                    await context.abort(grpc.StatusCode.INTERNAL, "the EPP failed")
                if out:
                    yield _body_response(out, False)
                if msg.response_body.end_of_stream:
                    yield _body_response(pending.replace(b'"model":"m-v2"', b'"model":"m"'), True)
                    return


def _body_response(data: bytes, eos: bool, *, request: bool = False) -> pb.ProcessingResponse:
    streamed = pb.StreamedBodyResponse(body=data, end_of_stream=eos)
    common = pb.CommonResponse(body_mutation=pb.BodyMutation(streamed_response=streamed))
    if request:
        return pb.ProcessingResponse(request_body=pb.BodyResponse(response=common))
    return pb.ProcessingResponse(response_body=pb.BodyResponse(response=common))


async def _scripted(pod: Backend, lines_ok: int) -> tuple[_FailingEpp, grpc.aio.Server, int]:
    epp = _FailingEpp(pod.address, lines_ok)
    server = grpc.aio.server()
    pb_grpc.add_ExternalProcessorServicer_to_server(epp, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return epp, server, port


async def test_an_epp_failing_after_some_lines_loses_and_repeats_nothing() -> None:
    pod = await Backend("pod", tokens=12, chunk_delay=0.02).start()
    epp, server, port = await _scripted(pod, lines_ok=7)  # 3 events (2 lines each) and a half, then fails
    gw = await _gateway(port)
    try:
        url = f"http://127.0.0.1:{gw.port}/v1/completions"
        async with aiohttp.ClientSession() as http, http.post(url, data=_body(True, 12)) as r:
            raw = await r.read()
        assert epp.failed.is_set()
        assert raw.endswith(b"data: [DONE]\n\n")
        events = _events(raw)
        assert [e["choices"][0]["text"] for e in events] == [f"pod-{i} " for i in range(12)]
        assert {e["model"] for e in events} == {"m"}
    finally:
        await gw.stop()
        await server.stop(0)
        await pod.stop()


async def test_a_json_reply_is_finished_with_the_model_put_back_when_the_epp_fails() -> None:
    pod = await Backend("pod", tokens=5).start()
    epp, server, port = await _scripted(pod, lines_ok=-1)  # fails at the first response body message
    gw = await _gateway(port)
    try:
        url = f"http://127.0.0.1:{gw.port}/v1/completions"
        async with aiohttp.ClientSession() as http, http.post(url, data=_body(False, 5)) as r:
            assert r.status == 200
            reply = orjson.loads(await r.read())
        assert epp.failed.is_set()
        assert reply["model"] == "m" and reply["usage"]["completion_tokens"] == 5
        assert reply["choices"][0]["text"] == " ".join(f"pod-{i}" for i in range(5))
    finally:
        await gw.stop()
        await server.stop(0)
        await pod.stop()
