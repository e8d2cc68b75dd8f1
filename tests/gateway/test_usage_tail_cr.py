"""The usage tail (``kvgate.openai.usage``: ``kvgate serve``'s pass-through relay and ``kvgate serve
--clusters``) reads a CR-framed stream's usage event (doors17): SSE lines may end with a lone CR, so
``\\r\\r`` ends an event, as ``EventEdge`` and the transformed relay read it. Before, the tail split events
on ``\\r?\\n\\r?\\n`` only: a CR-framed stream's events were one piece, its JSON did not parse, and the
usage was lost (no tokens counted)."""

from __future__ import annotations

import orjson

from extproc.test_error_counts import request_stats
from gateway.conftest import make_config, running_gateway
from gateway.handler_server import TOKEN, USAGE, serve_handler
from kvgate.gateway.stream import StreamRelay
from kvgate.openai.usage import UsageTail
from kvgate.scheduling.types import Usage

CR_STREAM = b"".join(b"data: " + orjson.dumps(o) + b"\r\r" for o in (TOKEN, USAGE)) + b"data: [DONE]\r\r"


def test_the_tail_reads_a_cr_framed_streams_usage() -> None:
    tail = UsageTail()
    tail.feed(CR_STREAM)
    assert tail.usage() == Usage(7, 2)  # fails before: None
    relay = StreamRelay(None, "m", strip_usage=False)  # the pass-through relay
    assert relay.feed(CR_STREAM) == CR_STREAM
    assert relay.finish() == b"" and relay.usage == Usage(7, 2)


async def test_kvgate_serve_counts_a_cr_framed_streams_tokens() -> None:
    from aiohttp import web

    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(CR_STREAM)
        await resp.write_eof()
        return resp

    import aiohttp

    runner, port = await serve_handler(handler)
    try:
        async with running_gateway(make_config([f"127.0.0.1:{port}"])) as gw:
            body = {"model": "m", "prompt": "x", "stream": True, "stream_options": {"include_usage": True}}
            url = f"http://127.0.0.1:{gw.port}/v1/completions"
            async with aiohttp.ClientSession() as s, s.post(url, data=orjson.dumps(body)) as r:
                assert await r.read() == CR_STREAM
            stats = request_stats(gw.metrics.registry)
            assert stats.get(("inference_objective_input_tokens_sum", "m", "m")) == 7, stats
    finally:
        await runner.cleanup()
