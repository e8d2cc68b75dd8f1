"""s17-qafix-d F2 (206bd86, s17-qa L7 fix; streamed answers added by fixqafixd17):
/v1/messages and /v1/responses answers carry usage as
``input_tokens`` / ``output_tokens`` (Anthropic Messages and OpenAI Responses shapes, which vLLM
answers), which ``usage_from`` does not read (only ``prompt_tokens`` / ``completion_tokens``): such
requests are charged 0 tokens, so ``rateLimits.tokensPerMinute`` is bypassed by using those paths (and
the token metrics / latency models see 0). Run: cd /work/main && PYTHONPATH=src:tests
.venv/bin/python -m pytest -q -c pyproject.toml
/work/team/reviews/s17-qafix-d-tests/test_qafixd_other_paths_token_limit.py"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest
from aiohttp import web

from extproc.test_error_counts import request_stats
from gateway.conftest import base_url, make_config, running_gateway
from gateway.handler_server import serve_app

USAGE = {
    "/v1/chat/completions": {"prompt_tokens": 500, "completion_tokens": 500, "total_tokens": 1000},
    # vLLM's AnthropicUsage / ResponseUsage
    "/v1/messages": {"input_tokens": 500, "output_tokens": 500},
    "/v1/responses": {"input_tokens": 500, "output_tokens": 500, "total_tokens": 1000},
}


BIG = "word " * 8000  # a Responses stream's response.completed holds the whole answer before usage
# The Anthropic stream as its API sends it: message_start has input_tokens, message_delta only
# output_tokens (vLLM's message_delta has both); the Responses stream nests usage in response.completed.
STREAMS = {
    "/v1/chat/completions": [
        {"type": "x", "choices": [{"delta": {"content": "a"}}]},
        {"type": "x", "choices": [], "usage": USAGE["/v1/chat/completions"]},
    ],
    "/v1/messages": [
        {"type": "message_start", "message": {"id": "m", "usage": {"input_tokens": 500, "output_tokens": 1}}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "a"}},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 500}},
        {"type": "message_stop"},
    ],
    "/v1/responses": [
        {"type": "response.created", "response": {"id": "r", "usage": None}},
        {"type": "response.output_text.delta", "delta": "a"},
        {
            "type": "response.completed",
            "response": {"id": "r", "output": [{"text": BIG}], "usage": USAGE["/v1/responses"]},
        },
    ],
}


@pytest.fixture
async def server() -> AsyncIterator[str]:
    async def answer(request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        if not body.get("stream"):
            return web.json_response({"id": "x", "model": "m", "usage": USAGE[request.path]})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for ev in STREAMS[request.path]:
            await resp.write(b"event: " + ev["type"].encode() + b"\ndata: " + orjson.dumps(ev) + b"\n\n")
        await resp.write_eof()
        return resp

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="")

    app = web.Application()
    for path in USAGE:
        app.router.add_post(path, answer)
    app.router.add_get("/health", ok)
    app.router.add_get("/metrics", ok)
    runner, port = await serve_app(app)
    yield f"127.0.0.1:{port}"
    await runner.cleanup()


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("path", list(USAGE))
async def test_tokens_per_minute_charges_every_routed_path(server, path, stream):
    extra = {"rateLimits": {"tokensPerMinute": 100}}
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "stream": stream}
    if path == "/v1/responses":
        body = {"model": "m", "input": "hi", "stream": stream}
    async with running_gateway(make_config([server], extra=extra)) as gw, aiohttp.ClientSession() as s:
        statuses = []
        for _ in range(3):
            async with s.post(base_url(gw) + path, data=orjson.dumps(body)) as r:
                statuses.append(r.status)
        # 1000 tokens against a 100/min bucket: the second request is refused (as for chat).
        assert statuses == [200, 429, 429], f"{path}: {statuses}"
        # and both counts read (the Anthropic stream's input_tokens from message_start): the metrics
        stats = request_stats(gw.metrics.registry)
        assert stats[("inference_objective_input_tokens_sum", "m", "m")] == 500, stats
        assert stats[("inference_objective_output_tokens_sum", "m", "m")] == 500, stats
