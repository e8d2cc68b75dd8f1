"""A small OpenAI-compatible model server over real HTTP, for the end-to-end harness.

It answers like vLLM's front end (JSON with ``usage``; SSE with a final usage chunk when asked) and
records what it received, so tests can check what the EPP let through. Streams pace their chunks
with a tiny delay so a client can disconnect mid-stream.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web


@dataclass
class Upstream:
    runner: web.AppRunner
    address: str
    seen: list[dict[str, Any]] = field(default_factory=list)
    active_streams: int = 0


def _reply(model: str, prompt_tokens: int, n: int, chat: bool) -> dict[str, Any]:
    text = "tok " * n
    choice = {"index": 0, "finish_reason": "length"}
    choice.update({"message": {"role": "assistant", "content": text}} if chat else {"text": text})
    return {
        "id": "cmpl-1", "object": "chat.completion" if chat else "text_completion", "model": model,
        "choices": [choice],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": n, "total_tokens": prompt_tokens + n,
                  "prompt_tokens_details": {"cached_tokens": prompt_tokens // 2}},
    }  # fmt: skip


async def start_upstream(step_s: float = 0.002) -> Upstream:
    up: Upstream | None = None

    async def handle(request: web.Request) -> web.StreamResponse:
        assert up is not None
        raw = await request.read()
        body = orjson.loads(raw) if raw else {}
        up.seen.append(
            {
                "headers": {k.lower(): v for k, v in request.headers.items()},
                "body": body,
                "path": request.path,
            }
        )
        model = body.get("model", "")
        if model == "broken-model":
            return web.json_response({"error": {"message": "boom"}}, status=500)
        chat = request.path.endswith("/chat/completions")
        prompt = orjson.dumps(body.get("messages")).decode() if chat else str(body.get("prompt", ""))
        n = int(body.get("max_tokens") or 4)
        if not body.get("stream"):
            return web.json_response(_reply(model, len(prompt) // 4, n, chat))
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        up.active_streams += 1
        try:
            for i in range(n):
                delta = {"delta": {"content": f"t{i} "}} if chat else {"text": f"t{i} "}
                event = {"id": "c", "model": model, "choices": [{"index": 0, **delta}]}
                await resp.write(b"data: " + orjson.dumps(event) + b"\n\n")
                await asyncio.sleep(step_s)
            if (body.get("stream_options") or {}).get("include_usage"):
                usage = _reply(model, len(prompt) // 4, n, chat)["usage"]
                event = {"id": "c", "model": model, "choices": [], "usage": usage}
                await resp.write(b"data: " + orjson.dumps(event) + b"\n\n")
            await resp.write(b"data: [DONE]\n\n")
        finally:
            up.active_streams -= 1
        return resp

    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(text="vllm:num_requests_waiting 0\nvllm:num_requests_running 0\n")

    app = web.Application(client_max_size=64 << 20)
    app.router.add_post("/v1/{tail:.*}", handle)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/models", _models)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    up = Upstream(runner, f"127.0.0.1:{sock.getsockname()[1]}")
    return up


async def _models(_request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [{"id": "m", "object": "model"}]})
