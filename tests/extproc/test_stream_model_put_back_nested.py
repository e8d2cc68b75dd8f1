"""A model rewrite put back in the stream events that carry the model nested, through ``kvgate epp`` as
through ``kvgate serve`` (which replaces the ``"model":"<sent>"`` bytes wherever they are): a Responses API
stream's ``response.created`` / ``response.in_progress`` / ``response.completed`` (``response.model``) and an
Anthropic stream's ``message_start`` (``message.model``). Review s19-qa L1:
``kvgate.openai.sse.rewrite_model`` put back only a top-level ``model``, so behind Envoy (and through
``--clusters`` Endpoint mode) the client saw the rewrite's target."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest

from gateway.responses_backend import ResponsesStore
from kvgate.extproc.testing import EnvoyHarness
from kvgate.openai.sse import SSEScanner


@pytest.fixture
async def store() -> AsyncIterator[ResponsesStore]:
    s = await ResponsesStore("a").start()
    yield s
    await s.stop()


def _events(body: bytes) -> list[dict[str, object]]:
    return [orjson.loads(line[6:]) for line in body.split(b"\n") if line.startswith(b"data: {")]


async def test_epp_puts_the_model_back_in_a_responses_stream(start_epp, store: ResponsesStore) -> None:
    epp = await start_epp([store.address], model_rewrite=lambda m: "m2" if m == "alias" else None)
    body = orjson.dumps({"model": "alias", "input": "hi", "stream": True})
    async with aiohttp.ClientSession() as http:
        res = await EnvoyHarness(epp.stub, http).request("POST", "/v1/responses", body)
    assert res.status == 200, res.body
    events = _events(res.body)
    models = [ev["response"]["model"] for ev in events if isinstance(ev.get("response"), dict)]  # type: ignore[index]
    assert models == ["alias", "alias"], res.body  # response.created, response.completed
    assert [ev["type"] for ev in events] == ["response.created", "response.output_text.delta",
                                             "response.completed"]  # fmt: skip


def test_scanner_puts_back_an_anthropic_message_start_and_leaves_other_events() -> None:
    stream = (
        b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","model":"m2",'
        b'"content":[],"usage":{"input_tokens":3,"output_tokens":1}}}\n\n'
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"text_delta","text":"hi"}}\n\n'
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    )
    out = SSEScanner(rewrite_to="alias").feed(stream)
    events = _events(out)
    assert events[0]["message"]["model"] == "alias"  # type: ignore[index]
    # An event without a model goes out as it came (not re-encoded).
    assert out.split(b"\n\n")[1:] == stream.split(b"\n\n")[1:]
