"""Plays Envoy's side of the ext_proc stream, so the EPP can be tested and benchmarked without Envoy.

``Exchange`` is one ``Process`` stream with the message sequence Envoy's ext_proc filter sends in
FULL_DUPLEX_STREAMED mode (request headers with end_of_stream false, body chunks, end_of_stream on the
last; then response headers and body chunks, with ``metadata_context`` carrying the subset hint and the
served endpoint). ``EnvoyHarness`` goes one step further and forwards each request over real HTTP to
the endpoint the EPP chose, like Envoy's ORIGINAL_DST cluster with ``use_http_header``, then streams the
model server's reply back through the EPP to the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import grpc
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from google.protobuf import json_format, struct_pb2

from kvgate.extproc import keys

_MODE = processing_mode_pb2.ProcessingMode
# What the gateway is configured with (endpoint-picker-protocol.md, "Processing mode").
PROTOCOL = pb.ProtocolConfiguration(
    request_body_mode=_MODE.FULL_DUPLEX_STREAMED, response_body_mode=_MODE.FULL_DUPLEX_STREAMED
)
ENVOY_CHUNK = 16_384  # Envoy forwards bodies in buffer-sized slices; any size must work


def header_map(headers: Mapping[str, str]) -> base_pb2.HeaderMap:
    return base_pb2.HeaderMap(
        headers=[base_pb2.HeaderValue(key=k.lower(), raw_value=v.encode()) for k, v in headers.items()]
    )


def _metadata(namespace: str, key: str, value: Any) -> base_pb2.Metadata:
    s = struct_pb2.Struct()
    s.update({key: value})
    md = base_pb2.Metadata()
    md.filter_metadata[namespace].CopyFrom(s)
    return md


def subset_metadata(addresses: Iterable[str]) -> base_pb2.Metadata:
    return _metadata(keys.SUBSET_HINT_NAMESPACE, keys.SUBSET_HINT_KEY, list(addresses))


def served_metadata(address: str) -> base_pb2.Metadata:
    return _metadata(keys.LB_NAMESPACE, keys.SERVED_ENDPOINT_KEY, address)


@dataclass(slots=True)
class Mutation:
    """What one HeadersResponse asked for."""

    set_headers: dict[str, str] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)
    clear_route_cache: bool = False

    @classmethod
    def of(cls, common: pb.CommonResponse) -> Mutation:
        sets = {
            h.header.key: (h.header.raw_value.decode() if h.header.raw_value else h.header.value)
            for h in common.header_mutation.set_headers
        }
        return cls(sets, list(common.header_mutation.remove_headers), common.clear_route_cache)

    def apply(self, headers: Mapping[str, str]) -> dict[str, str]:
        out = {k.lower(): v for k, v in headers.items() if k.lower() not in self.removed}
        out.update(self.set_headers)
        return out


@dataclass(slots=True)
class RequestOutcome:
    immediate: pb.ImmediateResponse | None = None
    mutation: Mutation = field(default_factory=Mutation)
    dynamic_metadata: dict[str, Any] = field(default_factory=dict)
    body: bytes = b""
    chunk_sizes: list[int] = field(default_factory=list)

    @property
    def status(self) -> int | None:
        return int(self.immediate.status.code) if self.immediate is not None else None

    @property
    def destination(self) -> str:
        return self.mutation.set_headers.get(keys.DESTINATION_ENDPOINT, "")

    @property
    def metadata_destination(self) -> str | None:
        lb = self.dynamic_metadata.get(keys.LB_NAMESPACE) or {}
        value = lb.get(keys.DESTINATION_ENDPOINT)
        return value if isinstance(value, str) else None


@dataclass(slots=True)
class ResponseOutcome:
    mutation: Mutation = field(default_factory=Mutation)
    body: bytes = b""
    chunk_sizes: list[int] = field(default_factory=list)


class ExchangeError(AssertionError):
    """The EPP answered out of protocol (wrong message kind or order)."""


class ImmediateAnswer(Exception):
    """The EPP answered the response headers with an ``ImmediateResponse`` (as Envoy does, the
    harness then sends that to the client instead of the upstream response, and resets the upstream)."""

    def __init__(self, immediate: pb.ImmediateResponse) -> None:
        super().__init__(f"immediate response {immediate.status.code}")
        self.immediate = immediate


class Exchange:
    """One ``Process`` stream. Use as ``async with Exchange(stub) as ex:``."""

    def __init__(self, stub: pb_grpc.ExternalProcessorStub, *, timeout: float = 30.0) -> None:
        self.stub = stub
        self.timeout = timeout
        self.call: Any = None
        self._replies: asyncio.Queue[pb.ProcessingResponse | BaseException | None] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None
        self._first = True

    async def __aenter__(self) -> Exchange:
        self.call = self.stub.Process()
        self._reader = asyncio.create_task(self._read_all())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _read_all(self) -> None:
        try:
            async for msg in self.call:
                await self._replies.put(msg)
            await self._replies.put(None)
        except BaseException as exc:  # surfaced to the next read(); cancellation included
            await self._replies.put(exc)

    async def write(self, msg: pb.ProcessingRequest) -> None:
        if self._first:
            msg.protocol_config.CopyFrom(PROTOCOL)  # Envoy sends it with the first message
            self._first = False
        await self.call.write(msg)

    async def read(self) -> pb.ProcessingResponse:
        async with asyncio.timeout(self.timeout):  # (not wait_for: on 3.11 it may drop a cancel, gh-86296)
            item = await self._replies.get()
        if item is None:
            raise ExchangeError("the EPP closed the stream")
        if isinstance(item, BaseException):
            raise item
        return item

    async def close(self) -> None:
        if self.call is not None and not self.call.done():
            with contextlib.suppress(Exception):
                await self.call.done_writing()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.wait([self._reader])  # (raises a cancel of this close; it ends on its own)

    def cancel(self) -> None:
        """Drop the stream mid-way, as Envoy does when the downstream client disconnects."""
        if self.call is not None:
            self.call.cancel()

    # ---- request path ---------------------------------------------------------------------------
    async def send_request(
        self,
        headers: Mapping[str, str],
        body: bytes | None,
        *,
        chunk_size: int = ENVOY_CHUNK,
        subset: Iterable[str] | None = None,
        trailers: Mapping[str, str] | None = None,
    ) -> RequestOutcome:
        md = subset_metadata(subset) if subset is not None else None
        first = pb.ProcessingRequest(
            request_headers=pb.HttpHeaders(headers=header_map(headers), end_of_stream=body is None)
        )
        if md is not None:
            first.metadata_context.CopyFrom(md)
        pieces = (
            []
            if body is None
            else [body[i : i + chunk_size] for i in range(0, len(body), chunk_size)] or [b""]
        )
        try:
            await self.write(first)
            for i, piece in enumerate(pieces):
                last = i == len(pieces) - 1 and trailers is None
                chunk = pb.HttpBody(body=piece, end_of_stream=last)
                await self.write(pb.ProcessingRequest(request_body=chunk))
            if body is not None and trailers is not None:
                tr = pb.HttpTrailers(trailers=header_map(trailers))
                await self.write(pb.ProcessingRequest(request_trailers=tr))
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            # The EPP ended the stream early (an ImmediateResponse, or the RPC was refused): like Envoy,
            # stop sending; reading the outcome below surfaces the answer or the RPC's real status.
            pass
        return await self.read_request_outcome(body is not None, trailers is not None)

    async def read_request_outcome(self, has_body: bool, has_trailers: bool = False) -> RequestOutcome:
        out = RequestOutcome()
        msg = await self.read()
        kind = msg.WhichOneof("response")
        if kind == "immediate_response":
            out.immediate = msg.immediate_response
            return out
        if kind != "request_headers":
            raise ExchangeError(f"expected request_headers first, got {kind}")
        out.mutation = Mutation.of(msg.request_headers.response)
        out.dynamic_metadata = json_format.MessageToDict(msg.dynamic_metadata)
        if not has_body:
            return out
        body = bytearray()
        while True:
            msg = await self.read()
            kind = msg.WhichOneof("response")
            if kind == "request_trailers" and has_trailers:
                break  # with trailers the body ends without end_of_stream; the trailers answer follows
            if kind != "request_body":
                raise ExchangeError(f"expected request_body chunks, got {kind}")
            sr = msg.request_body.response.body_mutation.streamed_response
            body += sr.body
            out.chunk_sizes.append(len(sr.body))
            if sr.end_of_stream:
                break
        out.body = bytes(body)
        return out

    # ---- response path --------------------------------------------------------------------------
    async def send_response_headers(
        self,
        status: int,
        headers: Mapping[str, str],
        *,
        served: str | None = None,
        end_of_stream: bool = False,
    ) -> Mutation:
        msg = pb.ProcessingRequest(
            response_headers=pb.HttpHeaders(
                headers=header_map({":status": str(status), **headers}), end_of_stream=end_of_stream
            )
        )
        if served is not None:
            msg.metadata_context.CopyFrom(served_metadata(served))
        await self.write(msg)
        reply = await self.read()
        if reply.WhichOneof("response") == "immediate_response":
            raise ImmediateAnswer(reply.immediate_response)
        if reply.WhichOneof("response") != "response_headers":
            raise ExchangeError(f"expected response_headers, got {reply.WhichOneof('response')}")
        return Mutation.of(reply.response_headers.response)

    async def send_response_chunk(self, chunk: bytes, *, end_of_stream: bool = False) -> None:
        body = pb.HttpBody(body=chunk, end_of_stream=end_of_stream)
        await self.write(pb.ProcessingRequest(response_body=body))

    async def response_body(self) -> AsyncIterator[tuple[bytes, bool]]:
        """The EPP's response body answers, as (chunk, end_of_stream), until end_of_stream."""
        while True:
            msg = await self.read()
            kind = msg.WhichOneof("response")
            if kind != "response_body":
                raise ExchangeError(f"expected response_body, got {kind}")
            sr = msg.response_body.response.body_mutation.streamed_response
            yield sr.body, sr.end_of_stream
            if sr.end_of_stream:
                return

    async def send_response(
        self,
        status: int,
        headers: Mapping[str, str],
        chunks: Iterable[bytes],
        *,
        served: str | None = None,
    ) -> ResponseOutcome:
        out = ResponseOutcome(mutation=await self.send_response_headers(status, headers, served=served))
        pieces = list(chunks) or [b""]
        for i, piece in enumerate(pieces):
            await self.send_response_chunk(piece, end_of_stream=i == len(pieces) - 1)
        body = bytearray()
        async for chunk, _eos in self.response_body():
            body += chunk
            out.chunk_sizes.append(len(chunk))
        out.body = bytes(body)
        return out


def channel(
    target: str,
    *,
    root_cert: bytes | None = None,
    client_pair: tuple[bytes, bytes] | None = None,
    server_name: str | None = None,
) -> grpc.aio.Channel:
    """A channel as the gateway opens it: plaintext, or TLS validating the server against ``root_cert``."""
    opts: list[tuple[str, Any]] = [("grpc.max_receive_message_length", 64 << 20)]
    if root_cert is None and client_pair is None:
        return grpc.aio.insecure_channel(target, options=opts)
    if server_name:
        opts.append(("grpc.ssl_target_name_override", server_name))
    creds = grpc.ssl_channel_credentials(
        root_certificates=root_cert,
        private_key=client_pair[1] if client_pair else None,
        certificate_chain=client_pair[0] if client_pair else None,
    )
    return grpc.aio.secure_channel(target, creds, options=opts)


@dataclass(slots=True)
class HarnessResult:
    status: int
    headers: dict[str, str]
    body: bytes
    destination: str = ""
    served: str = ""
    upstream_request_headers: dict[str, str] = field(default_factory=dict)
    # Loop time when the EPP's routing answer arrived: its pick was made between the call and then.
    picked: float = 0.0


class EnvoyHarness:
    """A tiny Envoy: ext_proc to the EPP, ORIGINAL_DST forwarding over HTTP, response back through it."""

    def __init__(
        self, stub: pb_grpc.ExternalProcessorStub, http: aiohttp.ClientSession, *, timeout: float = 60.0
    ) -> None:
        self.stub = stub
        self.http = http
        self.timeout = timeout

    async def request(
        self,
        method: str,
        path: str,
        body: bytes | None,
        headers: Mapping[str, str] | None = None,
        *,
        chunk_size: int = ENVOY_CHUNK,
        subset: Iterable[str] | None = None,
        abort_after_chunks: int | None = None,
    ) -> HarnessResult:
        client_headers = {
            ":method": method,
            ":path": path,
            ":authority": "gateway.local",
            ":scheme": "http",
            "content-type": "application/json",
            **(headers or {}),
        }
        if body is not None:
            client_headers["content-length"] = str(len(body))
        async with Exchange(self.stub, timeout=self.timeout) as ex:
            req = await ex.send_request(client_headers, body, chunk_size=chunk_size, subset=subset)
            picked = asyncio.get_running_loop().time()
            if req.immediate is not None:
                return HarnessResult(
                    int(req.immediate.status.code), {"content-type": "application/json"}, req.immediate.body,
                    picked=picked,
                )  # fmt: skip
            forwarded = req.mutation.apply(client_headers)
            upstream_headers = {k: v for k, v in forwarded.items() if not k.startswith(":")}
            last_error: Exception | None = None
            for address in req.destination.split(","):  # retries walk the fallback list in order
                try:
                    resp = await self.http.request(
                        method, f"http://{address}{path}", headers=upstream_headers,
                        data=req.body if body is not None else None,
                    )  # fmt: skip
                except aiohttp.ClientConnectionError as exc:
                    last_error = exc
                    continue
                try:
                    res = await self._relay(
                        ex, resp, address, req.destination, upstream_headers, abort_after_chunks
                    )
                    res.picked = picked
                    return res
                finally:
                    resp.release()
            raise ConnectionError(f"no endpoint of {req.destination!r} answered: {last_error}")

    async def _relay(
        self,
        ex: Exchange,
        resp: aiohttp.ClientResponse,
        served: str,
        destination: str,
        upstream_headers: dict[str, str],
        abort_after_chunks: int | None,
    ) -> HarnessResult:
        resp_headers = {k.lower(): v for k, v in resp.headers.items()}
        try:
            mutation = await ex.send_response_headers(resp.status, resp_headers, served=served)
        except ImmediateAnswer as answer:  # e.g. flow control preempted the request
            resp.close()
            imm = answer.immediate
            return HarnessResult(
                int(imm.status.code), {"content-type": "application/json"}, imm.body, destination, served
            )
        body = bytearray()
        collector = asyncio.create_task(self._collect(ex, body))
        sent = 0
        async for chunk in resp.content.iter_any():
            await ex.send_response_chunk(chunk)
            sent += 1
            if abort_after_chunks is not None and sent >= abort_after_chunks:
                collector.cancel()
                ex.cancel()  # the downstream client went away
                resp.close()
                return HarnessResult(
                    499, mutation.apply(resp_headers), bytes(body), destination, served, upstream_headers
                )
        await ex.send_response_chunk(b"", end_of_stream=True)
        await collector
        return HarnessResult(
            resp.status, mutation.apply(resp_headers), bytes(body), destination, served, upstream_headers
        )

    @staticmethod
    async def _collect(ex: Exchange, body: bytearray) -> None:
        async for chunk, _eos in ex.response_body():
            body += chunk
