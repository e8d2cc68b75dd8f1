"""Endpoint mode: the remote EPP learns the first token of every kind of stream (review s21-qa F1).

``kvgate serve --clusters`` sends a cluster's EPP the response body up to the first generated token (its
``SSEScanner``), then only the stream's end; the EPP's session marks the first token with the same rule.
Before, a tool-call, ``delta.reasoning``, Responses or Anthropic stream had no generated token by that
rule: the gateway sent the EPP every chunk, and the EPP kept the request an un-started prefill until the
stream ended (``decoding`` 0 on its pod mid-stream).

Real HTTP and gRPC on loopback: the global gateway, the cluster's ``kvgate epp`` in process and a pod that
streams the events of each kind, then holds the stream until the test lets it end.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest
from aiohttp import web

from .test_endpoint_inflight import _stop, _world

TOOL_CALL = {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                             "function": {"name": "get", "arguments": ""}}]}  # fmt: skip
_RESPONSE = {"id": "resp_1", "object": "response", "model": "m", "status": "in_progress", "output": []}


def _chunk(delta: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "c",
        "object": "chat.completion.chunk",
        "model": "m",
        "choices": [{"index": 0, "delta": delta}],
    }


ROLE = _chunk({"role": "assistant", "content": ""})
# kind: (path, the events the pod sends before it holds the stream)
KINDS: dict[str, tuple[str, list[dict[str, Any]]]] = {
    "content": ("/v1/chat/completions", [ROLE, _chunk({"content": "Hi"})]),  # control: marked before too
    "tool_calls": ("/v1/chat/completions", [ROLE, _chunk(TOOL_CALL)]),
    "reasoning": ("/v1/chat/completions", [ROLE, _chunk({"reasoning": "Hm"})]),
    "responses": ("/v1/responses", [
        {"type": "response.created", "sequence_number": 0, "response": _RESPONSE},
        {"type": "response.in_progress", "sequence_number": 1, "response": _RESPONSE},
        {"type": "response.output_text.delta", "sequence_number": 2, "item_id": "msg_1", "output_index": 0,
         "content_index": 0, "delta": "Hi"},
    ]),
    "anthropic": ("/v1/messages", [
        {"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant",
                                              "content": [], "model": "m",
                                              "usage": {"input_tokens": 7, "output_tokens": 0}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
    ]),
}  # fmt: skip


class HeldPod:
    """A model server double: streams ``events``, then holds the stream until ``resume`` is set."""

    def __init__(self, events: list[dict[str, Any]]) -> None:
        self.events = events
        self.held, self.resume = asyncio.Event(), asyncio.Event()
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> HeldPod:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._stream)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        self.resume.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for e in self.events:
            await resp.write(b"data: " + orjson.dumps(e) + b"\n\n")
        self.held.set()
        await self.resume.wait()
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


def _body(path: str) -> bytes:
    if path == "/v1/responses":
        return orjson.dumps({"model": "m", "input": "hello", "stream": True})
    extra = {"max_tokens": 16} if path == "/v1/messages" else {}
    return orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hello"}], "stream": True,
                         **extra})  # fmt: skip


@pytest.mark.parametrize("kind", list(KINDS))
async def test_the_remote_epp_sees_the_first_token_of_every_stream_kind(kind: str) -> None:
    path, events = KINDS[kind]
    pod = HeldPod(events)
    w, parts = await _world(pod)  # type: ignore[arg-type]
    try:
        async with w.http.post(f"{w.url}{path}", data=_body(path)) as r:
            assert r.status == 200 and r.headers["x-kvgate-route-mode"] == "endpoint"
            await asyncio.wait_for(pod.held.wait(), 30)
            # Mid-stream, its events relayed: the EPP holds the request as decoding on its pod.
            deadline = time.monotonic() + 30
            while w.pod_inflight() != (1, 1):
                assert time.monotonic() < deadline, f"{kind}: (requests, decoding) {w.pod_inflight()}"
                await asyncio.sleep(0.05)
            pod.resume.set()
            assert (await r.read()).endswith(b"data: [DONE]\n\n")
        await w.until("kvgate_epp_inflight_requests", 0)
        assert w.pod_inflight() == (0, 0)
    finally:
        await _stop(w, parts)
