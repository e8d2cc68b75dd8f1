"""kvgate.openai.request on its own: what a body means, and every bad body is a 400 naming its parameter."""

from __future__ import annotations

import orjson
import pytest

from kvgate.openai.request import (
    CHAT,
    COMPLETIONS,
    EMBEDDINGS,
    MAX_NESTING,
    MESSAGES,
    OTHER,
    RESPONSES,
    SCORE,
    BodyError,
    RequestPolicy,
    inference_request,
    kind_for_path,
    parse_body,
)


def _bad(kind: str, body: object) -> BodyError:
    with pytest.raises(BodyError) as info:
        parse_body(kind, orjson.dumps(body) if not isinstance(body, bytes) else body)
    return info.value


@pytest.mark.parametrize(
    "prompt",
    [[-1, 2], [1, 2**31], [[1, 2], [3, -5]], [1, 2**40]],
    ids=["negative", "2**31", "batch-negative", "2**40"],
)
def test_out_of_range_token_ids_name_the_parameter(prompt: list[object]) -> None:
    err = _bad(COMPLETIONS, {"model": "m", "prompt": prompt})
    assert err.param == "prompt" and "token ids" in err.message


@pytest.mark.parametrize("prompt", [[1.5, 2], [True, 1], [1, "a"], [], [[]], [[1], "a"]])
def test_non_token_lists_are_refused(prompt: list[object]) -> None:
    assert _bad(COMPLETIONS, {"model": "m", "prompt": prompt}).param == "prompt"


def test_embeddings_input_token_ids_are_checked_too() -> None:
    assert _bad(EMBEDDINGS, {"model": "m", "input": [3, -1]}).param == "input"


def test_largest_token_id_is_accepted() -> None:
    parsed = parse_body(COMPLETIONS, orjson.dumps({"model": "m", "prompt": [0, 2**31 - 1]}))
    assert parsed.token_ids == [0, 2**31 - 1] and parsed.prompt_tokens == 2


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("key", ["messages", "tools", "stream_options"])
def test_nesting_1000_levels_deep_is_a_400_naming_the_key(key: str) -> None:
    inner = _nested(1000)
    if key == "messages":
        raw = f'{{"model": "m", "messages": [{{"role": "user", "content": {inner}}}]}}'
    else:
        raw = f'{{"model": "m", "messages": [{{"role": "user", "content": "hi"}}], "{key}": {inner}}}'
    err = _bad(CHAT, raw.encode())
    assert err.param == key and str(MAX_NESTING) in err.message


def test_nesting_at_the_limit_is_accepted() -> None:
    # body (1) -> messages (2) -> message (3) -> content ... MAX_NESTING levels in all.
    content = _nested(MAX_NESTING - 3)
    raw = f'{{"model": "m", "messages": [{{"role": "user", "content": {content}}}]}}'.encode()
    assert parse_body(CHAT, raw).prompt_text


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    """On chat, whose vLLM model defines both (``CompletionRequest`` defines only ``max_tokens``: #16,
    tests/openai_request/test_keys_per_api.py)."""
    msgs = '"messages":[{"role":"user","content":"x"}]'
    both = parse_body(CHAT, b'{"model":"m",%s,"max_tokens":5,"max_completion_tokens":9}' % msgs.encode())
    assert both.max_tokens == 9
    assert parse_body(COMPLETIONS, b'{"model":"m","prompt":"x","max_tokens":5}').max_tokens == 5
    # Both are validated, even the one that loses.
    chat = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    err = _bad(CHAT, {**chat, "max_tokens": -1, "max_completion_tokens": 9})
    assert err.param == "max_tokens"


def test_a_responses_body_names_its_limit_max_output_tokens() -> None:
    """s17-qafix-d F4: ``/v1/responses`` (an ``OTHER`` body) says ``max_output_tokens``; it was not read
    (``max_tokens`` None) nor checked. Only for ``OTHER`` bodies: a chat body's is not OpenAI's."""
    body = {"model": "m", "input": "hi", "max_output_tokens": 50}
    assert parse_body(OTHER, orjson.dumps(body)).max_tokens == 50
    assert _bad(OTHER, {**body, "max_output_tokens": -1}).param == "max_output_tokens"
    assert _bad(OTHER, {**body, "max_output_tokens": "5.5"}).param == "max_output_tokens"
    chat = {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_output_tokens": 50}
    assert parse_body(CHAT, orjson.dumps(chat)).max_tokens is None


@pytest.mark.parametrize(
    ("kind", "raw", "want"),
    [
        (CHAT, b'{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":512.0}', 512),
        (CHAT, b'{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":1e2}', 100),
        (CHAT, b'{"model":"m","messages":[{"role":"user","content":"x"}],"max_completion_tokens":64.0}', 64),
        (COMPLETIONS, b'{"model":"m","prompt":"x","max_tokens":0.0}', 0),
        (OTHER, b'{"model":"m","input":"x","max_output_tokens":2E1}', 20),
    ],
    ids=["512.0", "1e2", "max_completion_tokens-64.0", "0.0", "max_output_tokens-2E1"],
)
def test_whole_number_floats_are_token_bounds(kind: str, raw: bytes, want: int) -> None:
    """qa21 F2: vLLM's request models are pydantic in lax mode: ``max_tokens: int | None`` takes ``512.0``
    and ``1e2`` (a client's ``budget * 0.5``). They were a 400 here, served by vLLM."""
    parsed = parse_body(kind, raw)
    assert parsed.max_tokens == want and type(parsed.max_tokens) is int


@pytest.mark.parametrize("value", ["512.5", "-1.0", "1e-1", '"5.5"', '"1e2"', '"-1"', '"x"', "[5]"])
def test_other_non_integers_stay_refused(value: str) -> None:
    """A fractional or negative bound is vLLM's 400 too, as is a string pydantic's lax ``int`` refuses (a
    boolean and a string integer are read as vLLM reads them: qa32a Q1)."""
    raw = b'{"model":"m","prompt":"x","max_tokens":' + value.encode() + b"}"
    assert _bad(COMPLETIONS, raw).param == "max_tokens"


def test_kind_for_path() -> None:
    assert kind_for_path("/v1/chat/completions?x=1") == CHAT
    assert kind_for_path("/v1/completions") == COMPLETIONS
    assert kind_for_path("/v1/embeddings") == EMBEDDINGS
    assert kind_for_path("/v1/responses") == RESPONSES
    assert kind_for_path("/v1/messages/") == MESSAGES
    assert kind_for_path("/v1/rerank") == SCORE  # (#16: its own keys)
    assert kind_for_path("/v1/unknown") == OTHER


def test_unknown_api_needs_only_a_model() -> None:
    parsed = parse_body(OTHER, b'{"model": "m", "input": [{"role": "user"}]}')
    assert (parsed.kind, parsed.prompt_text, parsed.token_ids) == (OTHER, "", None)


def test_inference_request_from_policy() -> None:
    parsed = parse_body(CHAT, b'{"model":"a1","messages":[{"role":"user","content":"hi"}],"user":"u7"}')
    policy = RequestPolicy(frozenset({"a1"}), "x-s", {"gold": 3})
    req = inference_request(parsed, request_id="r", model="a1", policy=policy, objective="gold")
    assert (req.lora_adapter, req.session_key, req.priority, req.fairness_id) == (
        "a1",
        "u7",
        3,
        "default-flow",
    )
    req = inference_request(parsed, request_id="r", model="base", policy=policy, session="s1", fairness="f")
    assert (req.lora_adapter, req.session_key, req.priority, req.fairness_id) == (None, "s1", 0, "f")


@pytest.mark.parametrize("value", [b"1e19", b"1e300", b"-1e300", b"100000000000000000000000"])
@pytest.mark.parametrize(
    ("kind", "shape"),
    [
        ("chat", b'{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":%s}'),
        ("completions", b'{"model":"m","prompt":"x","max_tokens":%s}'),
    ],
)
def test_a_whole_float_past_int64_is_still_a_400(kind: str, shape: bytes, value: bytes) -> None:
    # Review s21-cpu F1: pydantic's lax int (vLLM) takes a whole float only below 2**63; orjson reads an
    # integer past 64 bits as a float. Past it: 400, never a 20-301 digit pending-decode charge.
    with pytest.raises(BodyError) as e:
        parse_body(CHAT if kind == "chat" else COMPLETIONS, shape % value)
    assert e.value.param == "max_tokens"
    assert parse_body(COMPLETIONS, b'{"model":"m","prompt":"x","max_tokens":1e18}').max_tokens == 10**18
