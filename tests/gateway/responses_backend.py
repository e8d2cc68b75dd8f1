"""A model server that keeps its Responses API answers as vLLM does (``VLLM_ENABLE_RESPONSES_API_STORE=1``):
in its own memory, so a follow-up (``previous_response_id``) naming a response another server made is a
404, vLLM's ``Response with id '...' not found.``. Shared by the doors' follow-up tests.

As vLLM's, an answer carries the request's ``instructions`` (a stream's ``response.created`` too: a long
system prompt makes it long); ``split_created``: a stream's ``response.created`` is written in two parts,
50 ms apart, cut this many bytes in (as the network splits one write of vLLM's past one segment)."""

from __future__ import annotations

import asyncio
from typing import Any, Self

import aiohttp
import orjson
from aiohttp import web

from gateway.handler_server import RouteServer, serve_app


async def make_responses(s: aiohttp.ClientSession, base: str, n: int) -> list[str]:
    """``n`` responses made through the door at ``base`` (``POST /v1/responses``, each answered 200): their
    ids."""
    ids = []
    for i in range(n):
        async with s.post(base + "/v1/responses", data=orjson.dumps({"model": "m", "input": f"q{i}"})) as r:
            assert r.status == 200
            ids.append((await r.json())["id"])
    return ids


class ResponsesStore(RouteServer):
    path = "/v1/responses"

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.made: list[str] = []
        self.followed: list[str] = []  # previous_response_id of each follow-up answered here
        self.split_created: int | None = None
        # Answers cut (the connection aborted) after their first part: a JSON body after its first half, a
        # stream after its ``response.created`` and a delta (no ``response.completed``).
        self.cut = False
        self.docs: dict[str, dict[str, Any]] = {}  # id -> the response object (retrieval)
        self.lookups: list[tuple[str, str]] = []  # (method, path with query) of each lookup answered here
        self.lookup_headers: list[dict[str, str]] = []  # and its headers (lower-case names)
        self.tokenized: list[dict[str, Any]] = []  # bodies of /tokenize and /detokenize

    async def start(self) -> Self:
        """Its ``POST /v1/responses`` (``_answer``), and vLLM's retrieval, cancel and tokenize routes."""
        app = web.Application()
        app.router.add_post(self.path, self._answer)
        app.router.add_get("/v1/responses/{rid}", self._retrieve)
        app.router.add_post("/v1/responses/{rid}/cancel", self._cancel)
        app.router.add_post("/tokenize", self._tokenize)
        app.router.add_post("/detokenize", self._tokenize)
        self._runner, self.port = await serve_app(
            app, access_log=None, shutdown_timeout=self.shutdown_timeout
        )
        self.address = f"127.0.0.1:{self.port}"
        return self

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        prev = body.get("previous_response_id")
        if prev is not None:
            if prev not in self.made:
                return self._not_found(prev)
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
        self.docs[rid] = doc
        if not body.get("stream"):
            if self.cut:
                raw = orjson.dumps(doc)
                cut = web.StreamResponse(headers={"Content-Type": "application/json"})
                cut.content_length = len(raw)
                await cut.prepare(request)
                await cut.write(raw[: len(raw) // 2])
                assert request.transport is not None
                request.transport.abort()
                return cut
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
            if self.cut and kind == "response.output_text.delta":
                assert request.transport is not None
                request.transport.abort()
                return resp
        await resp.write_eof()
        return resp

    def _not_found(self, rid: str) -> web.Response:
        error = {
            "message": f"Response with id '{rid}' not found.",
            "type": "invalid_request_error",
            "param": "response_id",
            "code": 404,
        }
        return web.json_response({"error": error}, status=404)

    async def _retrieve(self, request: web.Request) -> web.StreamResponse:
        """vLLM's ``GET /v1/responses/{id}``: the stored object; ``?stream=true``: its events."""
        rid = request.match_info["rid"]
        self.lookups.append(("GET", request.path_qs))
        self.lookup_headers.append({k.lower(): v for k, v in request.headers.items()})
        doc = self.docs.get(rid)
        if doc is None:
            return self._not_found(rid)
        if request.query.get("stream") != "true":
            return web.json_response(doc)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        event = {"type": "response.completed", "response": doc}
        await resp.write(b"event: response.completed\ndata: %s\n\n" % orjson.dumps(event))
        await resp.write_eof()
        return resp

    async def _cancel(self, request: web.Request) -> web.Response:
        rid = request.match_info["rid"]
        self.lookups.append(("POST", request.path_qs))
        doc = self.docs.get(rid)
        if doc is None:
            return self._not_found(rid)
        return web.json_response({**doc, "status": "cancelled"})

    async def _tokenize(self, request: web.Request) -> web.Response:
        """vLLM's ``/tokenize`` and ``/detokenize`` (``model`` optional there)."""
        body = await request.json()
        self.tokenized.append({"path": request.path, **body})
        if request.path == "/detokenize":
            return web.json_response({"prompt": " ".join(str(t) for t in body.get("tokens", []))})
        tokens = list(range(len(str(body.get("prompt", "")).split())))
        return web.json_response(
            {"count": len(tokens), "max_model_len": 2048, "tokens": tokens, "token_strs": None}
        )
