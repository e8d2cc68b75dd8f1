"""A cluster EPP's fallback list in Endpoint mode (GIE proposal 004: ``x-gateway-destination-endpoint`` may
name ``ip:port,ip:port,...``; "The first valid endpoint in the list will be used. If retry is configured,
the proxy will go sequentially down the list"; Envoy's Override Host policy forwards to the first address and
uses "subsequent addresses ... for request retries"). ``kvgate serve --clusters`` took only the first
address: a first pod it could not connect to failed the cluster (no Parent route) although the EPP had named
another. Now the hub walks the list on a connect failure (nothing sent) and reports the address that answered
as the served endpoint (``envoy.lb`` / ``x-gateway-destination-endpoint-served``), as such an Envoy does.
A scripted EPP on loopback (port 0) naming a refusing address first (a socket bound, never listening: the
port held, every connect refused), then a real pod.

Fails on main aa46aa9a: 503 (the cluster failed at its first address)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc
import orjson
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from gateway.backend import Backend
from kvgate.multicluster.clusters import ClusterSpec

BODY = orjson.dumps({"model": "m", "prompt": "x", "max_tokens": 2})


def _body(data: bytes, eos: bool, *, request: bool) -> pb.ProcessingResponse:
    common = pb.CommonResponse(
        body_mutation=pb.BodyMutation(streamed_response=pb.StreamedBodyResponse(body=data, end_of_stream=eos))
    )
    if request:
        return pb.ProcessingResponse(request_body=pb.BodyResponse(response=common))
    return pb.ProcessingResponse(response_body=pb.BodyResponse(response=common))


class ListEpp(pb_grpc.ExternalProcessorServicer):
    """Names ``destination`` for every request (the body sent back as it came), and records the served
    address the gateway reports with each response's headers."""

    def __init__(self, destination: str) -> None:
        self.destination = destination
        self.served: list[str] = []

    async def Process(self, request_iterator: Any, context: Any) -> AsyncIterator[pb.ProcessingResponse]:
        body = b""
        async for msg in request_iterator:
            kind = msg.WhichOneof("request")
            if kind == "request_body":
                body += msg.request_body.body
                if msg.request_body.end_of_stream:
                    dest = base_pb2.HeaderValue(
                        key="x-gateway-destination-endpoint", raw_value=self.destination.encode()
                    )
                    mutation = pb.HeaderMutation(set_headers=[base_pb2.HeaderValueOption(header=dest)])
                    yield pb.ProcessingResponse(
                        request_headers=pb.HeadersResponse(
                            response=pb.CommonResponse(header_mutation=mutation)
                        )
                    )
                    yield _body(body, True, request=True)
            elif kind == "response_headers":
                lb = msg.metadata_context.filter_metadata["envoy.lb"]
                self.served.append(lb.fields["x-gateway-destination-endpoint-served"].string_value)
                yield pb.ProcessingResponse(response_headers=pb.HeadersResponse())
            elif kind == "response_body":
                yield _body(msg.response_body.body, msg.response_body.end_of_stream, request=False)


async def test_the_hub_walks_its_cluster_epps_fallback_list_past_a_pod_it_cannot_reach(
    global_gateway,
) -> None:
    refusing = socket.socket()  # bound, never listening: its port held (no one else's), connects refused
    refusing.bind(("127.0.0.1", 0))
    dead = f"127.0.0.1:{refusing.getsockname()[1]}"
    good = await Backend("good").start()
    epp = ListEpp(f"{dead},{good.address}")
    server = grpc.aio.server()
    pb_grpc.add_ExternalProcessorServicer_to_server(epp, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        hub = await global_gateway(ClusterSpec("c0", epp=f"127.0.0.1:{port}"))
        url = f"http://127.0.0.1:{hub.port}/v1/completions"
        async with aiohttp.ClientSession() as http, http.post(url, data=BODY) as r:
            status, raw, mode = r.status, await r.read(), r.headers.get("x-kvgate-route-mode")
        assert (status, mode) == (200, "endpoint"), raw
        assert orjson.loads(raw)["choices"][0]["text"].startswith("good-"), raw
        assert len(good.received) == 1
        assert epp.served == [good.address]  # (the EPP told which address served: its accounting moves)
    finally:
        await server.stop(0)
        await good.stop()
        refusing.close()
