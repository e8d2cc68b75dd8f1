"""Review s23-qa F3 and its related Low (the reviewer's test ``test_qa23_anthropic_stream_cut_event.py``,
adapted and widened; fixed by fixqa23a).

A cut ``/v1/messages`` stream ended with vLLM's *OpenAI* mid-stream error, ``data: {"error": {...}}`` with
no ``event:`` line. The Anthropic SDK skips every SSE event whose ``event`` is None (anthropic
``_streaming.py``: ``if sse.event is None: continue``), so its client saw a clean end and a truncated
message. vLLM's own ``/v1/messages`` ends a failed stream with ``event: error`` + ``data: {"type": "error",
"error": {"type", "message"}}`` (``vllm/entrypoints/anthropic/serving.py``, ``wrap_data_with_event(data,
"error")``), on which the SDK raises. Every door's cut is covered: ``kvgate serve``'s upstream cut, its
``requestTimeoutSeconds`` and its drain's deadline; ``kvgate serve --clusters``' drain; ``kvgate epp``'s
504 (its hub, the same ``ExtProcSession.cut``). Other APIs keep the OpenAI event.

The Low: ``kvgate serve``'s refusals of a ``/v1/messages`` request (400, 404, flow control's 429 / 503) were
in OpenAI's shape, where vLLM answers ``/v1/messages`` in Anthropic's (``translate_error_response``).

Upstreams: raw loopback servers writing the Anthropic stream's first events, then cutting (aborting) or
holding the connection."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from gateway.conftest import base_url, make_config, make_pools
from gateway.sse_upstream import SSE_HEAD, chunk, listen_address, serve_raw
from gateway.test_drain_cut_races import drain_cut_clusters
from kvgate.gateway.server import GatewayServer
from multicluster.test_hub_request_timeout import SSE, _hub


def event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps({"type": name, **data}) + b"\n\n"


_MSG = {"id": "msg_1", "type": "message", "role": "assistant", "model": "m", "content": [],
        "stop_reason": None, "usage": {"input_tokens": 3, "output_tokens": 0}}  # fmt: skip
START = (
    event("message_start", {"message": _MSG})
    + event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
    + event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "Hel"}})
)
RESPONSES_START = event(
    "response.created", {"response": {"id": "resp_1", "object": "response", "status": "in_progress"}}
) + event("response.output_text.delta", {"delta": "Hel", "output_index": 0, "content_index": 0})
MESSAGES = {"model": "m", "max_tokens": 16, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
RESPONSES = {"model": "m", "input": "hi", "stream": True}


@contextlib.asynccontextmanager
async def upstream(start: bytes, *, cut: bool) -> AsyncIterator[str]:
    """Answers every POST with a 200 event stream, ``start``, then aborts the connection (``cut``: the
    server died mid-answer) or holds it (a long generation)."""

    async def answer(_body: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(SSE_HEAD + chunk(start))
        await writer.drain()
        if cut:
            await asyncio.sleep(0.05)
            writer.transport.abort()

    server = await serve_raw(answer)
    try:
        yield listen_address(server)
    finally:
        server.close()


def last_event(raw: bytes) -> bytes:
    return raw.replace(b"\r\n", b"\n").rstrip(b"\n").rsplit(b"\n\n", 1)[-1]


def anthropic_error(last: bytes) -> dict[str, Any]:
    """``last``'s ``error``, asserting Anthropic's stream error event (the SDK raises on it)."""
    assert last.startswith(b"event: error\ndata: "), (
        f"the cut /v1/messages stream ends with {last!r}: no `event: error` line, so the Anthropic SDK "
        "skips it and its client sees a clean, truncated end"
    )
    data = orjson.loads(last.split(b"data: ", 1)[1])
    assert data["type"] == "error" and set(data["error"]) == {"type", "message"}, data
    return data["error"]  # type: ignore[no-any-return]


async def stream_through(gw: GatewayServer, path: str, body: dict[str, Any], drain_s: float = 0.0) -> bytes:
    """One stream through ``gw``: its whole body; ``drain_s``: once its first event came, the gateway
    stops with that drain deadline (and is stopped here)."""
    async with aiohttp.ClientSession() as s, s.post(base_url(gw) + path, json=body) as r:
        assert r.status == 200
        if not drain_s:
            return await asyncio.wait_for(r.read(), 10)
        raw = await r.content.readuntil(b"\n\n")
        stop = asyncio.create_task(gw.stop(drain_timeout=drain_s))
        raw += await asyncio.wait_for(r.read(), 10)
        await asyncio.wait_for(stop, 10)
        return raw


@pytest.mark.parametrize("how", ["upstream_cut", "request_timeout", "drain"])
async def test_a_cut_messages_stream_ends_with_an_anthropic_error_event(how: str) -> None:
    extra = {"limits": {"requestTimeoutSeconds": 0.5}} if how == "request_timeout" else None
    async with upstream(START, cut=how == "upstream_cut") as address:
        cfg = make_config([address], extra=extra)
        gw = GatewayServer(cfg, make_pools(cfg), scrape=False)
        await gw.start()
        try:
            raw = await stream_through(gw, "/v1/messages", MESSAGES, 0.3 if how == "drain" else 0.0)
        finally:
            await gw.stop(drain_timeout=0.1)
    assert raw.startswith(START), raw
    error = anthropic_error(last_event(raw))
    expected = {
        "upstream_cut": ("api_error", "was cut"),
        "request_timeout": ("timeout_error", "requestTimeoutSeconds"),
        "drain": ("api_error", "shutting down"),
    }[how]
    assert error["type"] == expected[0] and expected[1] in error["message"], error


async def test_a_cut_responses_stream_keeps_the_openai_error_event() -> None:
    async with upstream(RESPONSES_START, cut=True) as address:
        cfg = make_config([address])
        gw = GatewayServer(cfg, make_pools(cfg), scrape=False)
        await gw.start()
        try:
            raw = await stream_through(gw, "/v1/responses", RESPONSES)
        finally:
            await gw.stop(drain_timeout=0.1)
    last = last_event(raw)
    assert last.startswith(b"data: "), last  # (the openai SDK raises on ``data: {"error": ...}``)
    assert orjson.loads(last.removeprefix(b"data: "))["error"]["code"] == "upstream_error", last


async def test_the_clusters_door_ends_a_drained_messages_stream_with_an_anthropic_error_event() -> None:
    async with upstream(START, cut=False) as address:
        raw = await drain_cut_clusters(address, "/v1/messages", pause_s=0, post={"json": MESSAGES})
    error = anthropic_error(last_event(raw))
    assert error["type"] == "api_error" and "shutting down" in error["message"], error


async def test_the_epp_ends_a_messages_stream_cut_at_its_bound_with_an_anthropic_error_event() -> None:
    headers = {":method": "POST", ":path": "/v1/messages", "content-type": "application/json"}
    async with _hub(0.6) as (_director, _west, _health, ex):
        await ex.send_request(headers, orjson.dumps(MESSAGES))
        await ex.send_response_headers(200, SSE)
        await ex.send_response_chunk(START)
        body = bytearray()
        async for piece, _eos in ex.response_body():
            body += piece
    assert bytes(body).startswith(START), body
    error = anthropic_error(last_event(bytes(body)))
    assert error["type"] == "timeout_error" and "requestTimeoutSeconds" in error["message"], error


@pytest.mark.parametrize(
    ("body", "status"),
    [({"model": "nope", "max_tokens": 4, "messages": []}, 404), ({"model": "m", "max_tokens": "x"}, 400)],
)
async def test_a_refused_messages_request_is_answered_in_anthropics_shape(
    body: dict[str, Any], status: int
) -> None:
    cfg = make_config(["127.0.0.1:9"])
    gw = GatewayServer(cfg, make_pools(cfg), scrape=False)
    await gw.start()
    try:
        async with aiohttp.ClientSession() as s:
            async with s.post(base_url(gw) + "/v1/messages", json=body) as r:
                assert r.status == status
                got = orjson.loads(await r.read())
            chat = {**body, "messages": [{"role": "user", "content": "hi"}]}
            async with s.post(base_url(gw) + "/v1/chat/completions", json=chat) as r:
                assert r.status == status
                other = orjson.loads(await r.read())
    finally:
        await gw.stop(drain_timeout=0.1)
    kind = {404: "not_found_error", 400: "invalid_request_error"}[status]
    assert got["type"] == "error" and got["error"]["type"] == kind and got["error"]["message"], got
    assert set(got["error"]) == {"type", "message"}, got
    assert set(other["error"]) == {"message", "type", "param", "code"}, other  # (chat: OpenAI's, as before)


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/chat/completions"])
def test_the_epp_refuses_a_messages_request_in_anthropics_shape(path: str) -> None:
    """``kvgate epp``'s refusals (``Session._reject``) alike: Anthropic's shape on ``/v1/messages`` only."""
    from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

    from extproc.test_preemption_session import Registering
    from kvgate.extproc.session import Session, SessionContext
    from kvgate.extproc.testing import header_map

    d = Registering()
    ep = d.pick(None).endpoints[0]  # type: ignore[arg-type]
    s = Session(SessionContext(d, lambda: {ep.address: ep}, clock=time.monotonic))
    h = {":method": "POST", ":path": path}
    assert s.handle(pb.ProcessingRequest(request_headers=pb.HttpHeaders(headers=header_map(h)))) == []
    body = orjson.dumps({"model": "m", "max_tokens": "x", "messages": [{"role": "user", "content": "hi"}]})
    (out,) = s.handle(pb.ProcessingRequest(request_body=pb.HttpBody(body=body, end_of_stream=True)))
    assert out.immediate_response.status.code == 400, out
    got = orjson.loads(out.immediate_response.body)
    if path == "/v1/messages":
        assert got["type"] == "error" and set(got["error"]) == {"type", "message"}, got
        assert got["error"]["type"] == "invalid_request_error" and "max_tokens" in got["error"]["message"]
    else:
        assert set(got["error"]) == {"message", "type", "param", "code"}, got


async def test_the_clusters_door_refuses_a_messages_request_in_anthropics_shape() -> None:
    """``kvgate serve --clusters``' refusals alike (its parse's 400 here; its routing's 429 / 503 / 504 share
    the helper, ``_refuse``)."""
    from kvgate.multicluster.clusters import ClustersConfig, ClusterSpec
    from kvgate.multicluster.serve import GlobalGateway

    clusters = ClustersConfig((ClusterSpec("c1", gateway="127.0.0.1:9"),))
    gw = GlobalGateway(clusters, "round-robin", fetch=False)
    await gw.start("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as s:
            bad = {"model": "m", "max_tokens": "x", "messages": [{"role": "user", "content": "hi"}]}
            async with s.post(f"http://127.0.0.1:{gw.port}/v1/messages", json=bad) as r:
                assert r.status == 400
                got = orjson.loads(await r.read())
            async with s.post(f"http://127.0.0.1:{gw.port}/v1/chat/completions", json=bad) as r:
                assert r.status == 400
                other = orjson.loads(await r.read())
    finally:
        await gw.stop()
    assert got["type"] == "error" and set(got["error"]) == {"type", "message"}, got
    assert got["error"]["type"] == "invalid_request_error", got
    assert set(other["error"]) == {"message", "type", "param", "code"}, other
