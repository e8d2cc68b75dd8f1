"""#16: a Responses API body (``/v1/responses``: ``instructions`` + ``input``) and Anthropic Messages'
top-level ``system`` are prompt text, so both doors estimate and prefix-score them.

Before, ``/v1/responses`` was an ``OTHER`` body: no prompt text, a zero estimate (no prefix-cache routing,
no load weight for a whole API), and ``/v1/messages``' ``system`` was not read (two agents with different
system prompts looked the same). A Responses body's ``prompt`` (a template object) was even read as a
completions prompt and refused.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvgate.openai.request import (
    CHAT,
    MEDIA_PART_TOKENS,
    BodyError,
    kind_for_path,
    parse_body,
)
from kvgate.scheduling.prefix import CHARS_PER_TOKEN, DEFAULT_BLOCK_TOKENS, block_hashes
from openai_request.test_media_prefix_blocks import _common

# (the kinds by their paths: main's src before #16 has no such constants, and reads both as OTHER)
RESPONSES = kind_for_path("/v1/responses")
MESSAGES = kind_for_path("/v1/messages")
CHUNK = DEFAULT_BLOCK_TOKENS * CHARS_PER_TOKEN
SYSTEM = "You are a careful assistant for the routing team. " * 40  # (~2k characters: 30 blocks)


def _raw(body: dict[str, Any]) -> bytes:
    return orjson.dumps({"model": "m", **body})


def _blocks(text: str) -> list[int]:
    return block_hashes("m", text, CHUNK)


def test_a_responses_body_is_estimated_and_fills_prefix_blocks() -> None:
    parsed = parse_body(RESPONSES, _raw({"instructions": SYSTEM, "input": "What changed in the router?"}))
    assert SYSTEM in parsed.prompt_text and "What changed in the router?" in parsed.prompt_text
    assert parsed.prompt_tokens >= len(SYSTEM) // CHARS_PER_TOKEN
    assert len(_blocks(parsed.prompt_text)) >= len(SYSTEM) // CHUNK
    # Two questions under the same instructions share the instructions' blocks.
    other = parse_body(
        RESPONSES, _raw({"instructions": SYSTEM, "input": [{"role": "user", "content": "Hi"}]})
    )
    assert _common(_blocks(parsed.prompt_text), _blocks(other.prompt_text)) >= len(SYSTEM) // CHUNK


def test_a_responses_body_reads_like_the_same_chat() -> None:
    """``instructions`` + a string ``input`` is the chat vLLM builds from them (a system message, a user
    message): the same prompt text, so the two APIs share a server's cached prefix."""
    resp = parse_body(RESPONSES, _raw({"instructions": SYSTEM, "input": "Hi"}))
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hi"}]
    assert resp.prompt_text == parse_body(CHAT, _raw({"messages": msgs})).prompt_text


def test_items_parts_and_media_are_rendered() -> None:
    image = {
        "type": "input_image",
        "image_url": "data:image/png;base64," + "iVBOR" * 20_000,
        "detail": "auto",
    }
    items = [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "look:"}, image]},
        {"type": "function_call", "call_id": "c1", "name": "lookup", "arguments": '{"q": "x"}'},
        {"type": "function_call_output", "call_id": "c1", "output": "forty-two"},
        {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "thought"}]},
        {"type": "a_type_from_the_future", "payload": {"k": 1}},  # (rendered as JSON, not refused)
    ]
    parsed = parse_body(RESPONSES, _raw({"input": items, "tools": [{"type": "function", "name": "lookup"}]}))
    text = parsed.prompt_text
    assert text.startswith("<|tools|>")
    for piece in ("look:", '"name":"lookup"', "forty-two", "thought", "<|a_type_from_the_future|>", '"k":1'):
        assert piece in text, piece
    assert "iVBOR" not in text  # (the image is a media part: its digest, not its base64)
    assert MEDIA_PART_TOKENS <= parsed.prompt_tokens < MEDIA_PART_TOKENS + 200


def test_a_follow_up_repeating_the_history_shares_the_first_turns_blocks() -> None:
    first = [{"role": "user", "content": [{"type": "input_text", "text": "Summarise the design. " * 30}]}]
    # The answer as the server returned it (an output item: id, status, annotations) ...
    answer = {
        "type": "message",
        "id": "msg_1",
        "status": "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": "The design routes by prefix. " * 10, "annotations": []}],
    }
    follow = [*first, answer, {"role": "user", "content": "And the scheduler?"}]
    one = parse_body(RESPONSES, _raw({"instructions": SYSTEM, "input": first})).prompt_text
    two = parse_body(RESPONSES, _raw({"instructions": SYSTEM, "input": follow})).prompt_text
    assert len(_blocks(one)) >= len(SYSTEM) // CHUNK  # (turn one is prefix text at all)
    assert two.startswith(one)
    assert _common(_blocks(one), _blocks(two)) == len(one) // CHUNK  # (every full block of turn one)
    # ... or sent back as an easy message: the same text (the model never sees id / status / type).
    easy = {"role": "assistant", "content": answer["content"]}
    three = parse_body(RESPONSES, _raw({"instructions": SYSTEM, "input": [*first, easy, follow[-1]]}))
    assert three.prompt_text == two


def test_anthropic_system_is_read() -> None:
    msgs = [{"role": "user", "content": "Hi"}]
    as_str = parse_body(MESSAGES, _raw({"system": SYSTEM, "messages": msgs, "max_tokens": 8}))
    blocks = [{"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}}]
    as_blocks = parse_body(MESSAGES, _raw({"system": blocks, "messages": msgs, "max_tokens": 8}))
    assert SYSTEM in as_str.prompt_text and as_str.prompt_text == as_blocks.prompt_text
    assert as_str.prompt_tokens >= len(SYSTEM) // CHARS_PER_TOKEN
    other = parse_body(MESSAGES, _raw({"system": "Another agent.", "messages": msgs, "max_tokens": 8}))
    assert _blocks(other.prompt_text)[:1] != _blocks(as_str.prompt_text)[:1]
    # Tools first, then the system prompt, then the turns (as ``render_chat`` puts them).
    tools = [{"name": "get", "description": "d", "input_schema": {"type": "object"}}]
    text = parse_body(MESSAGES, _raw({"system": "S", "tools": tools, "messages": msgs})).prompt_text
    assert text.index("<|tools|>") < text.index("<|system|>\nS") < text.index("<|user|>\nHi")


def test_a_responses_prompt_template_is_not_a_completions_prompt() -> None:
    # (was ``'prompt' must be a string ...``: the body read as a completions one)
    parsed = parse_body(RESPONSES, _raw({"input": "x", "prompt": {"id": "pmpt_1", "variables": {}}}))
    assert "x" in parsed.prompt_text


@pytest.mark.parametrize(
    ("kind", "body", "param"),
    [
        # Each refused by vLLM's ResponsesRequest / AnthropicMessagesRequest too (checked with its pydantic).
        (RESPONSES, {"input": None}, "input"),
        (RESPONSES, {"input": 3}, "input"),
        (RESPONSES, {"input": {"role": "user"}}, "input"),
        (RESPONSES, {"input": ["hi"]}, "input"),
        (RESPONSES, {"input": "x", "instructions": 3}, "instructions"),
        (MESSAGES, {"messages": [{"role": "user", "content": "x"}], "system": 3}, "system"),
        (MESSAGES, {"messages": [{"role": "user", "content": "x"}], "system": ["x"]}, "system"),
    ],
)
def test_malformed_bodies_name_the_key(kind: str, body: dict[str, Any], param: str) -> None:
    with pytest.raises(BodyError) as err:
        parse_body(kind, _raw(body))
    assert err.value.param == param


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
_PART = st.fixed_dictionaries(
    {"type": st.sampled_from(["input_text", "output_text", "input_image", "input_file", "refusal", "x"])},
    optional={"text": _JSON, "image_url": _JSON, "content": _JSON, "refusal": _JSON},
)
_ITEM = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["message", "function_call", "function_call_output", "reasoning", "zz"])
        | _JSON,
        "role": st.sampled_from(["user", "assistant", "system", "developer"]) | _JSON,
        "content": st.text() | st.lists(_PART | _JSON, max_size=4) | _JSON,
        "output": st.text() | st.lists(_PART, max_size=3) | _JSON,
        "summary": st.lists(_PART, max_size=2) | _JSON,
        "id": _JSON,
    },
)
_INPUT = st.text() | st.lists(_ITEM | _JSON, max_size=6) | _JSON


def _bad_type(value: Any) -> bool:
    """A part somewhere in ``value`` whose ``type`` is a list or an object (no model's part type is)."""
    if isinstance(value, dict):
        return isinstance(value.get("type"), list | dict) or any(_bad_type(v) for v in value.values())
    return isinstance(value, list) and any(_bad_type(v) for v in value)


def _refused_keys(kind: str, body: dict[str, Any]) -> set[str]:
    """The keys a 400 may name for ``body``: those whose shape vLLM's ``ResponsesRequest`` /
    ``AnthropicMessagesRequest`` refuses (checked with their pydantic in the vLLM CPU venv)."""
    keys = set()
    if kind == RESPONSES:
        items = [] if body["input"] == {} else body["input"]
        if not isinstance(items, str | list) or (
            isinstance(items, list) and not all(isinstance(i, dict) for i in items)
        ):
            keys.add("input")
        if _bad_type(items):
            keys.add("input")
        if body["instructions"] is not None and not isinstance(body["instructions"], str):
            keys.add("instructions")
    else:
        system = body["system"]
        if not (
            system is None
            or isinstance(system, str)
            or (isinstance(system, list) and all(isinstance(b, dict) for b in system))
        ) or _bad_type(system):
            keys.add("system")
        if _bad_type(body["messages"]):
            keys.add("messages")
    return keys


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items=_INPUT, instructions=st.none() | st.text() | _JSON, system=_JSON | st.lists(_PART, max_size=3))
def test_any_input_shape_is_read_or_refused_as_a_body_error(
    items: Any, instructions: Any, system: Any
) -> None:
    for kind, body in (
        (RESPONSES, {"input": items, "instructions": instructions}),
        (MESSAGES, {"messages": [{"role": "user", "content": items}], "system": system}),
    ):
        try:
            parsed = parse_body(kind, _raw(body))
        except BodyError as e:
            # Only a shape vLLM's own model refuses (review s22-resp F3: any BodyError passed before).
            assert e.param in _refused_keys(kind, body), (e.param, e.message)
            continue
        assert parsed.prompt_tokens == len(parsed.prompt_text) // CHARS_PER_TOKEN
        if kind == RESPONSES and items:  # (a message or item is at least its tag)
            assert parsed.prompt_text, body


def test_a_body_without_its_prompt_key_is_passed_on_unread() -> None:
    """No ``input`` (no ``messages``): no prompt, as before; the server's own 400 answers it."""
    for kind in (RESPONSES, MESSAGES):
        parsed = parse_body(kind, _raw({"query": "q", "documents": ["a"]}))
        assert (parsed.prompt_text, parsed.prompt_tokens) == ("", 0)
