"""Endpoint mode: ask a cluster's EPP (Envoy ext_proc, FULL_DUPLEX_STREAMED) which pod should serve a request.

The global gateway plays Envoy's part of the stream up to the pick: request headers, the body, then reads the
EPP's header mutation (``x-gateway-destination-endpoint``) or its ImmediateResponse (an error status). The
stream is then closed: the remote EPP counts the request as finished early, so its in-flight accounting for
Endpoint-mode traffic is shorter than the request (its scraped metrics still see the load).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from kvgate.multicluster.fetcher import RECONNECT
from kvgate.openai.protocol import DESTINATION_ENDPOINT

_MODE = processing_mode_pb2.ProcessingMode
_PROTOCOL = pb.ProtocolConfiguration(
    request_body_mode=_MODE.FULL_DUPLEX_STREAMED, response_body_mode=_MODE.FULL_DUPLEX_STREAMED
)
_CHUNK = 62_000


@dataclass(slots=True)
class EppPick:
    address: str | None = None  # host:port of the chosen pod
    status: int | None = None  # the EPP's ImmediateResponse status (429, 503, ...), when it refused


def _headers(headers: Mapping[str, str]) -> base_pb2.HeaderMap:
    return base_pb2.HeaderMap(
        headers=[base_pb2.HeaderValue(key=k.lower(), raw_value=v.encode()) for k, v in headers.items()]
    )


class EppClient:
    """One gRPC channel per EPP address; ``pick`` raises ``grpc.aio.AioRpcError`` / ``TimeoutError``."""

    def __init__(self, *, timeout_s: float = 2.0) -> None:
        self.timeout_s = timeout_s
        self._channels: dict[tuple[str, bool], grpc.aio.Channel] = {}

    def _stub(self, address: str, tls: bool) -> pb_grpc.ExternalProcessorStub:
        ch = self._channels.get((address, tls))
        if ch is None:
            ch = (
                grpc.aio.secure_channel(address, grpc.ssl_channel_credentials(), options=RECONNECT)
                if tls
                else grpc.aio.insecure_channel(address, options=RECONNECT)
            )
            self._channels[(address, tls)] = ch
        return pb_grpc.ExternalProcessorStub(ch)

    async def pick(self, address: str, path: str, headers: Mapping[str, str], body: bytes, *,
                   tls: bool = False) -> EppPick:  # fmt: skip
        call = self._stub(address, tls).Process(timeout=self.timeout_s)
        try:
            first = pb.ProcessingRequest(
                request_headers=pb.HttpHeaders(
                    headers=_headers({":method": "POST", ":path": path, **headers}), end_of_stream=False
                )
            )
            first.protocol_config.CopyFrom(_PROTOCOL)
            await call.write(first)
            pieces = [body[i : i + _CHUNK] for i in range(0, len(body), _CHUNK)] or [b""]
            for i, piece in enumerate(pieces):
                chunk = pb.HttpBody(body=piece, end_of_stream=i == len(pieces) - 1)
                await call.write(pb.ProcessingRequest(request_body=chunk))
            while True:
                msg = await asyncio.wait_for(call.read(), self.timeout_s)
                if msg is grpc.aio.EOF:
                    return EppPick()
                kind = msg.WhichOneof("response")
                if kind == "immediate_response":
                    return EppPick(status=int(msg.immediate_response.status.code))
                if kind == "request_headers":
                    for h in msg.request_headers.response.header_mutation.set_headers:
                        if h.header.key == DESTINATION_ENDPOINT:
                            v = h.header.raw_value.decode() if h.header.raw_value else h.header.value
                            return EppPick(address=v.split(",")[0].strip())
                    return EppPick()
        finally:
            call.cancel()

    async def close(self) -> None:
        for ch in self._channels.values():
            with contextlib.suppress(Exception):
                await ch.close()
        self._channels.clear()
