"""What the simulated replica's parts share: its config, vLLM's error shape, pending requests, and
``ReplicaState`` (the attributes and request-reading helpers every route group uses)."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from aiohttp import web

from kvgate.sim.engine import Engine, EngineConfig
from kvgate.sim.faults import Faults
from kvgate.sim.kvevents import KVEventPublisher
from kvgate.sim.metrics import ServerCounters
from kvgate.sim.tokenizer import Tok
from kvgate.sim.types import SimRequest

log = logging.getLogger(__name__)

EngineKind = Literal["vllm", "sglang"]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SSE_DONE = b"data: [DONE]\n\n"
MIN_SLEEP_S = 0.0005  # below this a timer costs more than it is worth: deliver now
MAX_LAG_S = 1.0  # further behind than this, re-anchor the step clock instead of bursting to catch up


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


class Pending:
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


def json_response(data: object, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json")


class ReplicaState:
    """The state ``server.Replica`` owns, as its route groups (``routes_openai``, ``routes_probes``,
    ``routes_admin``) see it, plus the OpenAI body readers the OpenAI and probe routes share."""

    cfg: ReplicaConfig
    index: int
    tok: Tok
    engine_config: EngineConfig
    engine: Engine
    max_model_len: int
    faults: Faults
    counters: ServerCounters
    loras: dict[str, str]
    kv: KVEventPublisher | None
    port: int
    running: bool
    created: int
    _pending: dict[str, Pending]
    _ids: itertools.count[int]
    _id_prefix: str
    _wake: asyncio.Event
    _driver: asyncio.Task[None] | None
    _bg: list[asyncio.Task[None]]
    _closing: bool

    def sim_now(self) -> float:
        raise NotImplementedError

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

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
        if type(mt) is float and mt.is_integer() and abs(mt) < float(1 << 63):  # (pydantic's lax int)
            mt = int(mt)  # ``512.0``, ``1e2``: vLLM's lax pydantic ``int`` takes them
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
