"""qa32a Q7: an SSE event whose JSON spans several ``data:`` lines (the SSE spec joins an event's ``data``
lines with newlines; what ``json.dumps(indent=...)`` written line by line gives; the openai SDK's decoder
reads it) is read by ``event_obj`` as the spec joins it. Before, it decoded from the first ``{`` to the
event's end, ``data:`` prefixes included, and failed: ``kvgate serve`` did not strip the usage chunk it
asked for on the client's behalf, and no usage was read from such a stream.

Fails on main 86751e55: the client gets the ``choices: []`` usage chunk; ``event_obj`` / ``last_usage``
read None."""

from __future__ import annotations

import json

import aiohttp
import orjson
import pytest
from aiohttp import web

from gateway.backend import Backend
from gateway.conftest import make_config, running_gateway
from kvgate.openai.usage import event_obj, last_usage

USAGE = {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}


def _multiline(obj: dict, end: bytes = b"\n") -> bytes:
    lines = json.dumps(obj, indent=1).split("\n")
    return b"".join(f"data: {line}".encode() + end for line in lines) + end


class MultilineBackend(Backend):
    async def _generate(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        self.received.append((request.path, dict(request.headers), body))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        head = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": body["model"]}
        events = [
            {**head, "choices": [{"index": 0, "delta": {"content": f"t{i}"}, "finish_reason": None}]}
            for i in range(3)
        ]
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append({**head, "choices": [], "usage": USAGE})
        for e in events:
            await resp.write(_multiline(e))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


def _events(raw: bytes) -> list[dict]:
    out = []
    for block in raw.decode().split("\n\n"):
        data = "\n".join(line[6:] for line in block.split("\n") if line.startswith("data: "))
        if data and data != "[DONE]":
            out.append(json.loads(data))
    return out


async def test_the_added_usage_chunk_is_stripped_from_a_multiline_stream() -> None:
    b = await MultilineBackend("ml").start()
    try:
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        async with (
            running_gateway(make_config([b.address])) as gw,
            aiohttp.ClientSession() as http,
            http.post(f"http://127.0.0.1:{gw.port}/v1/chat/completions", data=orjson.dumps(body)) as r,
        ):
            status, raw = r.status, await r.read()
        assert status == 200
        events = _events(raw)
        assert [e["choices"][0]["delta"]["content"] for e in events if e["choices"]] == ["t0", "t1", "t2"]
        assert [e for e in events if not e["choices"]] == []  # (the usage chunk the gateway asked for)
    finally:
        await b.stop()


@pytest.mark.parametrize("end", [b"\n", b"\r\n", b"\r"], ids=["lf", "crlf", "cr"])
def test_event_obj_joins_data_lines(end: bytes) -> None:
    obj = {"choices": [], "usage": USAGE, "s": "a\nb"}
    assert event_obj(b"event: x" + end + _multiline(obj, end)) == obj
    # (no space after the colon; a bare ``data`` line is an empty line of the data)
    assert event_obj(b'data:{"a":' + end + b"data" + end + b"data:1}" + end + end) == {"a": 1}


def test_last_usage_reads_a_multiline_event() -> None:
    tail = _multiline({"choices": [], "usage": USAGE}) + b"data: [DONE]\n\n"
    usage = last_usage(tail)
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (3, 3)
