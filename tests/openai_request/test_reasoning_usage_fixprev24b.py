"""s24-rev-fix24a F1: a Responses answer's ``output_tokens_details.reasoning_tokens`` is read into
``Usage.reasoning_tokens`` on every path the doors read usage from (a whole JSON body, a stream's
``response.completed`` event, whole or cut at the tail's start), and a kept turn leaves it out: vLLM 0.32's
``construct_input_messages`` carries the earlier output's message text, not its reasoning."""

from __future__ import annotations

import orjson

from kvgate.openai.responses import finished_turn, follow_up
from kvgate.openai.usage import UsageTail, last_usage, usage_from_body
from kvgate.scheduling.types import InferenceRequest

_USAGE = {
    "input_tokens": 40,
    "input_tokens_details": {"cached_tokens": 0},
    "output_tokens": 2040,
    "output_tokens_details": {"reasoning_tokens": 2000},
    "total_tokens": 2080,
}


def test_a_whole_body_and_a_stream_event_read_the_reasoning_tokens() -> None:
    body = orjson.dumps({"id": "resp_1", "object": "response", "output": [], "usage": _USAGE})
    whole = usage_from_body(body)
    assert whole is not None and (whole.completion_tokens, whole.reasoning_tokens) == (2040, 2000)
    event = {"type": "response.completed", "response": {"id": "resp_1", "output": [], "usage": _USAGE}}
    stream = b"event: response.completed\ndata: " + orjson.dumps(event) + b"\n\n"
    ev = last_usage(stream)
    assert ev is not None and (ev.prompt_tokens, ev.reasoning_tokens) == (40, 2000)
    # (an event longer than the tail: read from its ``usage`` key on)
    long_event = {"type": "response.completed", "response": {"output": ["x" * 40_000], "usage": _USAGE}}
    tail = UsageTail()
    tail.feed(b"data: " + orjson.dumps(long_event) + b"\n\n")
    cut = tail.usage()
    assert cut is not None and (cut.prompt_tokens, cut.reasoning_tokens) == (40, 2000)


def test_chat_usage_and_odd_details_read_no_reasoning() -> None:
    chat = usage_from_body(b'{"usage": {"prompt_tokens": 5, "completion_tokens": 7}}')
    assert chat is not None and chat.reasoning_tokens == 0
    for details in ("many", {"reasoning_tokens": -3}, {"reasoning_tokens": "9"}, None):
        odd = usage_from_body(orjson.dumps({"usage": {**_USAGE, "output_tokens_details": details}}))
        assert odd is not None and odd.reasoning_tokens == 0, details
    # (never more than the output itself)
    over = usage_from_body(
        orjson.dumps({"usage": {**_USAGE, "output_tokens_details": {"reasoning_tokens": 9999}}})
    )
    assert over is not None and over.reasoning_tokens == over.completion_tokens == 2040


def test_the_kept_turn_holds_the_answer_without_its_reasoning() -> None:
    req = InferenceRequest(request_id="1", model="m", prompt_text="<|user|>\nQ1?\n", prompt_tokens=4)
    follow_up(req, True, None)
    assert req.conversation is not None
    req.conversation.response_id = "resp_1"
    usage = usage_from_body(orjson.dumps({"usage": _USAGE}))
    turn = finished_turn(req, usage)
    assert turn is not None and turn.tokens == 40 + 40
