"""One aiohttp handler served on a loopback port, and the model server that cuts a stream after its usage
event: shared by the door tests that compare what a cut or error stream's usage counts."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

TOKEN = {"id": "x", "object": "text_completion", "model": "m", "choices": [{"index": 0, "text": "a"}]}
USAGE = {"id": "x", "object": "text_completion", "model": "m", "choices": [],
         "usage": {"prompt_tokens": 7, "completion_tokens": 2}}  # fmt: skip


async def serve_handler(handler: Any) -> tuple[web.AppRunner, int]:
    """``handler`` on ``POST /v1/completions`` at 127.0.0.1; the caller cleans the runner up."""
    app = web.Application()
    app.router.add_post("/v1/completions", handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


async def cut_after_usage(request: web.Request) -> web.StreamResponse:
    """A stream of one token event and the usage event, then the connection cut (no ``[DONE]``, no
    chunked terminator)."""
    await request.read()
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    await resp.write(b"data: " + orjson.dumps(TOKEN) + b"\n\n")
    await resp.write(b"data: " + orjson.dumps(USAGE) + b"\n\n")
    assert request.transport is not None
    request.transport.abort()
    return resp
