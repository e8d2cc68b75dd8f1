"""``kvgate epp``: a Responses follow-up (``previous_response_id``) is estimated as the conversation the
server prefills (the earlier turn's usage + its new input), not its new input alone (#16, prev24). Over
real gRPC with the Envoy-side test client."""

from __future__ import annotations

import orjson
import pytest

from kvgate.extproc.testing import Exchange
from kvgate.openai.request import RESPONSES as RESPONSES_KIND
from kvgate.openai.request import parse_body

from .conftest import StartEpp

PODS = ["10.0.0.1:8000", "10.0.0.2:8000"]
RESPONSES = {":method": "POST", ":path": "/v1/responses", "content-type": "application/json"}
JSON = {"content-type": "application/json"}
SSE = {"content-type": "text/event-stream"}
LONG = "You are a careful assistant. " * 40


def _answer(rid: str, stream: bool) -> tuple[dict[str, str], list[bytes]]:
    usage = b'{"input_tokens": 300, "output_tokens": 50, "total_tokens": 350}'
    if not stream:
        return JSON, [b'{"id": "%s", "object": "response", "usage": %s}' % (rid.encode(), usage)]
    created = b'{"type":"response.created","response":{"id":"%s"}}' % rid.encode()
    delta = b'{"type":"response.output_text.delta","delta":"hi"}'
    done = b'{"type":"response.completed","response":{"id":"%s","usage":%s}}' % (rid.encode(), usage)
    return SSE, [
        b"event: response.created\ndata: " + created + b"\n\n",
        b"event: response.output_text.delta\ndata: " + delta + b"\n\n",
        b"event: response.completed\ndata: " + done + b"\n\n",
    ]


@pytest.mark.parametrize("stream", [False, True])
async def test_a_follow_up_is_estimated_as_the_whole_conversation(start_epp: StartEpp, stream: bool) -> None:
    epp = await start_epp(PODS, policy="kvgate")
    async with Exchange(epp.stub, timeout=10) as ex:
        await ex.send_request(RESPONSES, orjson.dumps({"model": "m", "input": LONG, "stream": stream}))
        await ex.send_response(200, *_answer("resp_1", stream))
    first = epp.picker.calls.requests[-1]
    body = orjson.dumps({"model": "m", "input": "and then?", "previous_response_id": "resp_1"})
    async with Exchange(epp.stub, timeout=10) as ex:
        await ex.send_request(RESPONSES, body)
        await ex.send_response(200, *_answer("resp_2", False))
    second = epp.picker.calls.requests[-1]
    own = parse_body(RESPONSES_KIND, body).prompt_tokens
    assert second.prompt_tokens == own + 350  # (the first turn's usage: 300 in, 50 out)
    chain = list(first.conversation.chain)
    assert len(chain) >= 15 and list(second.conversation.chain)[: len(chain)] == chain
