"""rev-prev24 F8: ``kvgate epp`` keeps a Responses turn for its follow-up only when its answer came whole:
a stream Envoy drops after ``response.created`` (the client gone) was kept (``_close`` finishes a 200 as
``ok``), where vLLM stores a streamed response only at its end. Over real gRPC with the Envoy-side test
client."""

from __future__ import annotations

import asyncio

import orjson

from kvgate.extproc.testing import Exchange

from .conftest import StartEpp

PODS = ["10.0.0.1:8000"]
RESPONSES = {":method": "POST", ":path": "/v1/responses", "content-type": "application/json"}
SSE = {"content-type": "text/event-stream"}
CREATED = b'event: response.created\ndata: {"type":"response.created","response":{"id":"%s"}}\n\n'
DONE = (
    b'event: response.completed\ndata: {"type":"response.completed","response":{"id":"%s",'
    b'"usage":{"input_tokens":30,"output_tokens":5,"total_tokens":35}}}\n\n'
)


async def _until(cond, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + 5.0  # (polled: no sleep-and-hope)
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.01)


async def test_a_dropped_stream_is_not_kept_a_whole_one_is(start_epp: StartEpp) -> None:
    epp = await start_epp(PODS, policy="kvgate")
    turns = epp.server.ctx.turns
    body = orjson.dumps({"model": "m", "input": "hello", "stream": True})
    async with Exchange(epp.stub, timeout=10) as ex:
        await ex.send_request(RESPONSES, body)
        await ex.send_response(200, SSE, [CREATED % b"resp_1", DONE % b"resp_1"])
    await _until(lambda: len(epp.picker.calls.finished) == 1, "the whole stream finished")
    assert turns.get("resp_1") is not None
    async with Exchange(epp.stub, timeout=10) as ex:
        await ex.send_request(RESPONSES, body)
        await ex.send_response_headers(200, SSE)
        await ex.send_response_chunk(CREATED % b"resp_2")
        await ex.read()  # (the chunk passed: its id read)
        ex.cancel()  # (the client went away: Envoy drops the stream)
    await _until(lambda: len(epp.picker.calls.finished) == 2, "the dropped stream finished")
    assert turns.get("resp_2") is None and len(turns) == 1
