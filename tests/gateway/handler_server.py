"""An aiohttp app, or one handler, served on a loopback port (a bare runner, or a ``RouteServer`` that
answers one route with its ``_answer``: the Responses and flow-control tests' model servers), and the model
server that cuts a stream after its usage event: shared by the door tests that compare what a cut or error
stream's usage counts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Self, TypeVar

import orjson
from aiohttp import web

TOKEN = {"id": "x", "object": "text_completion", "model": "m", "choices": [{"index": 0, "text": "a"}]}
USAGE = {"id": "x", "object": "text_completion", "model": "m", "choices": [],
         "usage": {"prompt_tokens": 7, "completion_tokens": 2}}  # fmt: skip


async def serve_app(
    app: web.Application, host: str = "127.0.0.1", **options: Any
) -> tuple[web.AppRunner, int]:
    """``app`` on a loopback port of ``host`` (``options``: ``web.AppRunner``'s); its runner (the caller
    cleans it up) and port."""
    runner = web.AppRunner(app, **options)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


async def serve_handler(
    handler: Any, path: str = "/v1/completions", shutdown_timeout: float = 0.5, host: str = "127.0.0.1"
) -> tuple[web.AppRunner, int]:
    """``handler`` on ``POST path`` at ``host``; the caller cleans the runner up."""
    app = web.Application()
    app.router.add_post(path, handler)
    return await serve_app(app, host, access_log=None, shutdown_timeout=shutdown_timeout)


class RouteServer:
    """A model server on a loopback port that answers ``POST path`` with ``_answer`` (a subclass's);
    ``start`` returns it, its ``port`` and ``address`` set; ``stop`` cleans it up."""

    path = "/v1/completions"
    shutdown_timeout = 0.5
    host = "127.0.0.1"  # (another loopback IP, 127.0.0.x, for a pod of its own: a subset hint names IPs)

    def __init__(self) -> None:
        self.port = 0
        self.address = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> Self:
        self._runner, self.port = await serve_handler(
            self._answer, self.path, self.shutdown_timeout, self.host
        )
        self.address = f"{self.host}:{self.port}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        """The model server's answer: each subclass's (the base serves nothing)."""
        raise NotImplementedError


S = TypeVar("S", bound=RouteServer)


@asynccontextmanager
async def serving(*servers: S) -> AsyncIterator[list[S]]:
    """``servers`` started (in order), stopped at the end (those that started)."""
    started: list[S] = []
    try:
        for server in servers:
            started.append(await server.start())
        yield started
    finally:
        for server in started:
            await server.stop()


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
