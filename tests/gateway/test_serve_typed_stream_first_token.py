"""Review s21-qa2 F1 (qa21b's test): `kvgate serve` marked a Responses stream's first token at its
`response.created`.

vLLM writes `response.created` and `response.in_progress` before it reads the engine's first output (so before
the prefill; kvgate's own `openai/sse.py` says so and the EPP now waits for a generated event). `kvgate
serve` calls `on_first_token` at the stream's first chunk: the request's prompt leaves the endpoint's
in-flight prefill, `decoding` is raised and a ~0 TTFT is learned while the server is still prefilling.
Here the server holds its first delta until the test lets it go; when the client has read
`response.created`, the gateway must still count the request as in prefill. The chat control (first chunk
is a token) passes."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
import pytest
from aiohttp import web

from gateway.conftest import base_url, make_config, running_gateway, until
from gateway.handler_server import serve_app

PROMPT = "word " * 4000  # ~4,000 tokens of estimate


class HeldServer:
    def __init__(self) -> None:
        self.go = asyncio.Event()
        self.done = asyncio.Event()

    async def start(self) -> HeldServer:
        app = web.Application()
        app.router.add_post("/v1/responses", self._responses)
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner, self.port = await serve_app(app, access_log=None)
        self.address = f"127.0.0.1:{self.port}"
        return self

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        doc = {"id": "resp_1", "object": "response", "model": "m", "status": "in_progress", "output": []}
        for kind in ("response.created", "response.in_progress"):  # vLLM: before the engine's first output
            ev = {"type": kind, "response": doc}
            await resp.write(b"event: %s\ndata: %s\n\n" % (kind.encode(), orjson.dumps(ev)))
        await self.go.wait()  # the prefill
        for kind, ev in (
            ("response.output_text.delta", {"item_id": "msg_1", "delta": "hi"}),
            ("response.completed", {"response": {**doc, "status": "completed"}}),
        ):
            await resp.write(b"event: %s\ndata: %s\n\n" % (kind.encode(), orjson.dumps({"type": kind, **ev})))
        await resp.write_eof()
        return resp

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        await self.go.wait()  # the prefill: vLLM's role chunk comes with the first token
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        chunk = {"id": "c", "object": "chat.completion.chunk", "model": "m",
                 "choices": [{"index": 0, "delta": {"role": "assistant", "content": "hi"}}]}  # fmt: skip
        await resp.write(b"data: %s\n\n" % orjson.dumps(chunk))
        await self.done.wait()  # (ended by the test's stop)
        return resp

    async def stop(self) -> None:
        self.go.set()
        self.done.set()
        await self._runner.cleanup()


@pytest.mark.parametrize("door", ["responses", "chat-control"])
async def test_serve_counts_a_responses_stream_in_prefill_until_a_generated_event(door: str) -> None:
    srv = await HeldServer().start()
    try:
        async with running_gateway(make_config([srv.address])) as gw:
            ep = gw.pools[0].endpoints()[0]
            async with aiohttp.ClientSession() as s:
                if door == "responses":
                    body = {"model": "m", "input": PROMPT, "stream": True}
                    path = "/v1/responses"
                else:
                    body = {"model": "m", "messages": [{"role": "user", "content": PROMPT}], "stream": True}
                    path = "/v1/chat/completions"
                    srv.go.set()
                async with s.post(base_url(gw) + path, data=orjson.dumps(body)) as r:
                    assert r.status == 200
                    first = await r.content.readuntil(b"\n\n")  # the client has the stream's first event
                    if door == "responses":
                        assert b"response.created" in first
                        inf = ep.inflight
                        # Still prefilling at the server: no token generated yet.
                        assert inf.requests == 1
                        assert inf.decoding == 0, "decoding raised at response.created (before any token)"
                        assert inf.pending_prefill_tokens > 0, "prompt left the in-flight prefill"
                        srv.go.set()
                    else:
                        assert b"hi" in first
                        await until(lambda: ep.inflight.decoding == 1, what="chat first token marked")
    finally:
        await srv.stop()
