"""The simulator's HTTP front: one simulated vLLM (or SGLang) replica served with aiohttp.

A :class:`Replica` owns an :class:`~kvgate.sim.engine.Engine`, an aiohttp app on its own port, and one
driver task that steps the engine in real time: step at the previous step's deadline, sleep
``duration * slow_factor / time_scale``, then hand each emitted token to its request's :class:`_Pending`
(a token list plus one waiter future: no task or queue per token). Steps are chained on deadlines, so when
the process cannot keep up the lag behind the wall clock grows and shows in ``kvgate_sim_step_lag_seconds``
and ``kvgate_sim_steps_late_total``.

Endpoints (see docs/simulator-http.md): OpenAI ``/v1/completions``, ``/v1/chat/completions`` (SSE and
JSON), ``/v1/models``, LoRA load/unload, ``/health``, ``/metrics``, the probes the peer routers use
(``/server_info``, ``/model_info``, ``/get_server_info``, ``/get_model_info``, ``/get_load``, ``/tokenize``,
``/detokenize``, ``/v1/completions/render``, ``/v1/chat/completions/render``, ``/kv_event_sources``) and
admin endpoints under ``/sim/`` (faults, stop/start, state). Errors use vLLM's JSON error shape.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from aiohttp import web

from kvgate import __version__
from kvgate.sim.engine import Engine, EngineConfig
from kvgate.sim.faults import FaultError, Faults
from kvgate.sim.kvcache import AllBlocksCleared
from kvgate.sim.kvevents import KVEventPublisher
from kvgate.sim.metrics import ServerCounters, render_sglang, render_vllm
from kvgate.sim.tokenizer import Tok, get_tokenizer
from kvgate.sim.types import SimRequest, StepResult

log = logging.getLogger(__name__)

EngineKind = Literal["vllm", "sglang"]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_SSE_DONE = b"data: [DONE]\n\n"
_MIN_SLEEP_S = 0.0005  # below this a timer costs more than it is worth: deliver now
_MAX_LAG_S = 1.0  # further behind than this, re-anchor the step clock instead of bursting to catch up


@dataclass(slots=True)
class ReplicaConfig:
    model: str = "sim-model"
    engine: EngineKind = "vllm"
    profile: str = "llama3-8b-h100"
    time_scale: float = 1.0  # > 1 runs faster than real time
    max_num_seqs: int = 0  # 0: the profile's default
    max_num_batched_tokens: int = 0
    num_gpu_blocks: int = 0
    block_size: int = 0
    max_model_len: int = 0
    max_loras: int = 1
    lora_adapters: tuple[str, ...] = ()  # loaded at start (lora_path = "/sim/loras/<name>")
    host: str = "127.0.0.1"
    port: int = 0  # 0: ephemeral (the bound port is in Replica.port)
    kv_events_port: int | None = None  # None: no KV events; 0: ephemeral PUB and replay ports
    kv_replay_port: int | None = 0  # with kv_events_port set: 0 ephemeral, None no replay socket
    kv_topic: str = "kv"
    default_max_tokens: int = 16  # /v1/completions without max_tokens (OpenAI's default)
    default_chat_max_tokens: int = 256  # chat without max_tokens (vLLM: up to max_model_len; bounded here)
    stream_interval: int = 1  # vLLM's --stream-interval: stream tokens in groups of this many
    late_slack_s: float = 0.005  # a step delivered later than this past its deadline counts as late
    seed: int = 0


class ApiError(Exception):
    """An error answered in vLLM's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    TYPES = {
        400: "BadRequestError",
        404: "NotFoundError",
        405: "MethodNotAllowed",
        500: "InternalServerError",
        503: "ServiceUnavailableError",
    }

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param

    def response(self) -> web.Response:
        err = {
            "message": self.message,
            "type": self.TYPES.get(self.status, "Error"),
            "param": self.param,
            "code": self.status,
        }
        return web.Response(
            status=self.status, body=orjson.dumps({"error": err}), content_type="application/json"
        )


class _Pending:
    """One in-flight request: tokens the driver delivered and not yet written, and one waiter."""

    __slots__ = ("batch", "crashed", "done", "n_out", "req", "t_arrival", "t_last", "tokens", "waiter")

    def __init__(self, req: SimRequest, t_arrival: float, batch: int) -> None:
        self.req = req
        self.batch = batch  # wake the handler once this many tokens wait (or when done)
        self.tokens: list[int] = []
        self.done = False
        self.crashed = False
        self.n_out = 0  # tokens delivered so far
        self.waiter: asyncio.Future[None] | None = None
        self.t_arrival = t_arrival
        self.t_last = t_arrival

    def wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def wait(self) -> None:
        if self.tokens or self.done or self.crashed:
            return
        self.waiter = asyncio.get_running_loop().create_future()
        await self.waiter
        self.waiter = None

    def take(self) -> list[int]:
        out, self.tokens = self.tokens, []
        return out


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json")


class Replica:
    """One simulated model server. ``await start()`` / ``await stop()`` (a crash: connections refused,
    in-flight requests cut, engine state lost) may be repeated; ``await close()`` at the end."""

    def __init__(self, config: ReplicaConfig | None = None, index: int = 0) -> None:
        self.cfg = cfg = config or ReplicaConfig()
        self.index = index
        self.tok: Tok = get_tokenizer()
        self.engine_config = EngineConfig(
            profile=cfg.profile,
            max_num_seqs=cfg.max_num_seqs,
            max_num_batched_tokens=cfg.max_num_batched_tokens,
            num_gpu_blocks=cfg.num_gpu_blocks,
            block_size=cfg.block_size,
            max_model_len=cfg.max_model_len,
            max_loras=cfg.max_loras,
        )
        self.max_model_len = self.engine_config.max_model_len
        self.faults = Faults(seed=cfg.seed + index)
        self.counters = ServerCounters()
        self.loras: dict[str, str] = {name: f"/sim/loras/{name}" for name in cfg.lora_adapters}
        self.kv: KVEventPublisher | None = None
        if cfg.kv_events_port is not None:
            self.kv = KVEventPublisher(cfg.host, cfg.kv_events_port, cfg.kv_replay_port, cfg.kv_topic)
        self.engine = self._new_engine()
        self._pending: dict[str, _Pending] = {}
        self._ids = itertools.count()
        self._id_prefix = f"{index}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._wake = asyncio.Event()
        self._driver: asyncio.Task[None] | None = None
        self._origin = 0.0  # perf_counter at sim time 0 (finer than uvloop's millisecond loop clock)
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self.port = cfg.port
        self.running = False
        self._bg: list[asyncio.Task[None]] = []
        self.created = int(time.time())

    # ---------------------------------------------------------------------------------------------------
    # Lifecycle

    def _new_engine(self) -> Engine:
        sink = self.kv.publish if self.kv is not None else None
        return Engine(self.engine_config, kv_event_sink=sink)

    @property
    def url(self) -> str:
        return f"http://{self.cfg.host}:{self.port}"

    async def start(self) -> None:
        if self.running:
            return
        loop = asyncio.get_running_loop()
        if self._runner is None:
            self._runner = web.AppRunner(
                self.build_app(), handler_cancellation=True, access_log=None, shutdown_timeout=1.0
            )
            await self._runner.setup()
            self._origin = time.perf_counter()
            if self.kv is not None:
                self.kv.start()
        site = web.TCPSite(self._runner, self.cfg.host, self.port, reuse_address=True)
        await site.start()
        self._site = site
        server = site._server
        if self.port == 0 and server is not None:
            sockets = getattr(server, "sockets", None) or []
            self.port = sockets[0].getsockname()[1]
        self._driver = loop.create_task(self._drive(), name=f"sim-driver-{self.index}")
        self._driver.add_done_callback(self._driver_done)
        self.running = True

    def _driver_done(self, task: asyncio.Task[None]) -> None:
        # A driver that dies (an engine bug) must not leave requests waiting forever: fail them loudly.
        if task.cancelled() or task.exception() is None:
            return
        log.error("replica %d: engine driver failed", self.index, exc_info=task.exception())
        for p in self._pending.values():
            p.crashed = True
            p.wake()

    async def stop(self) -> None:
        """Crash: stop listening, cut every in-flight request, lose the engine's state."""
        if not self.running:
            return
        self.running = False
        if self._site is not None:
            await self._site.stop()
            self._site = None
        if self._driver is not None:
            self._driver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._driver
            self._driver = None
        for p in self._pending.values():
            p.crashed = True
            p.wake()
        # Open connections die with the process: reset them (keep-alive ones included).
        server = self._runner.server if self._runner is not None else None
        for transport in list(getattr(server, "_connections", {}).values()):
            transport.abort()
        self.engine = self._new_engine()
        if self.kv is not None:
            self.kv.publish([AllBlocksCleared()])  # a restarted engine starts with an empty cache

    async def close(self) -> None:
        for t in self._bg:
            t.cancel()
        await self.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.kv is not None:
            await self.kv.close()
            self.kv = None

    def sim_now(self) -> float:
        """Simulated seconds since start (wall time x time_scale)."""
        return (time.perf_counter() - self._origin) * self.cfg.time_scale

    # ---------------------------------------------------------------------------------------------------
    # The real-time driver

    async def _drive(self) -> None:
        c = self.counters
        scale = self.cfg.time_scale
        slack = self.cfg.late_slack_s
        clock = time.perf_counter
        deadline = clock()
        while True:
            engine = self.engine
            if not engine.has_work():
                self._wake.clear()
                await self._wake.wait()
                deadline = clock()  # idle: the next step starts now
            start = deadline
            result = engine.step((start - self._origin) * scale)
            wall = result.duration * self.faults.slow_factor / scale
            deadline = start + wall
            c.step_time_s += wall
            delay = deadline - clock()
            if delay > _MIN_SLEEP_S:
                await asyncio.sleep(delay)
            else:
                await asyncio.sleep(0)  # let the HTTP side run even when steps are free
            lag = clock() - deadline
            c.steps += 1
            c.step_lag_s = lag if lag > 0 else 0.0
            c.step_lag_sum_s += c.step_lag_s
            if lag > slack:
                c.steps_late += 1
                if lag > c.step_lag_max_s:
                    c.step_lag_max_s = lag
                if lag > _MAX_LAG_S:
                    deadline = clock()
            self._deliver(result, (deadline - self._origin) * scale)

    def _deliver(self, result: StepResult, t: float) -> None:
        """Hand a finished step's tokens to their requests (``t``: the step's end in sim seconds)."""
        pending = self._pending
        c = self.counters
        touched: list[_Pending] = []
        for req in result.started:
            p = pending.get(req.request_id)
            if p is not None and req.first_scheduled_time is not None:
                c.queue.observe(max(0.0, req.first_scheduled_time - p.t_arrival))
        for req, tok in result.tokens:
            p = pending.get(req.request_id)
            if p is None:
                continue
            if p.n_out == 0:
                c.ttft.observe(max(0.0, t - p.t_arrival))
            else:
                c.itl.observe(max(0.0, t - p.t_last))
            p.t_last = t
            p.n_out += 1
            p.tokens.append(tok)
            if len(p.tokens) >= p.batch:
                touched.append(p)
        for req in result.finished:
            p = pending.get(req.request_id)
            reason = req.finish_reason or "length"
            c.finished[reason] = c.finished.get(reason, 0) + 1
            if p is None:
                continue
            c.e2e.observe(max(0.0, t - p.t_arrival))
            p.done = True
            touched.append(p)
        for p in touched:
            p.wake()

    # ---------------------------------------------------------------------------------------------------
    # The app

    def build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors], client_max_size=64 * 1024 * 1024)
        r = app.router
        r.add_post("/v1/completions", self._completions)
        r.add_post("/v1/chat/completions", self._chat)
        r.add_get("/v1/models", self._models)
        r.add_post("/v1/load_lora_adapter", self._load_lora)
        r.add_post("/v1/unload_lora_adapter", self._unload_lora)
        r.add_get("/health", self._health)
        r.add_get("/metrics", self._metrics)
        for path in ("/server_info", "/get_server_info"):
            r.add_get(path, self._server_info)
        for path in ("/model_info", "/get_model_info"):
            r.add_get(path, self._model_info)
        r.add_get("/get_load", self._get_load)
        r.add_post("/tokenize", self._tokenize)
        r.add_post("/detokenize", self._detokenize)
        r.add_post("/v1/completions/render", self._render_completions)
        r.add_post("/v1/chat/completions/render", self._render_chat)
        r.add_get("/kv_event_sources", self._kv_event_sources)
        r.add_get("/version", self._version)
        r.add_post("/reset_prefix_cache", self._reset_prefix_cache)
        r.add_post("/sim/faults", self._set_faults)
        r.add_get("/sim/faults", self._get_faults)
        r.add_post("/sim/stop", self._admin_stop)
        r.add_post("/sim/start", self._admin_start)
        r.add_get("/sim/state", self._state)
        return app

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as e:
            return e.response()
        except web.HTTPException as e:
            if e.status < 400:
                raise
            msg = "Method Not Allowed" if e.status == 405 else e.reason
            return ApiError(e.status, msg).response()

    # ----- generation -----

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    async def _body(self, request: web.Request) -> dict[str, Any]:
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise ApiError(400, f"Invalid JSON body: {e}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "The request body must be a JSON object")
        return body

    def _resolve_model(self, body: dict[str, Any], required: bool = True) -> str | None:
        """The LoRA adapter the request names (None = base model); 404 for a missing or unknown model."""
        model = body.get("model")
        if model is None and not required:
            return None
        if model == self.cfg.model:
            return None
        if isinstance(model, str) and model in self.loras:
            return model
        if model is None:
            raise ApiError(404, "The model `None` does not exist.", "model")
        raise ApiError(404, f"The model `{model}` does not exist.", "model")

    def _prompt_ids(self, body: dict[str, Any], chat: bool) -> list[int]:
        if chat:
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise ApiError(400, "'messages' must be a non-empty list", "messages")
            if not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages):
                raise ApiError(400, "each message must be an object with a 'role'", "messages")
            ids = self.tok.encode(self.tok.apply_chat_template(messages))
        else:
            prompt = body.get("prompt")
            if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
                prompt = prompt[0]  # a batch of one
            if isinstance(prompt, str):
                ids = self.tok.encode(prompt)
            elif isinstance(prompt, list) and all(
                isinstance(t, int) and not isinstance(t, bool) for t in prompt
            ):
                ids = list(prompt)
            elif prompt is None:
                raise ApiError(400, "'prompt' is required", "prompt")
            else:
                raise ApiError(
                    400, "'prompt' must be a string, a list of token ids, or a batch of one", "prompt"
                )
        if not ids:
            raise ApiError(400, "The prompt is empty", "prompt")
        return ids

    def _max_tokens(self, body: dict[str, Any], chat: bool, n_prompt: int) -> int:
        mt = body.get("max_completion_tokens") if chat else None
        if mt is None:
            mt = body.get("max_tokens")
        limit = self.max_model_len
        if n_prompt >= limit:
            raise ApiError(
                400,
                f"This model's maximum context length is {limit} tokens. However, your request has "
                f"{n_prompt} input tokens. Please reduce the length of the input messages.",
                "messages" if chat else "prompt",
            )
        if mt is None:
            return min(
                self.cfg.default_chat_max_tokens if chat else self.cfg.default_max_tokens, limit - n_prompt
            )
        if not isinstance(mt, int) or isinstance(mt, bool) or mt < 1:
            raise ApiError(400, "max_tokens must be an integer >= 1", "max_tokens")
        if n_prompt + mt > limit:
            raise ApiError(
                400,
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{n_prompt + mt} tokens ({n_prompt} in the messages, {mt} in the completion). "
                "Please reduce the length of the messages or completion.",
                "max_tokens",
            )
        return mt

    async def _generate(self, request: web.Request, chat: bool) -> web.StreamResponse:
        body = await self._body(request)
        lora = self._resolve_model(body)
        model_name = lora or self.cfg.model
        n = body.get("n", 1)
        if n != 1:
            raise ApiError(400, "the simulator supports n=1 only", "n")
        ids = self._prompt_ids(body, chat)
        max_tokens = self._max_tokens(body, chat, len(ids))
        stream = bool(body.get("stream"))
        opts = body.get("stream_options")
        include_usage = stream and isinstance(opts, dict) and bool(opts.get("include_usage"))
        if not self.running or self._driver is None or self._driver.done():
            raise ApiError(503, "The replica's engine is not running")
        if self.faults.should_fail():
            self.counters.errors_injected += 1
            raise ApiError(self.faults.error_status, "Injected failure (simulator fault)")

        rid = f"{'chatcmpl' if chat else 'cmpl'}-{self._id_prefix}-{next(self._ids)}"
        now = self.sim_now()
        req = SimRequest(
            request_id=rid, prompt_token_ids=ids, max_tokens=max_tokens, lora=lora, arrival_time=now
        )
        # Streams wake every ``stream_interval`` tokens; a JSON response only when it is done.
        p = _Pending(req, now, self.cfg.stream_interval if stream else 1 << 30)
        try:
            self.engine.add_request(req, now)
        except ValueError as e:
            raise ApiError(400, str(e)) from None
        self._pending[rid] = p
        self._wake.set()
        try:
            if stream:
                return await self._stream(request, p, chat, model_name, include_usage)
            return await self._unary(request, p, chat, model_name)
        except ConnectionResetError:  # the client went away while we were writing
            return self._cut(request)
        finally:
            self._pending.pop(rid, None)
            if not p.done and not p.crashed:
                self.engine.abort(rid)  # client went away (or the stream was cut): free its KV blocks

    def _usage(self, req: SimRequest) -> dict[str, Any]:
        n_in, n_out = req.num_prompt_tokens, len(req.output_token_ids)
        return {
            "prompt_tokens": n_in,
            "completion_tokens": n_out,
            "total_tokens": n_in + n_out,
            "prompt_tokens_details": {"cached_tokens": req.num_cached_tokens},
        }

    def _text(self, toks: list[int]) -> list[str]:
        texts, n = self.tok.output_texts, len(self.tok.output_texts)
        return [texts[t % n] for t in toks]

    async def _unary(self, request: web.Request, p: _Pending, chat: bool, model: str) -> web.StreamResponse:
        cut = self.faults.cut_rate > 0 and self.faults.should_cut()
        while not p.done:
            await p.wait()
            if p.crashed:
                return self._cut(request)
            p.tokens.clear()  # the text is built from the request's output ids at the end
            if cut and p.n_out >= self.faults.cut_after_tokens:
                return self._cut(request)
        req = p.req
        text = "".join(self._text(req.output_token_ids))
        reason = req.finish_reason or "length"
        created = int(time.time())
        if chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": text,
                    "tool_calls": [],
                    "reasoning_content": None,
                },
                "logprobs": None,
                "finish_reason": reason,
                "stop_reason": None,
            }
            obj = "chat.completion"
        else:
            choice = {
                "index": 0,
                "text": text,
                "logprobs": None,
                "finish_reason": reason,
                "stop_reason": None,
                "prompt_logprobs": None,
            }
            obj = "text_completion"
        out = {
            "id": req.request_id,
            "object": obj,
            "created": created,
            "model": model,
            "choices": [choice],
            "usage": self._usage(req),
        }
        return _json(out)

    def _cut(self, request: web.Request) -> web.StreamResponse:
        """Drop the connection without a response (a crashed replica or an injected mid-stream cut)."""
        if request.transport is not None:
            request.transport.abort()
        raise asyncio.CancelledError  # nothing more to write; aiohttp closes the handler quietly

    async def _stream(
        self, request: web.Request, p: _Pending, chat: bool, model: str, include_usage: bool
    ) -> web.StreamResponse:
        req = p.req
        created = int(time.time())
        obj = "chat.completion.chunk" if chat else "text_completion"
        head = orjson.dumps({"id": req.request_id, "object": obj, "created": created, "model": model})[:-1]
        # Each chunk is head + choices + "}": the id/model part is serialised once per request.
        if chat:
            pre, post, post_fin = (
                b',"choices":[{"index":0,"delta":{"content":',
                b'},"logprobs":null,"finish_reason":null}]}',
                b'},"logprobs":null,"finish_reason":"%s"}]}',
            )
        else:
            pre, post, post_fin = (
                b',"choices":[{"index":0,"text":',
                b',"logprobs":null,"finish_reason":null}]}',
                b',"logprobs":null,"finish_reason":"%s"}]}',
            )
        post, post_fin = post + b"\n\n", post_fin + b"\n\n"
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        if chat:
            first = (
                head + b',"choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,'
                b'"finish_reason":null}]}'
            )
            await resp.write(b"data: " + first + b"\n\n")
        faults = self.faults
        cut_at = faults.cut_after_tokens if faults.cut_rate and faults.should_cut() else -1
        sent = 0
        while True:
            await p.wait()
            if p.crashed:
                return self._cut(request)
            toks = p.take()
            if toks:
                words, n = self.tok.output_json, len(self.tok.output_json)
                lead = b"data: " + head + pre
                parts = [lead + words[t % n] + post for t in toks]
                if p.done and not p.tokens:  # the last token's chunk carries the finish reason
                    fin = post_fin % (req.finish_reason or "length").encode()
                    parts[-1] = lead + words[toks[-1] % n] + fin
                sent += len(toks)
                await resp.write(b"".join(parts))
                if 0 <= cut_at <= sent:
                    return self._cut(request)
            if p.done and not p.tokens:
                break
        tail_b = b""
        if include_usage:
            usage = orjson.dumps(self._usage(req))
            tail_b = b"data: " + head + b',"choices":[],"usage":' + usage + b"}\n\n"
        await resp.write(tail_b + _SSE_DONE)
        await resp.write_eof()
        return resp

    # ----- models and adapters -----

    async def _models(self, request: web.Request) -> web.StreamResponse:
        base = {
            "id": self.cfg.model,
            "object": "model",
            "created": self.created,
            "owned_by": "vllm",
            "root": str(self.tok.path),
            "parent": None,
            "max_model_len": self.max_model_len,
        }
        data = [base] + [
            {
                "id": n,
                "object": "model",
                "created": self.created,
                "owned_by": "vllm",
                "root": path,
                "parent": self.cfg.model,
                "max_model_len": self.max_model_len,
            }
            for n, path in self.loras.items()
        ]
        return _json({"object": "list", "data": data})

    async def _load_lora(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        name, path = body.get("lora_name"), body.get("lora_path")
        if not isinstance(name, str) or not name or not isinstance(path, str) or not path:
            raise ApiError(400, "Both 'lora_name' and 'lora_path' must be provided.")
        if name in self.loras or name == self.cfg.model:
            raise ApiError(400, f"The lora adapter '{name}' has already been loaded.", "lora_name")
        self.loras[name] = path
        return web.Response(text=f"Success: LoRA adapter '{name}' added successfully.")

    async def _unload_lora(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        name = body.get("lora_name")
        if not isinstance(name, str) or name not in self.loras:
            raise ApiError(404, f"The lora adapter '{name}' cannot be found.", "lora_name")
        del self.loras[name]
        return web.Response(text=f"Success: LoRA adapter '{name}' removed successfully.")

    # ----- health, metrics, probes -----

    async def _health(self, request: web.Request) -> web.StreamResponse:
        return web.Response(status=200)

    async def _reset_prefix_cache(self, request: web.Request) -> web.StreamResponse:
        """vLLM's dev endpoint: drop the prefix cache (benchmarks reuse a fleet between runs with it)."""
        if not self.engine.reset_prefix_cache():
            raise ApiError(409, "Prefix cache not reset: requests are still holding KV blocks")
        return web.Response(status=200)

    async def _version(self, request: web.Request) -> web.StreamResponse:
        return _json({"version": f"kvgate-sim-{__version__}"})

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        stats = self.engine.stats()
        if self.cfg.engine == "sglang":
            text = render_sglang(stats, self.counters, self.cfg.model)
        else:
            text = render_vllm(stats, self.counters, self.cfg.model)
        return web.Response(
            text=text,
            content_type="text/plain",
            charset="utf-8",
            headers={"X-Content-Type-Options": "nosniff"},
        )

    def _capacity(self) -> dict[str, Any]:
        ec = self.engine_config
        return {
            "max_total_num_tokens": ec.num_gpu_blocks * ec.block_size,
            "max_running_requests": ec.max_num_seqs,
            "max_num_seqs": ec.max_num_seqs,
            "max_num_batched_tokens": ec.max_num_batched_tokens,
            "chunked_prefill_size": ec.max_num_batched_tokens,
            "max_prefill_tokens": ec.max_num_batched_tokens,
            "page_size": ec.block_size,
            "block_size": ec.block_size,
            "num_gpu_blocks": ec.num_gpu_blocks,
            "context_length": self.max_model_len,
            "max_model_len": self.max_model_len,
            "max_loras_per_batch": ec.max_loras,
            "max_loras": ec.max_loras,
        }

    async def _server_info(self, request: web.Request) -> web.StreamResponse:
        # SGLang's /get_server_info is its ServerArgs plus scheduler info; keep the fields routers read.
        stats = self.engine.stats()
        tokdir = str(self.tok.path)
        info: dict[str, Any] = {
            "model_path": tokdir,
            "tokenizer_path": tokdir,
            "served_model_name": self.cfg.model,
            "model_id": self.cfg.model,
            "host": self.cfg.host,
            "port": self.port,
            "tp_size": 1,
            "dp_size": 1,
            "pp_size": 1,
            "load_balance_method": "round_robin",
            "disaggregation_mode": "null",
            "enable_lora": bool(self.loras) or self.engine_config.max_loras > 1,
            "lora_paths": dict(self.loras),
            "engine": self.cfg.engine,
            "profile": self.cfg.profile,
            "time_scale": self.cfg.time_scale,
            "version": f"kvgate-sim-{__version__}",
            "internal_states": [
                {
                    "num_running_reqs": stats.num_running,
                    "num_queue_reqs": stats.num_waiting,
                    "token_usage": stats.kv_cache_usage,
                    "last_gen_throughput": 0.0,
                }
            ],
        }
        info.update(self._capacity())
        if self.kv is not None:
            info["kv_events_config"] = self.kv.sources()
        return _json(info)

    async def _model_info(self, request: web.Request) -> web.StreamResponse:
        tokdir = str(self.tok.path)
        return _json(
            {
                "model_path": tokdir,
                "tokenizer_path": tokdir,
                "is_generation": True,
                "served_model_name": self.cfg.model,
                "model_type": "llama",
                "architectures": ["LlamaForCausalLM"],
                "preferred_sampling_params": None,
                "weight_version": "default",
                "has_image_understanding": False,
                "has_audio_understanding": False,
                "max_model_len": self.max_model_len,
                "context_length": self.max_model_len,
                "vocab_size": self.tok.vocab_size,
            }
        )

    async def _get_load(self, request: web.Request) -> web.StreamResponse:
        # sglang-router's power_of_two reads "load"; SGLang's own /get_load lists per-DP-rank loads.
        stats = self.engine.stats()
        used = round(stats.kv_cache_usage * stats.num_gpu_blocks * stats.block_size)
        return _json(
            {
                "load": stats.num_running + stats.num_waiting,
                "dp_rank": 0,
                "num_reqs": stats.num_running + stats.num_waiting,
                "num_running_reqs": stats.num_running,
                "num_waiting_reqs": stats.num_waiting,
                "num_tokens": used,
                "ts_tic": time.perf_counter(),
            }
        )

    async def _tokenize(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        self._resolve_model(body, required=False)
        ids = self._prompt_ids(body, chat="messages" in body)
        return _json(
            {"count": len(ids), "max_model_len": self.max_model_len, "tokens": ids, "token_strs": None}
        )

    async def _detokenize(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        self._resolve_model(body, required=False)
        toks = body.get("tokens")
        if not isinstance(toks, list) or not all(
            isinstance(t, int) and 0 <= t < self.tok.vocab_size for t in toks
        ):
            raise ApiError(
                400, f"'tokens' must be a list of token ids in [0, {self.tok.vocab_size})", "tokens"
            )
        return _json({"prompt": self.tok.decode(toks)})

    def _rendered(self, body: dict[str, Any], chat: bool) -> dict[str, Any]:
        # vLLM's render endpoints answer a GenerateRequest: the prompt's token ids plus sampling params.
        lora = self._resolve_model(body, required=False)
        ids = self._prompt_ids(body, chat)
        max_tokens = self._max_tokens(body, chat, len(ids))
        return {
            "request_id": f"{'chatcmpl' if chat else 'cmpl'}-render-{self._id_prefix}-{next(self._ids)}",
            "token_ids": ids,
            "sampling_params": {"max_tokens": max_tokens},
            "model": lora or self.cfg.model,
            "stream": bool(body.get("stream")),
        }

    async def _render_completions(self, request: web.Request) -> web.StreamResponse:
        return _json([self._rendered(await self._body(request), chat=False)])

    async def _render_chat(self, request: web.Request) -> web.StreamResponse:
        return _json(self._rendered(await self._body(request), chat=True))

    async def _kv_event_sources(self, request: web.Request) -> web.StreamResponse:
        if self.kv is None:
            return _json({"enable_kv_cache_events": False, "sources": []})
        src = self.kv.sources()
        src["block_size"] = self.engine_config.block_size
        src["sources"] = [
            {"endpoint": src["endpoint"], "replay_endpoint": src["replay_endpoint"], "dp_rank": 0}
        ]
        return _json(src)

    # ----- admin -----

    async def _set_faults(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        try:
            if body.get("clear"):
                self.faults.clear()
                body = {k: v for k, v in body.items() if k != "clear"}
            self.faults.update(body)
        except FaultError as e:
            raise ApiError(400, str(e)) from None
        return _json(self.faults.as_dict())

    async def _get_faults(self, request: web.Request) -> web.StreamResponse:
        return _json(self.faults.as_dict())

    async def _admin_stop(self, request: web.Request) -> web.StreamResponse:
        """Crash now (after answering); ``{"restart_after_s": X}`` restarts it X seconds later. Otherwise only
        ``Replica.start()`` or the fleet's control port can bring it back, since this port stops listening."""
        body = await self._body(request) if request.can_read_body else {}
        after = body.get("restart_after_s")
        if after is not None and (not isinstance(after, int | float) or isinstance(after, bool) or after < 0):
            raise ApiError(400, "restart_after_s must be a number >= 0", "restart_after_s")
        self._bg.append(asyncio.get_running_loop().create_task(self._crash(after)))
        return _json({"stopping": True, "port": self.port, "restart_after_s": after})

    async def _crash(self, restart_after: float | None) -> None:
        await asyncio.sleep(0.01)  # let the admin response go out first
        await self.stop()
        if restart_after is not None:
            await asyncio.sleep(restart_after)
            await self.start()

    async def _admin_start(self, request: web.Request) -> web.StreamResponse:
        # Reachable only while running (a stopped replica has no listening port): a no-op kept for symmetry.
        return _json({"running": self.running, "port": self.port})

    async def _state(self, request: web.Request) -> web.StreamResponse:
        s = self.engine.stats()
        c = self.counters
        return _json(
            {
                "running": self.running,
                "num_running": s.num_running,
                "num_waiting": s.num_waiting,
                "kv_cache_usage": s.kv_cache_usage,
                "pending": len(self._pending),
                "steps": c.steps,
                "steps_late": c.steps_late,
                "step_lag_s": c.step_lag_s,
                "step_lag_max_s": c.step_lag_max_s,
                "step_lag_sum_s": c.step_lag_sum_s,
                "step_time_s": c.step_time_s,
                "generation_tokens_total": s.generation_tokens_total,
                "faults": self.faults.as_dict(),
            }
        )
