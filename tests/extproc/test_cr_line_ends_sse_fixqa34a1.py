"""qa34a F4: an event stream whose lines end with a lone CR (the SSE spec's third line end, with LF and CRLF)
through ``kvgate epp`` with a model rewrite. ``SSEScanner.feed`` cut at the last LF only: such a stream was
held whole to its end, unread, so the client got the rewrite's target as ``model``, its usage went uncounted
and nothing went out before the end. Each event now goes out as its line ends, its model put back, its usage
read; a CRLF split across two chunks stays one line end. Over real gRPC, as Envoy drives it. ``[cr]`` fails on
875551f0 (no answer to the first event within the exchange's 30 s); ``[lf]``, ``[crlf]`` are the controls."""

from __future__ import annotations

import orjson
import pytest

from kvgate.extproc.testing import Exchange

CHUNK = {"id": "c", "object": "chat.completion.chunk", "model": "m1",
         "choices": [{"index": 0, "delta": {"content": "hi"}}]}  # fmt: skip
USAGE = {"id": "c", "object": "chat.completion.chunk", "model": "m1", "choices": [],
         "usage": {"prompt_tokens": 7, "completion_tokens": 3}}  # fmt: skip
EOLS = {"lf": b"\n", "crlf": b"\r\n", "cr": b"\r"}


@pytest.mark.parametrize("eol", EOLS.values(), ids=EOLS.keys())
async def test_each_event_goes_out_with_the_model_put_back(start_epp, eol: bytes) -> None:
    epp = await start_epp(["127.0.0.1:18001"], model_rewrite=lambda m: "m1" if m == "alias" else None)
    body = orjson.dumps({"model": "alias", "messages": [{"role": "user", "content": "hi"}], "stream": True})
    first = b"data: " + orjson.dumps(CHUNK) + eol + eol
    # The second chunk opens with the first's last byte when a CRLF is split across the two (its LF).
    cut = -1 if eol == b"\r\n" else len(first)
    second = b"data: " + orjson.dumps(USAGE) + eol + eol + b"data: [DONE]" + eol + eol
    async with Exchange(epp.stub) as ex:
        out = await ex.send_request({":method": "POST", ":path": "/v1/chat/completions"}, body)
        assert out.destination
        await ex.send_response_headers(200, {"content-type": "text/event-stream"})
        await ex.send_response_chunk(first[:cut])
        msg = await ex.read()  # the first event, before the stream's end
        sent = msg.response_body.response.body_mutation.streamed_response
        got = sent.body
        assert not sent.end_of_stream and b'"model":"alias"' in got and b"m1" not in got, got
        await ex.send_response_chunk(first[cut:] + second, end_of_stream=True)
        async for chunk, _eos in ex.response_body():
            got += chunk
    assert got == (first + second).replace(b'"model":"m1"', b'"model":"alias"')
    usage = epp.picker.calls.finished[-1][2]
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (7, 3)
