"""The simulated replica's OpenAI routes: completions and chat (SSE and JSON), models, LoRA load/unload."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson
from aiohttp import web

from kvgate.sim.replica_base import SSE_DONE, ApiError, Pending, ReplicaState, json_response
from kvgate.sim.types import SimRequest

log = logging.getLogger(__name__)


class OpenAIRoutes(ReplicaState):
    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

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
        p = self._admit("chatcmpl-" if chat else "cmpl-", ids, max_tokens, lora, stream)
        try:
            if stream:
                return await self._stream(request, p, chat, model_name, include_usage)
            return await self._unary(request, p, chat, model_name)
        except ConnectionResetError:  # the client went away while we were writing
            return self._cut(request)
        finally:
            self._release(p)

    def _admit(self, kind: str, ids: list[int], max_tokens: int, lora: str | None, stream: bool) -> Pending:
        """A generation (``kind``: its id's prefix) into the engine, or the ``ApiError`` vLLM would answer
        (503 engine not running, an injected fault, 400 a request the engine refuses); each admitted one
        is ``_release``d when its handler ends (the completions, chat and Responses routes share both)."""
        if not self.running or self._driver is None or self._driver.done():
            raise ApiError(503, "The replica's engine is not running")
        if self.faults.should_fail():
            self.counters.errors_injected += 1
            raise ApiError(self.faults.error_status, "Injected failure (simulator fault)")
        rid = f"{kind}{self._id_prefix}-{next(self._ids)}"
        now = self.sim_now()
        req = SimRequest(
            request_id=rid, prompt_token_ids=ids, max_tokens=max_tokens, lora=lora, arrival_time=now
        )
        # Streams wake every ``stream_interval`` tokens; a JSON response only when it is done.
        p = Pending(req, now, self.cfg.stream_interval if stream else 1 << 30)
        try:
            self.engine.add_request(req, now)
        except ValueError as e:
            raise ApiError(400, str(e)) from None
        self._pending[rid] = p
        self._wake.set()
        return p

    def _release(self, p: Pending) -> None:
        rid = p.req.request_id
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

    async def _unary(self, request: web.Request, p: Pending, chat: bool, model: str) -> web.StreamResponse:
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
        return json_response(out)

    def _cut(self, request: web.Request) -> web.StreamResponse:
        """Drop the connection without a response (a crashed replica or an injected mid-stream cut)."""
        if request.transport is not None:
            request.transport.abort()
        raise asyncio.CancelledError  # nothing more to write; aiohttp closes the handler quietly

    async def _stream(
        self, request: web.Request, p: Pending, chat: bool, model: str, include_usage: bool
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
        # Chat's opening role chunk goes out with the first token, as vLLM's (written in its first
        # ``async for res in result_generator`` iteration, that is after prefill): a gateway that marks
        # a chat stream's first token at its first byte must see the prefill's wait (review s23-qa F2).
        role = (
            b"data: "
            + head
            + b',"choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,'
            b'"finish_reason":null}]}\n\n'
            if chat
            else b""
        )
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
                if role:
                    parts.insert(0, role)
                    role = b""
                await resp.write(b"".join(parts))
                if 0 <= cut_at <= sent:
                    return self._cut(request)
            if p.done and not p.tokens:
                break
        tail_b = role  # (no token at all: the role chunk still opens the stream)
        if include_usage:
            usage = orjson.dumps(self._usage(req))
            tail_b += b"data: " + head + b',"choices":[],"usage":' + usage + b"}\n\n"
        await resp.write(tail_b + SSE_DONE)
        await resp.write_eof()
        return resp

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
        return json_response({"object": "list", "data": data})

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
