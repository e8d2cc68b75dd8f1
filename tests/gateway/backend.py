"""A small OpenAI-compatible model server for gateway tests, with switchable failure modes.

Real HTTP on 127.0.0.1 (ephemeral port). It records what it received (bounded) so tests can check
what the gateway forwarded, and can misbehave on demand: answer 500, drop the connection before
answering, cut a stream half-way, or stream slowly.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any

import orjson
from aiohttp import web

from kvgate.bench import ports

# vLLM's other JSON POST APIs that name a model (its entrypoints' routers), as the backend serves them.
OTHER_PATHS = (
    "/v1/responses",
    "/v1/messages",
    "/v1/rerank",
    "/v2/rerank",
    "/rerank",
    "/v1/score",
    "/score",
    "/v2/embed",
    "/pooling",
    "/classify",
    "/tokenize",
    "/detokenize",
)


class Backend:
    def __init__(self, name: str, *, tokens: int = 4, chunk_delay: float = 0.0, piece_bytes: int = 0) -> None:
        self.name = name
        self.tokens = tokens
        self.chunk_delay = chunk_delay
        self.piece_bytes = piece_bytes  # padding per streamed token (large streams)
        self.disconnects = 0  # streams whose client (the gateway) went away mid-way
        # ok | error500 | error400 | error429 | sse_error400 | drop | cut | hang | head_hang (an
        # event-stream head at once, then nothing: vLLM before prefill ends) | unframed (a stream
        # event that never ends)
        self.mode = "ok"
        self.received: collections.deque[tuple[str, dict[str, str], dict[str, Any]]] = collections.deque(
            maxlen=2000
        )
        self.health_ok = True
        # A prompt containing it is answered 500 (a request that fails on every server: an engine error
        # on some input); counted in ``poisoned``.
        self.poison: str | None = None
        self.poisoned = 0
        # Seconds a non-streamed answer takes (a long generation: nothing is sent until it is done).
        self.answer_delay = 0.0
        # When set to an Event, a non-streamed answer also waits for it (the test releases what it admitted).
        self.answer_gate: asyncio.Event | None = None
        self.error_headers: dict[str, str] = {}  # sent with the "error429" answer
        self.cached_tokens: int | None = None  # reported as usage.prompt_tokens_details when set
        # Set when any generation/embedding request arrives (tests wait on it instead of polling).
        self.arrived = asyncio.Event()
        # A stream waits after its event ``pause_after`` (``paused`` set) until the test sets ``resume``.
        self.pause_after: int | None = None
        self.paused, self.resume = asyncio.Event(), asyncio.Event()
        # When set to an Event, a stream waits after its ``[DONE]`` (``done_sent`` set) until it is set.
        self.after_done: asyncio.Event | None = None
        self.done_sent = asyncio.Event()
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/completions", self._generate)
        app.router.add_post("/v1/chat/completions", self._generate)
        app.router.add_post("/v1/embeddings", self._embeddings)
        for path in OTHER_PATHS:  # vLLM's other model-carrying APIs: echoed (path, model), SSE if asked
            app.router.add_post(path, self._other)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        return app

    async def start(self, port: int = 0, ssl_context: Any = None) -> Backend:
        self._runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port, reuse_address=True, ssl_context=ssl_context)
        await site.start()
        server = site._server
        self.port = getattr(server, "sockets")[0].getsockname()[1]  # noqa: B009
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if self.health_ok else 503, text="ok")

    async def _metrics(self, request: web.Request) -> web.Response:
        text = (
            "# TYPE vllm:num_requests_waiting gauge\n"
            'vllm:num_requests_waiting{model_name="m"} 0\n'
            "# TYPE vllm:num_requests_running gauge\n"
            'vllm:num_requests_running{model_name="m"} 0\n'
            "# TYPE vllm:kv_cache_usage_perc gauge\n"
            'vllm:kv_cache_usage_perc{model_name="m"} 0.1\n'
        )
        return web.Response(text=text)

    async def _misbehave(self, request: web.Request) -> web.StreamResponse | None:
        if self.mode == "sse_error400":  # an error status with an event-stream body (one error event)
            resp = web.StreamResponse(status=400, headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            await resp.write(b'data: {"error": {"message": "bad request", "type": "BadRequestError"}}\n\n')
            await resp.write_eof()
            return resp
        if self.mode == "error500":
            return web.Response(status=500, text=f"{self.name} broken")
        if self.mode == "error400":
            return web.json_response({"error": {"message": "prompt too long", "type": "BadRequestError"}},
                                     status=400)  # fmt: skip
        if self.mode == "error429":
            return web.Response(status=429, text=f"{self.name} at capacity", headers=self.error_headers)
        if self.mode == "drop":
            assert request.transport is not None
            request.transport.abort()
            raise asyncio.CancelledError
        if self.mode == "hang":
            await asyncio.sleep(3600)
        if self.mode == "head_hang":
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            await asyncio.sleep(3600)
        return None

    async def _other(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        self.received.append((request.path, {k.lower(): v for k, v in request.headers.items()}, body))
        self.arrived.set()
        out = {
            "backend": self.name,
            "path": request.path,
            "model": body.get("model"),
            "usage": {"total_tokens": 3},
        }
        if not body.get("stream"):
            return web.Response(body=orjson.dumps(out), content_type="application/json")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for kind in ("response.created", "response.completed"):
            await resp.write(
                b"event: %s\ndata: %s\n\n" % (kind.encode(), orjson.dumps({**out, "type": kind}))
            )
        await resp.write_eof()
        return resp

    async def _embeddings(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        self.received.append((request.path, {k.lower(): v for k, v in request.headers.items()}, body))
        self.arrived.set()
        bad = await self._misbehave(request)
        if bad is not None:
            return bad
        out = {
            "object": "list",
            "model": body["model"],
            "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}],
            "usage": {"prompt_tokens": 3, "total_tokens": 3},
        }
        return web.Response(body=orjson.dumps(out), content_type="application/json")

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        self.received.append((request.path, {k.lower(): v for k, v in request.headers.items()}, body))
        self.arrived.set()
        if self.poison is not None and self.poison in str(body.get("prompt")):
            self.poisoned += 1
            return web.json_response({"error": {"message": "engine error", "type": "InternalServerError"}},
                                     status=500)  # fmt: skip
        bad = await self._misbehave(request)
        if bad is not None:
            return bad
        chat = request.path.endswith("chat/completions")
        model = body["model"]
        n = min(int(body.get("max_tokens") or self.tokens), self.tokens)
        usage: dict[str, Any] = {"prompt_tokens": 7, "completion_tokens": n, "total_tokens": 7 + n}
        if self.cached_tokens is not None:
            usage["prompt_tokens_details"] = {"cached_tokens": self.cached_tokens}
        rid = f"cmpl-{self.name}"
        if not body.get("stream"):
            if self.answer_delay:
                await asyncio.sleep(self.answer_delay)
            if self.answer_gate is not None:
                await self.answer_gate.wait()
            text = " ".join(f"{self.name}-{i}" + "x" * self.piece_bytes for i in range(n))
            choice: dict[str, Any] = (
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}
                if chat
                else {"index": 0, "text": text, "finish_reason": "length", "logprobs": None}
            )
            out = {
                "id": rid,
                "object": "chat.completion" if chat else "text_completion",
                "created": int(time.time()),
                "model": model,
                "choices": [choice],
                "usage": usage,
            }
            return web.Response(body=orjson.dumps(out), content_type="application/json")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        obj = "chat.completion.chunk" if chat else "text_completion"
        if self.mode == "unframed":
            await resp.write(b"data: " + b"x" * (2 << 20))
            await asyncio.sleep(3600)
        for i in range(n):
            if self.mode == "cut" and i == 2:
                assert request.transport is not None
                request.transport.abort()
                return resp
            piece = f"{self.name}-{i} " + "x" * self.piece_bytes
            ch: dict[str, Any] = (
                {"index": 0, "delta": {"content": piece}, "finish_reason": None}
                if chat
                else {"index": 0, "text": piece, "finish_reason": None}
            )
            chunk = {"id": rid, "object": obj, "created": 0, "model": model, "choices": [ch]}
            try:
                await resp.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
            except ConnectionError:
                self.disconnects += 1
                raise
            if self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)
            if i == self.pause_after:
                self.paused.set()
                await self.resume.wait()
        if (body.get("stream_options") or {}).get("include_usage"):
            last = {"id": rid, "object": obj, "created": 0, "model": model, "choices": [], "usage": usage}
            await resp.write(b"data: " + orjson.dumps(last) + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        if self.after_done is not None:  # (a busy server's separate write of its chunked end: qa35b F1)
            self.done_sent.set()
            await self.after_done.wait()
        await resp.write_eof()
        return resp


def _spare_ports() -> list[int]:
    """Ports outside the kernel's ephemeral range (``kvgate.bench.ports.spare_ports``)."""
    return ports.spare_ports()


def free_port() -> int:
    """A port nobody listens on now, for a server a test starts (or a dead replica: connect is refused).

    Picked at random outside the kernel's ephemeral range, not by binding port 0 (session-25 CI #2; the
    why: ``kvgate.bench.ports``), never twice in a process; with no ports outside that range it binds port
    0 and warns."""
    return ports.free_port()
