"""``kvgate epp`` marks the first token of every kind of stream (review s21-qa F1).

It marked only events with ``choices[].text``, ``delta.content`` or ``delta.reasoning_content``: a chat
stream of tool calls (``delta.tool_calls``), of reasoning under the name vLLM uses now
(``delta.reasoning``), a Responses API stream and an Anthropic Messages stream never had a first token
before its end. The request stayed an un-started prefill of its whole prompt on its endpoint
(``pending_prefill_tokens``, ``decoding`` not raised): new requests went to the busier pod, and flow
control's saturation detector took the streams for queued requests and held requests back while the pod
had free slots.

The first token is the first event that carries generated output (``kvgate.openai.sse.has_output``); the
events a server may send before its prefill ends are none: a chat stream's role-only opening chunk, a
Responses stream's ``response.created`` / ``response.in_progress`` (vLLM sends them before it reads the
engine), an Anthropic stream's ``message_start`` and ``ping``.

Real gRPC on loopback: the tests play Envoy (``Exchange``) and hand the EPP the response events as Envoy
would; the pods' addresses are never dialled.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from flowcontrol.test_doors import picker_config
from gateway.conftest import make_config
from kvgate.datalayer.store import EndpointStore
from kvgate.extproc.config import EppConfig
from kvgate.extproc.context import build_context
from kvgate.extproc.server import EppServer, ServerOptions
from kvgate.extproc.testing import Exchange, channel
from kvgate.openai.sse import has_output

from .conftest import StartEpp

A, B = "127.0.0.41:29401", "127.0.0.42:29402"  # never dialled (two IPs: a subset hint names a pod by IP)
CHAT, RESPONSES, MESSAGES = "/v1/chat/completions", "/v1/responses", "/v1/messages"
PROMPT = "x " * 400


def _chunk(delta: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "c",
        "object": "chat.completion.chunk",
        "model": "m",
        "choices": [{"index": 0, "delta": delta}],
    }


ROLE = _chunk({"role": "assistant", "content": ""})  # vLLM's opening chunk of every chat stream
TOOL_CALL = _chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                    "function": {"name": "get", "arguments": ""}}]})  # fmt: skip
_RESPONSE = {"id": "resp_1", "object": "response", "model": "m", "status": "in_progress", "output": [],
             "usage": None}  # fmt: skip

# kind: (path, body, events that carry no output (sent before the first token), the first generated event)
KINDS: dict[str, tuple[str, dict[str, Any], list[dict[str, Any]], dict[str, Any]]] = {
    # controls: marked before too
    "chat-content": (CHAT, {}, [ROLE], _chunk({"content": "Hi"})),
    "completions-text": ("/v1/completions", {}, [], {"id": "c", "model": "m", "choices": [{"index": 0,
                                                                                      "text": "Hi"}]}),
    # F1
    "chat-reasoning": (CHAT, {}, [ROLE], _chunk({"reasoning": "Hm"})),  # vLLM since PR #27752
    "chat-tool-call": (CHAT, {}, [ROLE], TOOL_CALL),
    "chat-finish-only": (CHAT, {}, [ROLE], {**_chunk({}), "choices": [{"index": 0, "delta": {},
                                                                        "finish_reason": "stop"}]}),
    "responses": (RESPONSES, {}, [
        {"type": "response.created", "sequence_number": 0, "response": _RESPONSE},
        {"type": "response.in_progress", "sequence_number": 1, "response": _RESPONSE},
    ], {"type": "response.output_item.added", "sequence_number": 2, "output_index": 0,
        "item": {"id": "msg_1", "type": "message", "role": "assistant", "status": "in_progress",
                 "content": []}}),
    "responses-text": (RESPONSES, {}, [
        {"type": "response.created", "sequence_number": 0, "response": _RESPONSE},
    ], {"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 0, "content_index": 0,
        "delta": "Hi", "sequence_number": 3}),
    "anthropic": (MESSAGES, {"max_tokens": 64}, [
        {"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant",
                                              "content": [], "model": "m", "stop_reason": None,
                                              "usage": {"input_tokens": 200, "output_tokens": 0}}},
        {"type": "ping"},
    ], {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    "anthropic-thinking": (MESSAGES, {"max_tokens": 64}, [], {"type": "content_block_delta", "index": 0,
                                                              "delta": {"type": "thinking_delta",
                                                                        "thinking": "Hm"}}),
}  # fmt: skip


def _request(path: str, extra: dict[str, Any], prompt: str = PROMPT) -> tuple[dict[str, str], bytes]:
    if path == RESPONSES:
        body: dict[str, Any] = {"model": "m", "input": prompt}
    elif path == "/v1/completions":
        body = {"model": "m", "prompt": prompt}
    else:
        body = {"model": "m", "messages": [{"role": "user", "content": prompt}]}
    raw = orjson.dumps({**body, **extra, "stream": True})
    headers = {":method": "POST", ":path": path, ":authority": "g", ":scheme": "http",
               "content-type": "application/json", "content-length": str(len(raw))}  # fmt: skip
    return headers, raw


def _event(obj: dict[str, Any]) -> bytes:
    kind = obj.get("type")
    named = b"event: " + kind.encode() + b"\n" if isinstance(kind, str) and "." not in kind else b""
    return named + b"data: " + orjson.dumps(obj) + b"\n\n"  # (Anthropic's streams name each event)


async def _relay(ex: Exchange, event: dict[str, Any]) -> None:
    await ex.send_response_chunk(_event(event))
    assert (await ex.read()).WhichOneof("response") == "response_body"


@pytest.mark.parametrize("kind", list(KINDS))
async def test_the_first_generated_event_of_every_stream_kind_is_the_first_token(
    start_epp: StartEpp, kind: str
) -> None:
    path, extra, opening, first = KINDS[kind]
    epp = await start_epp([A])
    ep = epp.store.all()[0]
    headers, raw = _request(path, extra)
    async with Exchange(epp.stub, timeout=10) as ex:
        out = await ex.send_request(headers, raw)
        assert out.immediate is None and out.destination == A
        prefill = ep.inflight.pending_prefill_tokens
        assert prefill > 0
        await ex.send_response_headers(200, {"content-type": "text/event-stream"}, served=A)
        for event in opening:  # sent before the prefill ends (by some server): no first token
            await _relay(ex, event)
        assert epp.picker.calls.first_token == [], f"{kind}: marked before any output"
        assert (ep.inflight.pending_prefill_tokens, ep.inflight.decoding) == (prefill, 0)
        await _relay(ex, first)
        await _relay(ex, first)
        assert len(epp.picker.calls.first_token) == 1, (
            f"{kind}: no first token after 2 generated events (pending_prefill_tokens "
            f"{ep.inflight.pending_prefill_tokens} of {prefill}, decoding {ep.inflight.decoding})"
        )
        assert (ep.inflight.pending_prefill_tokens, ep.inflight.decoding) == (0, 1)
        await ex.send_response_chunk(b"data: [DONE]\n\n", end_of_stream=True)
        await ex.read()
    assert len(epp.picker.calls.finished) == 1 and len(epp.picker.calls.first_token) == 1


def test_error_events_and_openings_are_no_first_token() -> None:
    """An error event says nothing about the prefill, whatever its shape: vLLM's (``{"error": ...}``, and
    before that ``{"object": "error", "type": "BadRequestError", ...}``), the Responses API's and
    Anthropic's (``"type": "error"``), ``response.failed``; nor does a usage-only chunk."""
    for event in (
        {"error": {"message": "x", "type": "BadRequestError", "code": 400}},
        {"object": "error", "message": "x", "type": "BadRequestError", "param": None, "code": 400},
        {"type": "error", "code": "server_error", "message": "x", "sequence_number": 2},
        {"type": "error", "error": {"type": "overloaded_error", "message": "x"}},
        {"type": "response.failed", "sequence_number": 2, "response": _RESPONSE},
        {"type": "response.queued", "sequence_number": 0, "response": _RESPONSE},
        {**ROLE, "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 0}},
        ROLE,
        [ROLE],
    ):
        assert not has_output(event), event


STREAM_KINDS = {
    "content": _chunk({"content": "x"}),
    "tool_calls": TOOL_CALL,
    "reasoning": _chunk({"reasoning": "hm"}),
}


async def _open_stream(stub: pb_grpc.ExternalProcessorStub, streams: list[Exchange], target: str | None,
                       prompt: str, event: dict[str, Any]) -> None:  # fmt: skip
    """A stream placed on ``target`` (a subset hint; any pod when None), its role chunk and two ``event``s
    relayed: generating."""
    headers, raw = _request(CHAT, {}, prompt)
    ex = await Exchange(stub, timeout=10).__aenter__()
    streams.append(ex)
    out = await ex.send_request(headers, raw, subset=[target] if target else None)
    assert out.immediate is None and (target is None or out.destination == target)
    await ex.send_response_headers(200, {"content-type": "text/event-stream"}, served=out.destination)
    for e in (ROLE, event, event):
        await _relay(ex, e)


async def _close(streams: list[Exchange]) -> None:
    for ex in streams:
        with contextlib.suppress(BaseException):
            ex.cancel()
            await ex.close()


@pytest.mark.parametrize("kind", list(STREAM_KINDS))
async def test_new_requests_go_to_the_pod_with_fewer_generating_streams(
    start_epp: StartEpp, kind: str
) -> None:
    """Default ``kvgate`` policy: A runs one stream (``kind``), B two (content), all generating. The next
    10 requests go to A. Before, with a tool-call or reasoning stream on A, all 10 went to B: A carried its
    stream's 3,003-token prompt as pending prefill for the stream's whole life."""
    epp = await start_epp([A, B])
    assert epp.stub is not None
    streams: list[Exchange] = []
    try:
        await _open_stream(epp.stub, streams, A, "0 " + "tok " * 3000, STREAM_KINDS[kind])
        await _open_stream(epp.stub, streams, B, "1 " + "tok " * 3000, STREAM_KINDS["content"])
        await _open_stream(epp.stub, streams, B, "2 " + "tok " * 3000, STREAM_KINDS["content"])
        picks = {A: 0, B: 0}
        for k in range(10):
            raw = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": f"new {k}"}],
                                "max_tokens": 5})  # fmt: skip
            headers = {":method": "POST", ":path": CHAT, ":authority": "g", ":scheme": "http",
                       "content-type": "application/json", "content-length": str(len(raw))}  # fmt: skip
            async with Exchange(epp.stub, timeout=10) as ex:
                out = await ex.send_request(headers, raw)
                picks[out.destination] += 1
                await ex.send_response_headers(
                    200, {"content-type": "application/json"}, served=out.destination
                )
                await ex.send_response_chunk(b'{"usage":{"prompt_tokens":3,"completion_tokens":5}}',
                                             end_of_stream=True)  # fmt: skip
                await ex.read()
        assert picks[A] > picks[B], f"{kind}: A (1 stream) got {picks[A]}, B (2 streams) got {picks[B]}"
    finally:
        await _close(streams)


@pytest.mark.parametrize("kind", list(STREAM_KINDS))
async def test_generating_streams_do_not_saturate_their_pod(kind: str) -> None:
    """Flow control's documented set-up (``concurrency-detector``, ``maxPendingRequests: 2``,
    ``maxConcurrency: 8``): two streams generating on the only pod leave it 6 free slots, so a third request
    is dispatched at once. Before, two tool-call or reasoning streams counted as 2 queued requests
    (``requests - decoding``): the pod saturated, the third held in the EPP's queue until a stream ended."""
    cfg = make_config([A], extra={})
    pc = picker_config()
    pc["saturationDetector"]["parameters"] = {"maxConcurrency": 8, "maxPendingRequests": 2}
    ctx = build_context(
        EppConfig(pool=cfg.pools[0], gateway=cfg, picker_config=pc), EndpointStore.from_addresses([A]),
        clock=time.monotonic,
    )  # fmt: skip
    server = EppServer(ctx, ServerOptions(host="127.0.0.1", port=0, health_port=None, metrics_port=None))
    await server.start()
    ch = channel(f"127.0.0.1:{server.port}")
    stub = pb_grpc.ExternalProcessorStub(ch)
    streams: list[Exchange] = []
    third: asyncio.Future[Any] | None = None
    try:
        for i in range(2):
            await _open_stream(stub, streams, None, f"q{i}", STREAM_KINDS[kind])
        headers, raw = _request(CHAT, {}, "q3")
        ex3 = await Exchange(stub, timeout=30).__aenter__()
        streams.append(ex3)
        third = asyncio.ensure_future(ex3.send_request(headers, raw))
        await asyncio.wait({third}, timeout=5.0)  # (dispatched at once when right; held: until its TTL)
        assert third.done(), f"{kind}: held in the queue while the pod runs 2 of 8 (both generating)"
        assert third.result().destination == A
    finally:
        if third is not None and not third.done():
            third.cancel()
        await _close(streams)
        await ch.close()
        await server.stop(0)
