"""rev-final: ``kvgate serve`` observes tokens only from a 2xx's usage, as its JSON path (``_whole``:
``resp.status < 300``), ``kvgate epp`` (f721156) and ``kvgate serve --clusters`` (a 2xx's only) do. An
error status with an event-stream body that carries a usage event counts no tokens (before: its usage
was observed on the token histograms, the only door that did)."""

from __future__ import annotations

import aiohttp
import orjson
from aiohttp import web

from extproc.test_error_counts import request_stats
from gateway.conftest import make_config, running_gateway
from gateway.handler_server import serve_handler

_USAGE = {"id": "x", "object": "text_completion", "model": "m", "choices": [],
          "usage": {"prompt_tokens": 7, "completion_tokens": 3}}  # fmt: skip


async def _error_stream_with_usage(request: web.Request) -> web.StreamResponse:
    await request.read()
    resp = web.StreamResponse(status=503, headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    await resp.write(b'data: {"error": {"message": "overloaded", "type": "ServiceUnavailable"}}\n\n')
    await resp.write(b"data: " + orjson.dumps(_USAGE) + b"\n\ndata: [DONE]\n\n")
    await resp.write_eof()
    return resp


async def test_an_error_streams_usage_is_not_observed() -> None:
    runner, port = await serve_handler(_error_stream_with_usage)
    try:
        async with running_gateway(make_config([f"127.0.0.1:{port}"])) as gw:
            body = {"model": "m", "prompt": "x", "stream": True, "stream_options": {"include_usage": True}}
            async with aiohttp.ClientSession() as s:
                url = f"http://127.0.0.1:{gw.port}/v1/completions"
                async with s.post(url, data=orjson.dumps(body)) as r:
                    assert r.status == 503
                    text = await r.read()
            assert b'"prompt_tokens":7' in text  # relayed as it came
            assert request_stats(gw.metrics.registry) == {
                ("inference_objective_request_total", "m", "m"): 1,
                ("inference_objective_request_duration_seconds_count", "m", "m"): 1,
            }
    finally:
        await runner.cleanup()
