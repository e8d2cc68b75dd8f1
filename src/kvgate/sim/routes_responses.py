"""The simulated replica's Responses API (``POST /v1/responses``), with vLLM's stored conversations.

As vLLM with ``VLLM_ENABLE_RESPONSES_API_STORE=1``: an answer made with ``store`` (its default: true) is
kept in this replica's memory with the conversation that made it (its messages and the output), and a
follow-up naming it (``previous_response_id``) is prefilled as vLLM 0.32 builds it
(``construct_input_messages``): its own ``instructions`` first, then that conversation with every system
message dropped (earlier instructions never carry over), then its ``input``: the engine sees (and its
prefix cache may hold) the whole conversation, while the request's body carries only the new input. A
crash (``Replica.stop``) loses them, as a restarted vLLM does. Anywhere else the id is vLLM's 404
(``Response with id '...' not found.``). Kept: the latest ``STORE_MAX`` answers (vLLM keeps all until
restart; a bound here so a long benchmark does not grow the simulator).

An answer is one JSON ``response`` object, or (``stream``) vLLM 0.32's events: ``response.created``,
``response.in_progress``, ``response.output_item.added``, ``response.content_part.added``,
``response.output_text.delta`` per token (the first marks the first token, as vLLM's), then
``response.output_text.done``, ``response.content_part.done``, ``response.output_item.done`` and
``response.completed`` with its usage (``input_tokens``, ``input_tokens_details.cached_tokens``,
``output_tokens``). ``GET /v1/responses/{id}`` answers a kept answer's ``response`` object (as vLLM's
``retrieve_responses``), else the same 404: the gateway asks this of its endpoints to find where an id whose
home it does not know is kept (``gateway.locate``). Input: a string, or a list of message items
(``role`` + a string or parts with ``text``); other items are refused (400), as the simulator models text
only.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any, NamedTuple

import orjson
from aiohttp import web

from kvgate.sim.replica_base import ApiError, Pending, json_response
from kvgate.sim.routes_openai import OpenAIRoutes
from kvgate.sim.types import SimRequest

STORE_MAX = 4096


def _content(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    raise ApiError(400, "a message's 'content' must be a string or a list of parts", "input")


def _messages(body: dict[str, Any]) -> list[dict[str, str]]:
    """The request's own messages: its ``instructions`` (a system message) and ``input``."""
    out: list[dict[str, str]] = []
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise ApiError(400, "'instructions' must be a string", "instructions")
        if instructions:  # (vLLM's ``if request_instructions``: an empty string adds none)
            out.append({"role": "system", "content": instructions})
    inp = body.get("input")
    if isinstance(inp, str):
        out.append({"role": "user", "content": inp})
    elif isinstance(inp, list):
        for item in inp:
            if not isinstance(item, dict) or not isinstance(item.get("role"), str):
                raise ApiError(400, "the simulator takes message items (with a 'role') only", "input")
            out.append({"role": item["role"], "content": _content(item.get("content"))})
    else:
        raise ApiError(400, "'input' must be a string or a list of input items", "input")
    return out


class Stored(NamedTuple):
    """A kept answer: the conversation that made it (a follow-up's prefill) and its ``response`` object."""

    messages: list[dict[str, str]]
    doc: dict[str, Any]


class ResponsesRoutes(OpenAIRoutes):
    """``POST /v1/responses``, ``GET /v1/responses/{id}`` (the replica's ``_stored`` answers: ``Replica``
    makes it)."""

    _stored: OrderedDict[str, Stored]

    async def _retrieve(self, request: web.Request) -> web.StreamResponse:
        rid = request.match_info["response_id"]
        kept = self._stored.get(rid)
        if kept is None:
            raise ApiError(404, f"Response with id '{rid}' not found.", "response_id")
        return json_response(kept.doc)

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        lora = self._resolve_model(body)
        model = lora or self.cfg.model
        prev = body.get("previous_response_id")
        own = _messages(body)
        messages = own
        if prev is not None:
            kept = self._stored.get(prev) if isinstance(prev, str) else None
            if kept is None:
                raise ApiError(404, f"Response with id '{prev}' not found.", "response_id")
            # vLLM 0.32's ``construct_input_messages``: this request's instructions first, then the stored
            # conversation without any system message ("instructions should NOT carry over"), then the
            # new input.
            n = 1 if body.get("instructions") else 0
            messages = [*own[:n], *(m for m in kept.messages if m["role"] != "system"), *own[n:]]
        ids = self.tok.encode(self.tok.apply_chat_template(messages))
        if not ids:
            raise ApiError(400, "The prompt is empty", "input")
        limit = body.get("max_output_tokens")
        max_tokens = self._max_tokens({"max_tokens": limit}, False, len(ids))
        stream = bool(body.get("stream"))
        p = self._admit("resp_", ids, max_tokens, lora, stream)
        req, rid = p.req, p.req.request_id
        created = int(time.time())
        try:
            if stream:
                resp = await self._response_events(request, p, model, created)
            else:
                while not p.done:
                    await p.wait()
                    if p.crashed:
                        return self._cut(request)
                    p.tokens.clear()
                resp = json_response(self._response_doc(req, model, created))
            if p.crashed:  # (a stream cut by a crash: nothing kept)
                return resp
        except ConnectionResetError:
            return self._cut(request)
        finally:
            self._release(p)
        if body.get("store", True):  # (vLLM's ``if request.store``: ``null`` keeps nothing)
            doc = self._response_doc(req, model, created)
            text = doc["output"][0]["content"][0]["text"]
            self._stored[rid] = Stored([*messages, {"role": "assistant", "content": text}], doc)
            while len(self._stored) > STORE_MAX:
                self._stored.popitem(last=False)
        return resp

    def _response_doc(self, req: SimRequest, model: str, created: int, done: bool = True) -> dict[str, Any]:
        text = "".join(self._text(req.output_token_ids)) if done else ""
        n_in, n_out = req.num_prompt_tokens, len(req.output_token_ids)
        message = {
            "id": f"msg_{req.request_id}",
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}],
        }
        return {
            "id": req.request_id,
            "object": "response",
            "created_at": created,
            "model": model,
            "status": "completed" if done else "in_progress",
            "output": [message] if done else [],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "usage": {
                "input_tokens": n_in,
                "input_tokens_details": {"cached_tokens": req.num_cached_tokens},
                "output_tokens": n_out,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": n_in + n_out,
            }
            if done
            else None,
        }

    async def _response_events(
        self, request: web.Request, p: Pending, model: str, created: int
    ) -> web.StreamResponse:
        req = p.req
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        seq = 0

        def event(kind: str, data: dict[str, Any]) -> bytes:
            nonlocal seq
            seq += 1
            body = orjson.dumps({"type": kind, "sequence_number": seq - 1, **data})
            return b"event: " + kind.encode() + b"\ndata: " + body + b"\n\n"

        item = f"msg_{req.request_id}"
        doc = self._response_doc(req, model, created, False)
        message: dict[str, Any] = {
            "id": item,
            "type": "message",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }
        part: dict[str, Any] = {"type": "output_text", "text": "", "annotations": []}
        at = {"item_id": item, "output_index": 0, "content_index": 0}
        # (vLLM 0.32's order before the first delta: the SDK's ``responses.stream()`` needs the item and
        # its part announced)
        await resp.write(
            event("response.created", {"response": doc})
            + event("response.in_progress", {"response": doc})
            + event("response.output_item.added", {"output_index": 0, "item": message})
            + event("response.content_part.added", {**at, "part": part})
        )
        while True:
            await p.wait()
            if p.crashed:
                return self._cut(request)
            toks = p.take()
            if toks:
                parts = [
                    event(
                        "response.output_text.delta",
                        {"item_id": item, "output_index": 0, "content_index": 0, "delta": word},
                    )
                    for word in self._text(toks)
                ]
                await resp.write(b"".join(parts))
            if p.done and not p.tokens:
                break
        done = self._response_doc(req, model, created)
        text = done["output"][0]["content"][0]["text"]
        await resp.write(
            event("response.output_text.done", {**at, "text": text, "logprobs": []})
            + event("response.content_part.done", {**at, "part": {**part, "text": text}})
            + event("response.output_item.done", {"output_index": 0, "item": done["output"][0]})
            + event("response.completed", {"response": done})
        )
        await resp.write_eof()
        return resp
