"""A model server that keeps its Responses API answers as vLLM does (``VLLM_ENABLE_RESPONSES_API_STORE=1``):
in its own memory, so a follow-up (``previous_response_id``) naming a response another server made is a
404, vLLM's ``Response with id '...' not found.``. Shared by the doors' follow-up tests.

As vLLM's, an answer carries the request's ``instructions`` (a stream's ``response.created`` too: a long
system prompt makes it long); ``split_created``: a stream's ``response.created`` is written in two parts,
50 ms apart, cut this many bytes in (as the network splits one write of vLLM's past one segment)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web

from gateway.handler_server import RouteServer


class ResponsesStore(RouteServer):
    path = "/v1/responses"

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.made: list[str] = []
        self.followed: list[str] = []  # previous_response_id of each follow-up answered here
        self.split_created: int | None = None

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        prev = body.get("previous_response_id")
        if prev is not None:
            if prev not in self.made:
                error = {
                    "message": f"Response with id '{prev}' not found.",
                    "type": "invalid_request_error",
                    "param": "response_id",
                    "code": 404,
                }
                return web.json_response({"error": error}, status=404)
            self.followed.append(prev)
        rid = f"resp_{self.name}_{len(self.made)}"
        self.made.append(rid)
        doc: dict[str, Any] = {
            "id": rid,
            "object": "response",
            "model": body.get("model"),
            "status": "completed",
            "instructions": body.get("instructions"),
            "output": [{"id": f"msg_{rid}", "type": "message"}],
            "usage": {"input_tokens": 3, "output_tokens": 1, "total_tokens": 4},
        }
        if not body.get("stream"):
            return web.json_response(doc)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for kind, event in (
            ("response.created", {"response": {**doc, "output": [], "usage": None}}),
            ("response.output_text.delta", {"item_id": f"msg_{rid}", "delta": "hi"}),
            ("response.completed", {"response": doc}),
        ):
            data = b"event: %s\ndata: %s\n\n" % (kind.encode(), orjson.dumps({"type": kind, **event}))
            if kind == "response.created" and self.split_created is not None:
                await resp.write(data[: self.split_created])
                await asyncio.sleep(0.05)
                data = data[self.split_created :]
            await resp.write(data)
        await resp.write_eof()
        return resp
